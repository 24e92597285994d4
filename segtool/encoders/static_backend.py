"""`kind: static`: static embeddings (model2vec), one vector per token, mean-pooled.

A static model keeps most of a sentence transformer's semantics at the speed
of a table lookup (thousands of texts per second on one CPU core, no torch at
encode time). `model:` names either

* a model2vec model (a folder, or a hub id in the local HF cache), used as is; or
* a transformer (a folder, a hub id in the cache, or one a pip package ships):
  it is distilled once per machine with model2vec, into the segtool cache
  (`$SEGTOOL_CACHE`, default `~/.cache/segtool`) under a key made of the
  source model's content hash and the distillation settings, and every
  project on the machine reuses it.

A distillation runs into a temporary folder that is renamed into place when
it is complete and verified, under a file lock, so a killed distillation
leaves no half-written model and two runs never distil the same model twice
at once. A cached model whose files do not match its manifest is distilled
again. The fingerprint covers the distilled weights themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from segtool.encoders._cache import cache_root
from segtool.encoders._common import CpuFloat32, check_texts, l2_rows
from segtool.encoders._fingerprint import file_sha256, model_content_hash
from segtool.encoders._fingerprint import fingerprint as _fingerprint
from segtool.encoders._resolve import Resolved, read_json
from segtool.errors import EncoderError

if TYPE_CHECKING:
    import numpy as np

MANIFEST = "segtool-static.json"
STATIC_FILES = ("model.safetensors", "tokenizer.json", "config.json")
SIF_COEFFICIENT = 1e-4
DEFAULT_DIM = 256


def is_model2vec(folder: Path) -> bool:
    return read_json(folder / "config.json").get("model_type") == "model2vec"


def _model2vec_version() -> str:
    try:
        from importlib.metadata import version

        return version("model2vec")
    except Exception:  # noqa: BLE001 - not installed: check_encoder says so
        return "missing"


def distill_key(source: Path, dim: int, *, legacy: bool = False) -> str:
    """What decides a distilled model: the source weights and the settings.
    The model2vec release is part of it (its distillation changes between
    releases); its major.minor only, so a patch release reuses the cache.
    `legacy`: the key before tokenizer.json counted (_fingerprint.py)."""
    release = ".".join(_model2vec_version().split(".")[:2])
    return _fingerprint(
        {
            "source": model_content_hash(source, sentence_transformers=True, legacy=legacy),
            "pca_dims": int(dim),
            "sif": SIF_COEFFICIENT,
            "model2vec": release,
        }
    )[:24]


# the first state version whose static fingerprints leave the source path out
PATH_FREE_CONFIG = 7


def _config_sha256(path: Path) -> str:
    """config.json's content without `tokenizer_name` (where model2vec puts
    the path or hub id it distilled from), keys in order."""
    import hashlib

    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return file_sha256(path)
    if not isinstance(cfg, dict):
        return file_sha256(path)
    cfg.pop("tokenizer_name", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def _manifest_files(folder: Path) -> dict[str, str] | None:
    """file name -> sha256 as the manifest of a distilled model records
    them, or None without a readable manifest."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def _manifest_ok(folder: Path) -> bool:
    """The folder holds a complete distilled model: every file its manifest
    lists, with the recorded content hash (as remembered by size and mtime)."""
    files = _manifest_files(folder)
    try:
        return files is not None and all(
            file_sha256(folder / name) == digest for name, digest in files.items()
        )
    except OSError:
        return False


