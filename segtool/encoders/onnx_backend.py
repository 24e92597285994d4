"""`backend: onnx`: the same tokenising, batching and pooling as the torch backend, with the
network (pooling and normalisation included) run by ONNX Runtime.

The model is exported once with torch.onnx.export and cached under
`<cache_dir>/<key>/model.onnx` (key: the encoder fingerprint without max_length); `quantize: int8` applies ONNX Runtime's dynamic
int8 quantisation to the float32 export (which is cached too, under its own fingerprint).
The folder also keeps the tokenizer (tokenizer.json, for the `tokenizers` library), so later
runs load both from the cache and never import torch or transformers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from segtool.encoders._common import quiet_transformers
from segtool.encoders._device import check_device_string, default_threads
from segtool.encoders._resolve import Resolved
from segtool.encoders.transformers_backend import TransformersEncoder, pool
from segtool.errors import EncoderError
from segtool.project.specs import EncoderSpec

OPSET = 17
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "segtool_onnx.json"


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise EncoderError(
            "backend: onnx needs onnxruntime, which is not installed",
            hint="pip install 'segtool[onnx]' (onnxruntime and onnx), or set backend: torch",
        ) from None
    return onnxruntime


def _cuda_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


class OnnxEncoder(TransformersEncoder):
    """float32 or dynamic-int8 ONNX Runtime inference on CPU (CUDA provider if installed)."""

    backend = "onnx"
    imports = ("onnxruntime", "tokenizers")

    def __init__(
        self,
        spec: EncoderSpec,
        resolved: Resolved,
        *,
        cache_dir: Path,
        device_override: str | None = None,
        threads: int | None = None,
    ):
        if spec.dtype in ("float16", "bfloat16"):
            raise EncoderError(
                f"encoder '{spec.name}': dtype {spec.dtype} is not supported with backend: onnx",
                hint="use dtype: auto or float32 (and quantize: int8 for speed), or backend: torch",
            )
        super().__init__(spec, resolved, device_override=device_override, threads=threads)
        self.cache_dir = Path(cache_dir)
        self.exported = False  # True when this instance exported (or quantised) the model
        self._session = None
        self._fast = None  # tokenizers.Tokenizer from the cache folder
        self._fast_pad_id = 0

    @property
    def device(self) -> str:
        if self._device is None:
            req = check_device_string(self._requested_device)
            if req == "mps":
                raise EncoderError(
                    f"encoder '{self.spec.name}': backend: onnx runs on cpu or cuda, not mps",
                    hint="set backend: torch for mps",
                )
            self._device = "cpu"
            if req.startswith("cuda") or req == "auto":
                ort = require_onnxruntime()
                # onnxruntime-gpu lists its CUDA provider on a machine without a GPU
                # too: under `auto`, ask torch whether there is one
                if "CUDAExecutionProvider" in ort.get_available_providers() and (
                    req.startswith("cuda") or _cuda_present()
                ):
                    self._device = "cuda:" + (req.split(":")[1] if ":" in req else "0")
                elif req.startswith("cuda"):
                    raise EncoderError(
                        f"encoder '{self.spec.name}': device {req} with backend: onnx needs "
                        "onnxruntime-gpu (CUDAExecutionProvider)",
                        hint="pip install onnxruntime-gpu, or set backend: torch",
                    )
        return self._device

    @property
    def dtype(self) -> str:
        return "float32"  # int8 is `quantize`, a separate fingerprint field

    @property
    def onnx_path(self) -> Path:
        """Keyed by the fingerprint minus max_length (truncation happens in the tokenizer,
        so encoders that differ only in max_length share one export). The key
        covers tokenizer.json (the folder keeps a copy of the tokenizer)."""
        from segtool.encoders._fingerprint import fingerprint as _fingerprint

        key = _fingerprint({**self._fingerprint_payload(), "max_length": None, "onnx": OPSET})
        return self.cache_dir / key / ONNX_FILE

    # ------------------------------------------------------------------ export
    def _ensure_exported(self) -> Path:
        path = self.onnx_path
        if path.is_file():
            return path
        if self.spec.quantize == "int8":
            fp32 = OnnxEncoder(
                self.spec.model_copy(update={"quantize": "none"}),
                self.resolved,
                cache_dir=self.cache_dir,
                device_override="cpu",
                threads=self._threads,
            )
            src = fp32._ensure_exported()
            self.exported = self.exported or fp32.exported

            def build_int8(tmp: Path) -> dict:
                _quantize_int8(src, tmp / ONNX_FILE)
                if (src.parent / TOKENIZER_FILE).is_file():
                    shutil.copy2(src.parent / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
                meta = json.loads((src.parent / META_FILE).read_text())
                return {"quantized_from": str(src), "pad_token_id": meta.get("pad_token_id")}

            _atomic_build(path.parent, build_int8, self._meta())
        else:

            def build(tmp: Path) -> dict:
                raw = tmp / "model.raw.onnx"
                self._export(raw)
                optimized = _optimize(raw, tmp / ONNX_FILE, self.path)
                if optimized:
                    raw.unlink()
                else:
                    raw.rename(tmp / ONNX_FILE)
                tok = self._load_tokenizer()
                backend = getattr(tok, "backend_tokenizer", None)
                if backend is not None:
                    backend.save(str(tmp / TOKENIZER_FILE))
                return {"ort_optimized": optimized, "pad_token_id": self._pad_id()}

            _atomic_build(path.parent, build, self._meta())
        self.exported = True
        return path

    def _meta(self) -> dict:
        return {
            "fingerprint": self.fingerprint(),
            "encoder": self.spec.name,
            "model": self.spec.model,
            "model_path": str(self.path),
            "pooling": self.spec.pooling,
            "normalize": self.spec.normalize,
            "quantize": self.spec.quantize,
            "opset": OPSET,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _export(self, out: Path) -> None:
        """Trace the model plus pooling to ONNX (TorchScript exporter: no onnxscript needed)."""
        import torch
        from transformers import AutoModel

        try:
            with quiet_transformers():
                model = AutoModel.from_pretrained(
                    str(self.path),
                    trust_remote_code=self.spec.trust_remote_code,
                    local_files_only=True,
                    attn_implementation="eager",
                )
        except Exception as exc:
            from segtool.encoders.transformers_backend import _load_error

            raise _load_error(self.spec, self.path, "model", exc) from None
        model = model.float().eval()
        wrapped = _pooled(model, self.spec.pooling, self.spec.normalize)
        # Two rows, the second padded, so the traced graph handles padding.
        ids = torch.tensor([[101, 7592, 2088, 2003, 2204, 102], [101, 7592, 102, 0, 0, 0]])
        ids = (
            ids.clamp(max=model.config.vocab_size - 1)
            if hasattr(model.config, "vocab_size")
            else ids
        )
        mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor([[6], [3]])).long()
        with torch.inference_mode(False), torch.no_grad(), warnings_off():
            torch.onnx.export(
                wrapped,
                (ids, mask),
                str(out),
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "embedding": {0: "batch"},
                },
                opset_version=OPSET,
                do_constant_folding=True,
                **_legacy_exporter_kwargs(),
            )

    # ------------------------------------------------------------------ inference
    def _load_cached_tokenizer(self, folder: Path) -> None:
        """The `tokenizers` tokenizer saved at export: no torch/transformers import."""
        try:
            from tokenizers import Tokenizer

            meta = json.loads((folder / META_FILE).read_text())
            tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception:
            return  # fall back to AutoTokenizer
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_length)
        pad = meta.get("pad_token_id")
        self._fast = tok
        self._fast_pad_id = 0 if pad is None else int(pad)

    def _pad_id(self) -> int:
        if self._fast is not None:
            return self._fast_pad_id
        return super()._pad_id()

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return [e.ids for e in self._fast.encode_batch(texts, add_special_tokens=True)]
        return super()._tokenize(texts)

    def _load(self):
        if self._session is not None:
            return
        ort = require_onnxruntime()
        path = self._ensure_exported()
        if (path.parent / TOKENIZER_FILE).is_file():
            self._load_cached_tokenizer(path.parent)
        if self._fast is None:
            self._load_tokenizer()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = default_threads(self._threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            providers = [
                ("CUDAExecutionProvider", {"device_id": int(self.device.split(":")[1])}),
                "CPUExecutionProvider",
            ]
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise EncoderError(
                f"encoder '{self.spec.name}': ONNX Runtime could not load {path}: {exc}",
                hint=f"delete {path.parent} to export again",
            ) from None
        if self.device.startswith("cuda") and (
            "CUDAExecutionProvider" not in self._session.get_providers()
        ):
            # the CUDA provider failed to load (CUDA/cuDNN libraries): ONNX
            # Runtime fell back to the CPU and only printed it
            if self._requested_device.startswith("cuda"):
                raise EncoderError(
                    f"encoder '{self.spec.name}': ONNX Runtime could not start its CUDA provider "
                    f"on {self.device} (it would run on the CPU)",
                    hint="check the CUDA and cuDNN libraries onnxruntime-gpu needs, or set backend: torch",
                )
            self._device = "cpu"  # device: auto: say where it really runs
        self._model = self._session
        self._input_names = {i.name for i in self._session.get_inputs()}

    def _forward(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        (vec,) = self._session.run(["embedding"], feeds)
        return np.asarray(vec, dtype=np.float32)

    def _forward_safe(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._forward(input_ids, mask)

    def encode(self, texts):
        from segtool.encoders._common import check_texts

        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        out: np.ndarray | None = None
        for idx, input_ids, mask in self._batches(texts):
            vec = self._forward(input_ids, mask)
            if out is None:
                out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
            out[idx] = vec
        return out


def _legacy_exporter_kwargs() -> dict:
    """torch >= 2.5 defaults (or will default) to the dynamo exporter, which needs onnxscript;
    the TorchScript exporter handles dynamic batch and sequence axes without it."""
    import inspect

    import torch

    params = inspect.signature(torch.onnx.export).parameters
    return {"dynamo": False} if "dynamo" in params else {}


def _pooled(model, pooling: str, normalize: bool):
    """The encoder plus pooling and normalisation as one module, so ONNX returns vectors."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            return pool(out[0], attention_mask, pooling, normalize)

    return Pooled().eval()


