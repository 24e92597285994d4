"""`kind: sentence-transformers`: the model's own sentence-transformers pipeline.

A folder with modules.json uses its own modules (pooling, dense layers, normalisation);
a plain transformers folder gets Transformer + Pooling(spec.pooling).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segtool.encoders._common import check_texts, quiet_transformers
from segtool.encoders._device import configure_torch_threads, torch_dtype, warn_slow_cpu_dtype
from segtool.encoders._fingerprint import model_content_hash
from segtool.encoders.transformers_backend import TransformersEncoder
from segtool.errors import EncoderError


class SentenceTransformersEncoder(TransformersEncoder):
    backend = "torch"
    imports = ("torch", "sentence_transformers")

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
            get = (
                getattr(self._model, "get_embedding_dimension", None)
                or self._model.get_sentence_embedding_dimension
            )
            self._dim = int(get())
        return self._dim

    def _fingerprint_payload(self, legacy: bool = False) -> dict:
        payload = super()._fingerprint_payload(legacy)
        payload["model"] = {
            "sha256": model_content_hash(self.path, sentence_transformers=True, legacy=legacy)
        }
        return payload

    def _load(self):
        if self._model is not None:
            return
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EncoderError(
                f"encoder '{self.spec.name}' (kind sentence-transformers) needs the "
                "sentence-transformers package",
                hint="pip install 'segtool[st]', or use kind: transformers",
            ) from None
        configure_torch_threads(self._threads)
        device, dtype = self.device, self.dtype
        warn_slow_cpu_dtype(dtype, device)
        # a float16/bfloat16 model is loaded on the host and moved once, cast:
        # loading it on the GPU in float32 first would need both copies there
        load_on = "cpu" if dtype != "float32" else device
        try:
            with quiet_transformers():
                if (self.path / "modules.json").is_file():
                    model = SentenceTransformer(
                        str(self.path),
                        device=load_on,
                        trust_remote_code=self.spec.trust_remote_code,
                        local_files_only=True,
                    )
                else:
                    model = SentenceTransformer(modules=self._plain_modules(), device=load_on)
        except Exception as exc:
            from segtool.encoders.transformers_backend import _load_error

            raise _load_error(self.spec, self.path, "model", exc) from None
        model.max_seq_length = self.max_length
        if dtype != "float32":
            model = model.to(device=device, dtype=torch_dtype(dtype))
        self._model = model.eval()

    def _plain_modules(self):
        try:
            from sentence_transformers.base.modules import Transformer
            from sentence_transformers.sentence_transformer.modules import Pooling
        except ImportError:  # sentence-transformers < 6
            from sentence_transformers.models import Pooling, Transformer

        word = Transformer(str(self.path), max_seq_length=self.max_length)
        get_dim = (
            getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
        )
        return [word, Pooling(int(get_dim()), pooling_mode=self.spec.pooling)]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        vecs = self._model.encode(
            texts,
            batch_size=int(self.spec.batch_size),
            normalize_embeddings=bool(self.spec.normalize),
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)
