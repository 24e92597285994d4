"""`kind: transformers`: AutoTokenizer + AutoModel with our own pooling.

Throughput on CPU comes from: tokenising the whole call once without padding, sorting
by token count (not characters), padding each batch only to its own longest row, and
running under torch.inference_mode. Results go to CPU per batch and back to input order.
On a GPU, batches are sized by a token budget, tokenised ahead in a worker thread, and
one batch stays in flight while the next is prepared (_encode_pipelined).
The ONNX backend (onnx_backend.py) reuses the tokenising and batching.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    import numpy as np

_DIM_KEYS = ("hidden_size", "d_model", "dim", "n_embd", "embed_dim")


def _dtype_keyword() -> str:
    """transformers 5 calls `torch_dtype` `dtype`."""
    try:
        from importlib.metadata import version

        return "dtype" if int(version("transformers").split(".")[0]) >= 5 else "torch_dtype"
    except Exception:  # noqa: BLE001
        return "torch_dtype"


_DTYPE_KW = _dtype_keyword()


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
    imports = ("torch", "transformers")  # what encode() imports (execute/render.py)

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
        # on CUDA (set at load): a token budget per batch, halved on
        # out-of-memory (see _batches), and the tokenise-ahead pipeline
        self._token_budget: int | None = None
        self._pipelined = False
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

    def _fingerprint_payload(self, legacy: bool = False) -> dict:
        return {
            "kind": self.spec.kind,
            "model": {"sha256": model_content_hash(self.path, legacy=legacy)},
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

    def legacy_fingerprint(self, version: int) -> str:
        """The fingerprint as a database of state `version` keyed this
        encoder's vectors and fits (state/rekey.py): before 6 without
        tokenizer.json beside a vocab file, else as today."""
        if version >= 6:
            return self.fingerprint()
        return _fingerprint(self._fingerprint_payload(legacy=True))

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
                # loaded in its compute dtype: a float16 model never sits in host
                # memory as float32 first (twice the size)
                model = AutoModel.from_pretrained(
                    str(self.path),
                    trust_remote_code=self.spec.trust_remote_code,
                    local_files_only=True,
                    **{_DTYPE_KW: torch_dtype(dtype)},
                )
        except Exception as exc:
            raise _load_error(self.spec, self.path, "model", exc) from None
        model = model.to(device=torch.device(device)).eval()
        self._model = model
        if device.startswith("cuda"):
            self._token_budget = int(self.spec.batch_size) * 512
            self._pipelined = True

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

    def _batch_rows(self, lens: np.ndarray, order: np.ndarray, start: int) -> int:
        """How many rows (longest first from `start`) the next batch takes: at most
        batch_size on CPU; on a GPU as many as fit the token budget, so short
        texts go in big batches and long ones in small ones."""
        bs = int(self.spec.batch_size)
        budget = self._token_budget
        if budget is None:
            return bs
        width = max(1, int(lens[order[start]]))  # rows are sorted: the first is the widest
        return max(1, min(budget // width, 16 * bs))

    def _batches(self, texts: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(row indices, input_ids, attention_mask): longest first, each batch padded to
        its own longest row (right padding, so CLS stays at position 0)."""
        import numpy as np

        ids = self._tokenize(texts)
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lens, kind="stable")
        pad_id = self._pad_id()
        start = 0
        while start < len(order):
            idx = order[start : start + self._batch_rows(lens, order, start)]
            start += len(idx)
            width = max(1, int(lens[idx[0]]))
            input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = int(lens[i])
                input_ids[row, :n] = ids[i]
                mask[row, :n] = 1
            yield idx, input_ids, mask

    def _launch(self, input_ids: np.ndarray, mask: np.ndarray):
        """Start a batch on the device; returns the pooled vectors as a device
        tensor (on a GPU the work may still be running)."""
        import torch

        dev = torch.device(self.device)
        ids_t = torch.from_numpy(input_ids)
        mask_t = torch.from_numpy(mask)
        if dev.type == "cuda":  # page-locked host memory: the copy runs asynchronously
            ids_t, mask_t = ids_t.pin_memory(), mask_t.pin_memory()
        ids_t = ids_t.to(dev, non_blocking=True)
        mask_t = mask_t.to(dev, non_blocking=True)
        out = self._model(input_ids=ids_t, attention_mask=mask_t)
        hidden = out[0] if not hasattr(out, "last_hidden_state") else out.last_hidden_state
        return pool(hidden, mask_t, self.spec.pooling, self.spec.normalize)

    def _forward(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._launch(input_ids, mask).cpu().numpy()

    def _forward_safe(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Forward a batch; on out-of-memory, run it in halves (_split). The
        retry happens outside the `except` block, so the failed attempt's
        tensors (held by the exception's traceback) are freed before it."""
        try:
            return self._forward(input_ids, mask)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
            if not is_out_of_memory(exc):
                raise
        return self._split(input_ids, mask)

    def _split(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A batch that ran out of memory, in two halves. The token budget of
        later batches drops to half of this batch's tokens (not half of the
        budget: batches built before the error with the old budget fail too,
        and must not halve it again each)."""
        import numpy as np
        import torch

        rows, width = input_ids.shape
        if rows == 1:
            raise EncoderError(
                f"encoder '{self.spec.name}' ran out of memory on {self.device} with a single "
                f"text of {width} tokens",
                hint="lower max_length (the longest texts need the most memory), or free memory on the device",
            )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._token_budget is not None:
            self._token_budget = min(self._token_budget, max(width, rows * width // 2))
        half = rows // 2
        return np.concatenate(
            [
                self._forward_safe(input_ids[:half], mask[:half]),
                self._forward_safe(input_ids[half:], mask[half:]),
            ]
        )

    def _encode_pipelined(self, texts: list[str]) -> np.ndarray:
        """The GPU path: a worker thread tokenises and pads batches ahead (the
        fast tokenizer releases the GIL) while the device runs; each batch's
        vectors are copied back into page-locked memory asynchronously and
        collected only after the next batch was launched, so the GPU never waits
        for the host between batches. An out-of-memory batch runs in halves
        (_split, which lowers the budget of later batches)."""
        import queue
        import threading
        from contextlib import nullcontext

        import numpy as np
        import torch

        dev = torch.device(self.device)
        ready: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                for item in self._batches(texts):
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                failure.append(exc)
            finally:
                ready.put(None)

        worker = threading.Thread(target=produce, name="segtool-tokenize", daemon=True)
        worker.start()
        out: np.ndarray | None = None
        in_flight = None  # (row indices, host tensor, event) of the last launched batch

        def collect(entry) -> None:
            nonlocal out
            idx, host, event = entry
            if event is not None:
                event.synchronize()
            vec = host.numpy()
            if out is None:
                out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
            out[idx] = vec

        # this thread's current device is the encoder's (cuda:1 too): streams,
        # events and the caching allocator then all refer to it
        on_device = torch.cuda.device(dev) if dev.type == "cuda" else nullcontext()
        try:
            with on_device, torch.inference_mode():
                while (item := ready.get()) is not None:
                    idx, input_ids, mask = item
                    launched = None
                    try:
                        vec = self._launch(input_ids, mask)
                        if vec.is_cuda:
                            host = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
                            host.copy_(vec, non_blocking=True)
                            # recorded on the stream that runs the copy (vec's device)
                            event = torch.cuda.Event(blocking=True)
                            event.record(torch.cuda.current_stream(vec.device))
                        else:
                            host, event = vec, None
                        launched = (idx, host, event)
                    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
                        if not is_out_of_memory(exc):
                            raise
                    if launched is None:  # outside the handler: its tensors are freed
                        if in_flight is not None:
                            collect(in_flight)
                            in_flight = None
                        launched = (idx, torch.from_numpy(self._split(input_ids, mask)), None)
                    if in_flight is not None:
                        collect(in_flight)
                    in_flight = launched
                if in_flight is not None:
                    collect(in_flight)
        finally:
            stop.set()
            while worker.is_alive():  # let a blocked producer finish
                try:
                    ready.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
        if failure:
            raise failure[0]
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        if self._pipelined:
            return self._encode_pipelined(texts)
        import torch

        out: np.ndarray | None = None
        with torch.inference_mode():
            for idx, input_ids, mask in self._batches(texts):
                vec = self._forward_safe(input_ids, mask)
                if out is None:
                    out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
                out[idx] = vec
        return out


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error, or one raised outside its caching allocator
    (cuBLAS/cuDNN workspaces: a plain RuntimeError)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


def pool(hidden, mask, pooling: str, normalize: bool):
    """Pool in float32 (fp16 sums over long inputs lose precision)."""
    import torch

    if pooling == "cls":
        vec = hidden[:, 0].float()
    else:
        hidden = hidden.float()
        m = mask.unsqueeze(-1).to(hidden.dtype)
        vec = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if normalize:
        vec = torch.nn.functional.normalize(vec, p=2.0, dim=-1)
    return vec


def _load_error(spec: EncoderSpec, path: Path, what: str, exc: Exception) -> EncoderError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = "the folder must hold a transformers model (config.json, weights, tokenizer files)"
    if "trust_remote_code" in str(exc):
        hint = (
            "this model needs its own code: set trust_remote_code: true (and "
            "SEGTOOL_TRUST_REMOTE_CODE where segtool runs) if you trust it"
        )
    return EncoderError(
        f"encoder '{spec.name}': could not load the {what} from {path}: {msg}", hint=hint
    )
