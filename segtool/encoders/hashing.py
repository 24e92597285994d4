"""A weight-free encoder: hashed word and character n-grams, in NumPy.

No fitting and no downloads: the same text gives the same vector on every
machine (a fixed 64-bit hash, no salted Python hash). Good for tests, CI, and
as a baseline next to a transformer.

Features (each part L2-normalised, then summed, then L2-normalised again when
`normalize: true`):
    words  lower-cased runs of word bytes (ASCII letters, digits, `_`, and any
           non-ASCII character), unigrams and bigrams
    chars  3- to 5-grams of the UTF-8 bytes of each lower-cased word, padded
           with a space on both sides (scikit-learn's `char_wb`, on bytes)
Each feature lands in one of `dim` buckets with a sign, both from its hash.

Scheme v1 used scikit-learn's HashingVectorizer, whose pure-Python char_wb
analyzer took ~85% of the time (~3,000 texts/s); v2 computes the same kinds
of features with array operations over a whole batch (see
benchmarks/README.md). The scheme is part of the fingerprint, so v1 vectors
are never mixed with v2 ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from segtool.encoders._common import CpuFloat32, check_texts, l2_rows
from segtool.encoders._fingerprint import fingerprint as _fingerprint
from segtool.project.specs import EncoderSpec

if TYPE_CHECKING:
    import numpy as np

# Bump when the featurisation (_hashing_features.py) changes: it is part of the fingerprint.
SCHEME = "words1-2+bytes_wb3-5/l2-each/sum/v2"
_BLOCK = 4096
DEFAULT_DIM = 512


class HashingEncoder(CpuFloat32):
    imports = ("segtool.encoders._hashing_features",)  # what encode() imports (NumPy)

    def __init__(self, spec: EncoderSpec):
        self.spec = spec

    @property
    def dim(self) -> int:
        return int(self.spec.dim or DEFAULT_DIM)

    def fingerprint(self) -> str:
        return _fingerprint(
            {
                "kind": "hashing",
                "scheme": SCHEME,
                "dim": self.dim,
                "normalize": bool(self.spec.normalize),
                "dtype": "float32",
            }
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        from segtool.encoders._hashing_features import features

        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), _BLOCK):
            block = texts[start : start + _BLOCK]
            x = features(block, self.dim)
            if self.spec.normalize:
                x = l2_rows(x)
            out[start : start + len(block)] = x
        return out
