"""A weight-free encoder: hashed word and character n-grams.

No fitting and no downloads: the same text gives the same vector on every machine
(scikit-learn's HashingVectorizer uses a fixed-seed MurmurHash3). Good for tests, CI,
and as a baseline next to a transformer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segtool.encoders._common import check_texts
from segtool.encoders._fingerprint import fingerprint as _fingerprint
from segtool.project.specs import EncoderSpec

# Bump when the featurisation below changes: it is part of the fingerprint.
SCHEME = "words1-2+char_wb3-5/l2-each/sum/v1"
_BLOCK = 4096


class HashingEncoder:
    """Word unigrams+bigrams and char_wb 3-5-grams, each hashed into `dim` signed buckets,
    each part L2-normalised, summed, then L2-normalised again (when normalize: true)."""

    def __init__(self, spec: EncoderSpec):
        self.spec = spec
        self._vectorizers = None

    @property
    def dim(self) -> int:
        return int(self.spec.dim)

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str:
        return "float32"

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

    def _load(self):
        if self._vectorizers is None:
            from sklearn.feature_extraction.text import HashingVectorizer

            common = dict(
                n_features=self.dim,
                alternate_sign=True,
                norm="l2",
                lowercase=True,
                dtype=np.float64,
            )
            words = HashingVectorizer(
                analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", **common
            )
            chars = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)
            self._vectorizers = (words, chars)
        return self._vectorizers

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        words, chars = self._load()
        for start in range(0, len(texts), _BLOCK):
            block = texts[start : start + _BLOCK]
            x = (words.transform(block) + chars.transform(block)).toarray()
            if self.spec.normalize:
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
            out[start : start + len(block)] = x
        return out
