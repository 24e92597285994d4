"""`kind: transformers`: AutoTokenizer + AutoModel with our own pooling.

Throughput on CPU comes from: tokenising the whole call once without padding, sorting
by token count (not characters), padding each batch only to its own longest row, and
running under torch.inference_mode. Results go to CPU per batch and back to input order.
The ONNX backend (onnx_backend.py) reuses the tokenising and batching.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from segtool.encoders._common import check_texts, quiet_transformers
from segtool.encoders._device import (
    check_device_string,
    configure_torch_threads,
    resolve_device,
    resolve_dtype,
    torch_dtype,
    warn_slow_cpu_dtype,
)
from segtool.encoders._fingerprint import fingerprint as _fingerprint
from segtool.encoders._fingerprint import model_content_hash
from segtool.encoders._resolve import Resolved, model_max_positions, read_json
from segtool.errors import EncoderError
from segtool.project.specs import EncoderSpec

_DIM_KEYS = ("hidden_size", "d_model", "dim", "n_embd", "embed_dim")


def config_dim(folder: Path) -> int | None:
    """Hidden size from config.json, so `dim` needs no model load."""
    cfg = read_json(folder / "config.json")
    for key in _DIM_KEYS:
        if isinstance(cfg.get(key), int):
            return cfg[key]
    text = cfg.get("text_config")
    if isinstance(text, dict):
        for key in _DIM_KEYS:
            if isinstance(text.get(key), int):
                return text[key]
    return None


class TransformersEncoder:
    """Mean or CLS pooling over a Hugging Face encoder's last hidden state."""

    backend = "torch"

    def __init__(
        self,
        spec: EncoderSpec,
        resolved: Resolved,
        *,
        device_override: str | None = None,
        threads: int | None = None,
    ):
        self.spec = spec
        self.resolved = resolved
        self.path = resolved.path
        self._requested_device = check_device_string(device_override or spec.device)
        self._threads = threads
        self._device: str | None = None
        self._dtype: str | None = None
        self._dim: int | None = None
        self._fingerprint: str | None = None
        self._tokenizer = None
        self._model = None
        limit = model_max_positions(self.path)
        self.max_length = spec.max_length
        if limit is not None and spec.max_length > limit:
            warnings.warn(
                f"encoder '{spec.name}': max_length {spec.max_length} is longer than the model "
                f"accepts; truncating to {limit} tokens",
                stacklevel=2,
            )
            self.max_length = limit

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self._requested_device)
        return self._device

    @property
    def dtype(self) -> str:
        if self._dtype is None:
            self._dtype = resolve_dtype(self.spec.dtype, self.device)
        return self._dtype

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = config_dim(self.path)
            if self._dim is None:
                self._load()
                self._dim = int(self._model.config.hidden_size)
        return self._dim

    def _fingerprint_payload(self) -> dict:
        return {
            "kind": self.spec.kind,
            "model": {"sha256": model_content_hash(self.path)},
            "pooling": self.spec.pooling,
            "normalize": bool(self.spec.normalize),
            "max_length": int(self.spec.max_length),
            # the dtype asked for, not the one resolved on this machine: `auto`
            # computes in float16 on a GPU and float32 on a CPU, and those vectors
            # agree to ~1e-3, so one cache serves both and --device cannot split
            # it (and a fingerprint needs no torch import to find the device)
            "dtype": self.spec.dtype,
            "backend": self.backend,
            "quantize": self.spec.quantize,
        }

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self._fingerprint_payload())
        return self._fingerprint

    # ------------------------------------------------------------------ loading
    def _load_tokenizer(self):
        if self._tokenizer is None:
            try:
                from transformers import AutoTokenizer

                with quiet_transformers():
                    self._tokenizer = AutoTokenizer.from_pretrained(
                        str(self.path),
                        trust_remote_code=self.spec.trust_remote_code,
                        local_files_only=True,
                    )
            except ImportError as exc:
                raise EncoderError(
                    f"encoder '{self.spec.name}' needs transformers: {exc}",
                    hint="pip install transformers",
                ) from None
            except Exception as exc:
                raise _load_error(self.spec, self.path, "tokenizer", exc) from None
        return self._tokenizer

    def _load(self):
        if self._model is not None:
            return
        self._load_tokenizer()
        import torch
        from transformers import AutoModel

        configure_torch_threads(self._threads)
        device, dtype = self.device, self.dtype
        warn_slow_cpu_dtype(dtype, device)
        try:
            with quiet_transformers():
                model = AutoModel.from_pretrained(
                    str(self.path),
                    trust_remote_code=self.spec.trust_remote_code,
                    local_files_only=True,
                )
        except Exception as exc:
            raise _load_error(self.spec, self.path, "model", exc) from None
        model = model.to(device=torch.device(device), dtype=torch_dtype(dtype)).eval()
        self._model = model

    # ------------------------------------------------------------------ encoding
    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        tok = self._load_tokenizer()
        enc = tok(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return enc["input_ids"]

    def _pad_id(self) -> int:
        pad_id = self._load_tokenizer().pad_token_id
        return 0 if pad_id is None else int(pad_id)

    def _batches(self, texts: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(row indices, input_ids, attention_mask): longest first, each batch padded to
        its own longest row (right padding, so CLS stays at position 0)."""
        ids = self._tokenize(texts)
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lens, kind="stable")
        pad_id = self._pad_id()
        bs = int(self.spec.batch_size)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            width = max(1, int(lens[idx[0]]))
            input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = int(lens[i])
                input_ids[row, :n] = ids[i]
                mask[row, :n] = 1
            yield idx, input_ids, mask

    def _forward(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        dev = torch.device(self.device)
        ids_t = torch.from_numpy(input_ids).to(dev)
        mask_t = torch.from_numpy(mask).to(dev)
        out = self._model(input_ids=ids_t, attention_mask=mask_t)
        hidden = out[0] if not hasattr(out, "last_hidden_state") else out.last_hidden_state
        vec = pool(hidden, mask_t, self.spec.pooling, self.spec.normalize)
        return vec.cpu().numpy()

    def _forward_safe(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Forward a batch; on GPU out-of-memory, split it in halves and retry."""
        import torch

        oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
        try:
            return self._forward(input_ids, mask)
        except oom:
            if len(input_ids) == 1:
                raise EncoderError(
                    f"encoder '{self.spec.name}' ran out of GPU memory on a single text",
                    hint="lower max_length, or use dtype: float16",
                ) from None
            torch.cuda.empty_cache()
            half = len(input_ids) // 2
            return np.concatenate(
                [
                    self._forward_safe(input_ids[:half], mask[:half]),
                    self._forward_safe(input_ids[half:], mask[half:]),
                ]
            )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        import torch

        out: np.ndarray | None = None
        with torch.inference_mode():
            for idx, input_ids, mask in self._batches(texts):
                vec = self._forward_safe(input_ids, mask)
                if out is None:
                    out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
                out[idx] = vec
        return out


def pool(hidden, mask, pooling: str, normalize: bool):
    """Pool in float32 (fp16 sums over long inputs lose precision)."""
    import torch

    hidden = hidden.float()
    if pooling == "cls":
        vec = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        vec = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if normalize:
        vec = torch.nn.functional.normalize(vec, p=2.0, dim=-1)
    return vec


def _load_error(spec: EncoderSpec, path: Path, what: str, exc: Exception) -> EncoderError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = "the folder must hold a transformers model (config.json, weights, tokenizer files)"
    if "trust_remote_code" in str(exc):
        hint = "this model needs its own code: set trust_remote_code: true if you trust it"
    return EncoderError(
        f"encoder '{spec.name}': could not load the {what} from {path}: {msg}", hint=hint
    )