class StaticEncoder(CpuFloat32):
    backend = "static"
    # what encode() imports (a two-CPU render imports them meanwhile: execute/render.py)
    imports = ("numpy", "scipy.sparse", "safetensors.numpy", "tokenizers")

    def __init__(self, spec, resolved: Resolved):
        self.spec = spec
        self.source = resolved.path
        self.dim_setting = int(spec.dim or DEFAULT_DIM)
        self.distilled = not is_model2vec(self.source)
        if self.distilled:
            self.path = cache_root() / "static" / distill_key(self.source, self.dim_setting)
            self._adopt_legacy_distillation()
        else:
            self.path = self.source
        self._model = None
        self._fingerprint: str | None = None
        self._table: np.ndarray | None = None  # float32 token vectors (_pool)
        self._tokenize: TokenIds | None = None

    def _adopt_legacy_distillation(self) -> None:
        """A model distilled under the key before tokenizer.json counted is
        moved to its key now, not distilled again (minutes for MiniLM). Moved,
        not shared: a later edit of tokenizer.json changes the key again and
        must not find the old distillation."""
        if _manifest_ok(self.path):
            return
        legacy = self.path.parent / distill_key(self.source, self.dim_setting, legacy=True)
        if legacy == self.path or not _manifest_ok(legacy):
            return
        try:
            os.rename(legacy, self.path)
        except OSError:  # another process moved it first, or the key is taken
            pass

    # ------------------------------------------------------------------ properties
    @property
    def ready(self) -> bool:
        """The model is there to load (a distilled one complete and verified)."""
        if not self.distilled:
            return True
        return _manifest_ok(self.path)

    @property
    def dim(self) -> int:
        cfg = read_json(self.path / "config.json") if self.ready else {}
        return int(cfg.get("hidden_dim") or self.dim_setting)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if not self.ready:
                raise EncoderError(
                    f"encoder '{self.spec.name}': not distilled yet (the next run distils it "
                    f"from {self.source} once, in {self.path.parent})",
                    hint="segtool run distils it first; it takes minutes on a CPU, once per machine",
                )
            self._fingerprint = _fingerprint(self._fingerprint_payload())
        return self._fingerprint

    def _fingerprint_payload(self, legacy: bool = False) -> dict:
        """The distilled files and segtool's settings. config.json counts
        without `tokenizer_name`: model2vec writes the source's absolute path
        there, so byte-identical models at two paths (two Hugging Face caches,
        Ray nodes, a moved folder) had two fingerprints and were embedded
        again or refused on Ray. `legacy`: as state versions before 7 hashed
        it (the whole file; state/rekey.py moves what a database holds)."""
        files = {}
        for n in STATIC_FILES:
            if (self.path / n).is_file():
                path_free = n == "config.json" and not legacy
                files[n] = (
                    _config_sha256(self.path / n) if path_free else file_sha256(self.path / n)
                )
        return {
            "kind": "static",
            "weights": files,
            "normalize": bool(self.spec.normalize),
            "max_length": int(self.spec.max_length),
            "pooling": "sparse-mean/v1",  # segtool's pooling (see _pool)
        }

    def legacy_fingerprint(self, version: int) -> str:
        """The fingerprint as a database of state `version` keyed this
        encoder's vectors and fits (state/rekey.py)."""
        if version >= PATH_FREE_CONFIG:
            return self.fingerprint()
        self.fingerprint()  # the same checks (distilled, verified)
        return _fingerprint(self._fingerprint_payload(legacy=True))

    # ------------------------------------------------------------------ distillation
    def prepare(self, say=None) -> None:
        """Distil the source model into the cache unless it is there already."""
        if self.ready:
            return
        try:
            self._distil_once(say)
        except OSError as exc:  # a cache folder this user cannot write (or a file in its way)
            raise EncoderError(
                f"encoder '{self.spec.name}': cannot write its distilled model under "
                f"{self.path.parent}: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else ""),
                hint="set SEGTOOL_CACHE to a folder this user can write (segtool keeps the "
                "models it distils there, once per machine), or copy a distilled model there",
            ) from None

    def _distil_once(self, say) -> None:
        """prepare()'s work, under a file lock: one process distils, the others wait."""
        import filelock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(self.path) + ".lock"):
            if self.ready:  # another process finished it while we waited
                return
            if self.path.exists():  # an incomplete or corrupt copy: start again
                shutil.rmtree(self.path, ignore_errors=True)
            if say:
                say(
                    f"distilling static encoder '{self.spec.name}' from {self.source} "
                    f"(dim {self.dim_setting}; once per machine, into {self.path})"
                )
            tmp = self.path.parent / f".tmp-{self.path.name}-{uuid.uuid4().hex[:8]}"
            t0 = time.monotonic()
            # model2vec draws a tqdm bar: on a terminal it shows the distillation
            # moving; in a CI log its carriage returns are noise, so it is off there
            quiet = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
            old = os.environ.get("TQDM_DISABLE")
            if quiet:
                os.environ["TQDM_DISABLE"] = "1"
            try:
                self._distill_into(tmp)
                os.replace(tmp, self.path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                if quiet:
                    if old is None:
                        os.environ.pop("TQDM_DISABLE", None)
                    else:
                        os.environ["TQDM_DISABLE"] = old
            if say:
                say(f"distilled '{self.spec.name}' in {time.monotonic() - t0:.0f}s")
            self._fingerprint = None

    def _distill_into(self, folder: Path) -> None:
        try:
            from model2vec.distill import distill_from_model
        except ImportError as exc:
            raise EncoderError(
                f"encoder '{self.spec.name}' (kind static) needs model2vec with distillation: {exc}",
                hint="pip install 'model2vec[distill]'",
            ) from None
        from segtool.encoders._common import quiet_transformers

        try:
            with quiet_transformers():
                import torch
                from transformers import AutoModel, AutoTokenizer

                from segtool.encoders.transformers_backend import _DTYPE_KW

                remote = bool(self.spec.trust_remote_code)
                # float32, whatever dtype the source's config.json names:
                # model2vec's distill() loads in that dtype, which the distill
                # key leaves out (a dtype is a loading setting to the others)
                source = AutoModel.from_pretrained(
                    str(self.source), trust_remote_code=remote, **{_DTYPE_KW: torch.float32}
                )
                tokenizer = AutoTokenizer.from_pretrained(
                    str(self.source), trust_remote_code=remote, use_fast=True
                )
                model = distill_from_model(
                    model=source,
                    tokenizer=tokenizer,
                    pca_dims=self.dim_setting,
                    sif_coefficient=SIF_COEFFICIENT,
                )
        except Exception as exc:  # noqa: BLE001 - any failure of the source model
            raise EncoderError(
                f"encoder '{self.spec.name}': cannot distil {self.source}: {type(exc).__name__}: {exc}",
                hint="kind static distils a transformer (a sentence-transformers or BERT-like model) or loads a model2vec model",
            ) from None
        model.save_pretrained(str(folder))
        files = {n: file_sha256(folder / n) for n in STATIC_FILES if (folder / n).is_file()}
        (folder / MANIFEST).write_text(
            json.dumps(
                {
                    "source": str(self.source),
                    "pca_dims": self.dim_setting,
                    "model2vec": _model2vec_version(),
                    "files": files,
                },
                indent=2,
            )
        )

    def _weights_match(self, weights: bytes) -> bool:
        """The distilled weights' bytes hash to what the manifest recorded."""
        import hashlib

        recorded = (_manifest_files(self.path) or {}).get("model.safetensors")
        return recorded == hashlib.sha256(weights).hexdigest()

    # ------------------------------------------------------------------ encoding
    def _load(self):
        """The token table and tokenizer. A plain static model (the usual kind)
        is read directly: tokenizer.json and the safetensors table, without
        importing model2vec (~1 s); a vocabulary-quantised one through model2vec."""
        if self._model is None:
            if not self.ready:
                self.prepare()
            weights = (self.path / "model.safetensors").read_bytes()
            if self.distilled and not self._weights_match(weights):
                # `ready` trusts hashes remembered by (size, mtime): a disk
                # error that kept both was used as is. Read anyway to load,
                # the bytes are checked here: a mismatch is distilled again
                shutil.rmtree(self.path, ignore_errors=True)
                self.prepare()
                weights = (self.path / "model.safetensors").read_bytes()
            cfg = read_json(self.path / "config.json")
            try:
                from safetensors.numpy import load as load_bytes
                from tokenizers import Tokenizer

                tables = load_bytes(weights)
                if set(tables) == {"embeddings"} and not cfg.get("vocabulary_quantization"):
                    tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
                    tokenizer.no_padding()
                    self._model = _PlainStatic(tables["embeddings"], tokenizer)
                    return self._model
            except Exception as exc:  # noqa: BLE001
                raise EncoderError(
                    f"encoder '{self.spec.name}': cannot load the static model in {self.path}: {exc}",
                    hint="delete that folder; the next run distils it again",
                ) from None
            try:
                from model2vec import StaticModel
            except ImportError:
                raise EncoderError(
                    f"encoder '{self.spec.name}' (kind static) needs model2vec",
                    hint="pip install model2vec",
                ) from None
            try:
                self._model = StaticModel.from_pretrained(
                    str(self.path), normalize=bool(self.spec.normalize), force_download=False
                )
            except Exception as exc:  # noqa: BLE001
                raise EncoderError(
                    f"encoder '{self.spec.name}': cannot load the static model in {self.path}: {exc}",
                    hint="delete that folder; the next run distils it again",
                ) from None
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        texts = check_texts(texts)
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if model.token_mapping is not None or model.weights is not None:
            # vocabulary-quantised models: model2vec's own pooling
            vecs = model.encode(
                texts,
                max_length=int(self.spec.max_length),
                batch_size=max(1024, int(self.spec.batch_size)),
                use_multiprocessing=False,  # segtool owns the process (DuckDB threads)
            )
            return np.ascontiguousarray(vecs, dtype=np.float32)
        return self._pool(model, texts)

    def _pool(self, model, texts: list[str]) -> np.ndarray:
        """Mean of the token vectors, as one sparse (texts x vocabulary) count
        matrix times the float32 table: no per-text Python loop (model2vec's own
        path groups texts by length and averages in float16, ~1.7x slower
        here); agrees with it to ~3e-4."""
        import numpy as np
        import scipy.sparse as sp

        if self._table is None:
            self._table = np.asarray(model.embedding, dtype=np.float32)
            self._tokenize = TokenIds(model.tokenizer)
        table = self._table
        flat, rows = self._tokenize.ids_and_rows(texts, int(self.spec.max_length))
        if model.unk_token_id is not None:  # model2vec drops unknown tokens
            keep = flat != model.unk_token_id
            flat, rows = flat[keep], rows[keep]
        # COO -> CSR sums repeated (text, token) pairs and sorts each row's
        # tokens, so the sums do not depend on the order of `flat`
        counts = sp.csr_matrix(
            (np.ones(len(flat), dtype=np.float32), (rows, flat)),
            shape=(len(texts), table.shape[0]),
        )
        out = np.asarray(counts @ table, dtype=np.float32)
        n = np.bincount(rows, minlength=len(texts)).astype(np.float32)
        out /= np.maximum(n, 1.0)[:, None]
        if self.spec.normalize:
            out = l2_rows(out)
        return np.ascontiguousarray(out, dtype=np.float32)


class TokenIds:
    """Token ids of texts, exactly as `tokenizer.encode_batch_fast` gives them.

    A BERT tokenizer's normaliser (control characters, CJK spacing, accents,
    lowercase) was about 40% of tokenising a shopper story, and tokenising is
    most of a static encoder's time. On printable ASCII it does nothing but
    lowercase, so such texts are lowercased here and tokenised by a copy
    without it: the same ids (tests/unit/test_static_encoder.py). Texts with
    other characters or an added token's text (`[MASK]`, matched before
    normalising), other normalisers, added tokens matched on normalised text
    and a padding tokenizer (its batches would pad to other lengths) take the
    full path.

    With BERT's pre-tokenizer (split at whitespace, then at punctuation, and
    each piece tokenised on its own), a text's ids are the ids of its
    space-separated words, one after another. Texts told from a template
    repeat the same few thousand words, so each word is tokenised once and
    its ids are looked up after that: 2-3x the speed of tokenising every
    text (docs/encoders.md)."""

    # words remembered per tokenizer: bounded memory on an open-ended vocabulary
    MAX_WORDS = 500_000

    def __init__(self, tokenizer):
        self.full = tokenizer
        self.plain = None
        self.by_word = False
        self.truncate: int | None = None
        text = tokenizer.to_str()
        doc = json.loads(text)
        norm = doc.get("normalizer") or {}
        added = doc.get("added_tokens") or []
        # an added token matched on normalised text ("café" matching "cafe")
        # depends on the normaliser the copy lacks: full path only
        matched_normalised = any(t.get("normalized") for t in added)
        if (
            norm.get("type") == "BertNormalizer"
            and doc.get("padding") is None
            and not matched_normalised
        ):
            from tokenizers import Tokenizer

            self.plain = Tokenizer.from_str(text)
            self.plain.normalizer = None
            self.lowercase = bool(norm.get("lowercase"))
            self.added = [t["content"].lower() for t in added]
            trunc = doc.get("truncation")
            self.by_word = (doc.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer" and (
                trunc is None or (trunc.get("direction") == "Right" and not trunc.get("stride"))
            )
            self.truncate = int(trunc["max_length"]) if trunc else None
        self._forget()

    def _forget(self) -> None:
        """An empty word memory: each word's slot, and by slot its ids' start
        and length in one array of every remembered word's ids."""
        import numpy as np

        self._word_index: dict[str, int] = {}
        self._piece_ids = self._piece_start = self._piece_len = np.zeros(0, np.int64)

    def _split(self, texts: list[str]) -> tuple[list[int], list[str], list[int]]:
        """(positions of the plain texts, those texts lowercased as the
        normaliser would, positions of the rest)."""
        easy_at, easy, rest_at = [], [], []
        lower = self.lowercase
        added = self.added
        for i, t in enumerate(texts):
            if t.isascii() and t.isprintable():
                low = t.lower()
                if not any(a in low for a in added):
                    easy_at.append(i)
                    easy.append(low if lower else t)
                    continue
            rest_at.append(i)
        return easy_at, easy, rest_at

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.plain is None:
            return [e.ids for e in self.full.encode_batch_fast(texts, add_special_tokens=False)]
        easy_at, easy, rest_at = self._split(texts)
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(easy_at, self._easy_lists(easy), strict=True):
            out[i] = ids
        rest = [texts[i] for i in rest_at]
        for i, e in zip(rest_at, self._full(rest), strict=True):
            out[i] = e.ids
        return out

    def _full(self, texts: list[str]) -> list:
        return self.full.encode_batch_fast(texts, add_special_tokens=False) if texts else []

    def _easy_lists(self, easy: list[str]) -> list[list[int]]:
        if not self.by_word:
            return [e.ids for e in self.plain.encode_batch_fast(easy, add_special_tokens=False)]
        flat, lens = self._by_word(easy, self.truncate)
        ids, out, pos = flat.tolist(), [], 0
        for end in lens.cumsum().tolist():
            out.append(ids[pos:end])
            pos = end
        return out

    def ids_and_rows(self, texts: list[str], limit: int):
        """Every text's first `limit` ids as one array, and the position of
        the text each id belongs to (the order of ids across texts is not
        kept; within a text it is)."""
        import numpy as np

        if self.plain is None or not self.by_word:
            ids = [i[:limit] for i in self(texts)]
            return _flatten(ids, np.arange(len(ids), dtype=np.int64))
        easy_at, easy, rest_at = self._split(texts)
        flat, lens = self._by_word(
            easy, limit if self.truncate is None else min(limit, self.truncate)
        )
        rows = np.repeat(np.asarray(easy_at, dtype=np.int64), lens)
        if not rest_at:
            return flat, rows
        other, other_rows = _flatten(
            [e.ids[:limit] for e in self._full([texts[i] for i in rest_at])],
            np.asarray(rest_at, dtype=np.int64),
        )
        return np.concatenate([flat, other]), np.concatenate([rows, other_rows])

    def _by_word(self, easy: list[str], cut: int | None):
        """(ids of the `easy` texts one after another, ids per text), as the
        plain tokenizer gives them, from each space-separated word's ids; each
        text's ids cut to the first `cut` (None: all)."""
        import itertools

        import numpy as np

        words = [t.split() for t in easy]
        every = list(itertools.chain.from_iterable(words))
        if len(self._word_index) > self.MAX_WORDS:
            self._forget()
        index = self._word_index
        at = np.fromiter(map(index.get, every, itertools.repeat(-1)), np.int64, len(every))
        if (at < 0).any():
            self._learn(dict.fromkeys(every[i] for i in np.flatnonzero(at < 0).tolist()))
            at = np.fromiter(map(index.__getitem__, every), np.int64, len(every))
        word_len = self._piece_len[at]
        total = int(word_len.sum())
        word_start = np.cumsum(word_len) - word_len  # where each word's ids land
        src = np.repeat(self._piece_start[at] - word_start, word_len) + np.arange(total)
        flat = self._piece_ids[src]
        n_words = np.fromiter(map(len, words), np.int64, len(words))
        token_ends = np.concatenate([[0], np.cumsum(word_len)])[np.cumsum(n_words)]
        lens = np.diff(token_ends, prepend=0)
        if cut is not None and int(lens.max(initial=0)) > cut:
            keep = np.arange(total) - np.repeat(token_ends - lens, lens) < cut
            flat = flat[keep]
            lens = np.minimum(lens, cut)
        return flat, lens

    def _learn(self, new: dict[str, None]) -> None:
        """Tokenise words not seen before and append their ids."""
        import numpy as np

        words = list(new)
        ids, lens = _concat(
            [e.ids for e in self.plain.encode_batch_fast(words, add_special_tokens=False)]
        )
        base = len(self._piece_ids)
        self._piece_ids = np.concatenate([self._piece_ids, ids])
        self._piece_start = np.concatenate([self._piece_start, base + np.cumsum(lens) - lens])
        self._piece_len = np.concatenate([self._piece_len, lens])
        n = len(self._word_index)
        self._word_index.update(zip(words, range(n, n + len(words))))


def _concat(ids: list[list[int]]):
    """Lists of ids as one array, and each list's length."""
    import itertools

    import numpy as np

    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
    return flat, lens


def _flatten(ids: list[list[int]], rows_of: np.ndarray):
    """Lists of ids as one array, and rows_of[i] for each id of list i."""
    import numpy as np

    flat, lens = _concat(ids)
    return flat, np.repeat(rows_of, lens)


class _PlainStatic:
    """What _pool needs of a model2vec StaticModel, read without model2vec."""

    token_mapping = None
    weights = None

    def __init__(self, embedding: np.ndarray, tokenizer):
        self.embedding = embedding
        self.tokenizer = tokenizer
        unk = getattr(tokenizer.model, "unk_token", None)  # as model2vec: dropped when present
        self.unk_token_id = tokenizer.token_to_id(unk) if unk is not None else None
