"""The hashing encoder's features (segtool/encoders/hashing.py), in NumPy.

Its own module so that hashing.py (the encoder's dims and fingerprint, which
every run reads) does not import NumPy: a run with nothing to embed never
encodes.
"""

from __future__ import annotations

import numpy as np

from segtool.encoders._common import l2_rows

_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: spreads low bits up
_BASE = np.uint64(0x100000001B3)  # FNV-1a prime, as a polynomial base
_INV = np.uint64(pow(0x100000001B3, -1, 2**64))  # its inverse mod 2**64 (it is odd)
# word bytes: ASCII letters, digits, underscore, and every byte of a non-ASCII
# UTF-8 character (so "münchen" is one word; a non-ASCII punctuation mark is a word too)
_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[0x80:] = True


def _mix(h: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64): every input bit reaches every output bit."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def _accumulate(rows: np.ndarray, hashes: np.ndarray, n_rows: int, dim: int) -> np.ndarray:
    """Signed bucket counts: a feature's bucket is its hash's top 32 bits scaled
    to [0, dim) (multiply-shift: no division), its sign bit 31."""
    bucket = (((hashes >> np.uint64(32)) * np.uint64(dim)) >> np.uint64(32)).astype(np.int64)
    sign = ((hashes >> np.uint64(31)) & np.uint64(1)).astype(np.float64) * 2.0 - 1.0
    flat = np.bincount(rows * dim + bucket, weights=sign, minlength=n_rows * dim)
    return flat.reshape(n_rows, dim)


def _segment_hashes(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A polynomial hash of each byte run buf[start:end], all runs at once:
    h = sum(b[j] * BASE**(end-1-j)) (mod 2**64). With C = cumsum(b * INV**j),
    where INV is BASE's inverse mod 2**64 (BASE is odd), a run's hash is
    BASE**(end-1) * (C[end-1] - C[start-1]): prefix sums, no loop."""
    n = len(buf)
    with np.errstate(over="ignore"):
        inv_pow = np.cumprod(np.full(n, _INV, dtype=np.uint64))
        inv_pow = np.concatenate([[np.uint64(1)], inv_pow[:-1]])
        base_pow = np.cumprod(np.full(n, _BASE, dtype=np.uint64))
        base_pow = np.concatenate([[np.uint64(1)], base_pow[:-1]])
        c = np.cumsum(buf * inv_pow, dtype=np.uint64)
        before = np.where(start > 0, c[np.maximum(start - 1, 0)], np.uint64(0))
        return base_pow[end - 1] * (c[end - 1] - before) + (end - start).astype(np.uint64)


def features(texts: list[str], dim: int) -> np.ndarray:
    """Every step is an array operation over the whole batch: the texts are
    joined into one byte buffer, words are runs of word bytes in it, and a
    word's hash comes from prefix sums (see _segment_hashes)."""
    n = len(texts)
    # lengths of the lower-cased bytes: lower-casing can change a text's
    # UTF-8 length ("İ" is 2 bytes, its lower case 3)
    parts = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
    joined = b"\n".join(parts)
    buf = np.frombuffer(joined, dtype=np.uint8)
    if buf.size == 0:
        return np.zeros((n, dim))
    # which text each byte belongs to (texts are separated by one b"\n")
    text_len = np.fromiter(map(len, parts), dtype=np.int64, count=n)
    text_start = np.concatenate([[0], np.cumsum(text_len + 1)[:-1]])
    # words: runs of word bytes
    word = _WORD_BYTE[buf]
    edge = np.diff(np.concatenate([[False], word, [False]]).astype(np.int8))
    w_start = np.flatnonzero(edge == 1)
    w_end = np.flatnonzero(edge == -1)  # exclusive
    w_len = w_end - w_start
    w_row = np.searchsorted(text_start, w_start, side="right") - 1
    total = len(w_start)
    # ---- word unigrams and bigrams
    uni = _segment_hashes(buf.astype(np.uint64), w_start, w_end)
    same_text = np.zeros(total, dtype=bool)
    same_text[1:] = w_row[1:] == w_row[:-1]  # a bigram never spans two texts
    with np.errstate(over="ignore"):
        bi = _mix(uni[:-1] * _BASE + uni[1:] + np.uint64(1))[same_text[1:]]
    word_part = _accumulate(
        np.concatenate([w_row, w_row[1:][same_text[1:]]]),
        np.concatenate([_mix(uni), bi]),
        n,
        dim,
    )
    # ---- byte 3..5-grams of " word ", all words of the batch in one padded buffer
    padded_len = w_len + 2
    padded_start = np.concatenate([[0], np.cumsum(padded_len)[:-1]])
    padded = np.full(int(padded_len.sum()), 32, dtype=np.uint64)  # spaces
    inner = np.arange(int(w_len.sum())) - np.repeat(np.cumsum(w_len) - w_len, w_len)
    padded[np.repeat(padded_start + 1, w_len) + inner] = buf[np.repeat(w_start, w_len) + inner]
    owner = np.repeat(np.arange(total, dtype=np.int64), padded_len)
    char_rows: list[np.ndarray] = []
    char_hashes: list[np.ndarray] = []
    for size in (3, 4, 5):
        m = len(padded) - size + 1
        if m <= 0:
            continue
        with np.errstate(over="ignore"):
            h = np.full(m, np.uint64(size), dtype=np.uint64)
            for j in range(size):
                h = h * _BASE + padded[j : j + m]
        inside = owner[:m] == owner[size - 1 :]  # the gram stays within one word
        char_rows.append(w_row[owner[:m][inside]])
        with np.errstate(over="ignore"):  # one multiply spreads a gram's bits upwards
            char_hashes.append((h[inside] ^ np.uint64(0xC4A)) * _MIX)
    char_part = (
        _accumulate(np.concatenate(char_rows), np.concatenate(char_hashes), n, dim)
        if char_rows
        else np.zeros((n, dim))
    )
    return l2_rows(word_part) + l2_rows(char_part)