# model_type values whose graphs ONNX Runtime's BERT optimiser knows how to fuse.
_ORT_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "mpnet"}


def _optimize(src: Path, out: Path, model_dir: Path) -> bool:
    """Fuse attention, LayerNorm and GELU with onnxruntime.transformers' optimiser (about 5%
    faster on CPU). Kept only if it gives the same vectors as the plain graph."""
    from segtool.encoders._resolve import read_json

    cfg = read_json(model_dir / "config.json")
    if cfg.get("model_type") not in _ORT_BERT_LIKE:
        return False
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with warnings_off():
            opt = optimize_model(
                str(src),
                model_type="bert",
                num_heads=int(cfg.get("num_attention_heads") or 0),
                hidden_size=int(cfg.get("hidden_size") or 0),
            )
            opt.save_model_to_file(str(out))
        ok = _same_outputs(src, out, int(cfg.get("vocab_size") or 1000))
    except Exception:
        ok = False
    if not ok and out.exists():
        out.unlink()
    return ok


def _same_outputs(a: Path, b: Path, vocab_size: int) -> bool:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    ids = rng.integers(5, max(6, vocab_size), size=(3, 24), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    outs = []
    for path in (a, b):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        outs.append(sess.run(None, {k: v for k, v in feeds.items() if k in names})[0])
    x, y = outs
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
    return bool(x.shape == y.shape and cos.min() > 0.99999)


class warnings_off:
    """Exporter and tracer warnings are noise for a user; keep them out of the run log."""

    def __enter__(self):
        import logging
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")
        # onnxruntime.quantization and the optimiser log advice on the root logger.
        self._disabled = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        import logging

        logging.disable(self._disabled)
        return self._ctx.__exit__(*exc)


def _quantize_int8(src: Path, out: Path) -> None:
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings_off():
        # per-channel weights: ~0.992 mean cosine to float32 on MiniLM instead of ~0.95;
        # 7-bit weights (reduce_range) avoid u8*s8 overflow on CPUs without VNNI, so
        # AVX2 and VNNI machines compute the same vectors.
        quantize_dynamic(
            str(src),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            extra_options={"DefaultTensorType": _onnx_float()},
        )


def _onnx_float() -> int:
    import onnx

    return onnx.TensorProto.FLOAT


def _atomic_build(final_dir: Path, build, meta: dict) -> None:
    """Build into a temporary folder next to `final_dir`, then rename it into place, so an
    interrupted export never leaves a half-written model that later runs would load."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name[:16]}-", dir=final_dir.parent))
    try:
        extra = build(tmp) or {}
        (tmp / META_FILE).write_text(json.dumps({**meta, **extra}, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(tmp, final_dir)
        except OSError:
            if not (final_dir / ONNX_FILE).is_file():  # not "another process won the race"
                raise
    except EncoderError:
        raise
    except Exception as exc:
        raise EncoderError(
            f"could not export the model to ONNX: {type(exc).__name__}: {exc}",
            hint="use backend: torch for this model",
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
