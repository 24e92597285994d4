"""Encoders: text -> float32 vectors, behind one small protocol.

Four kinds: `transformers` (AutoModel + our pooling; backend torch or onnx),
`sentence-transformers` (the model's own pipeline), `static` (model2vec: a
model2vec model, or one distilled once from a transformer) and `hashing`
(weight-free).
Importing this package never imports torch, transformers, sklearn or
sentence_transformers: backends import them when they load.

    enc = build_encoder(spec, project_root)          # cheap: resolves files, loads nothing
    enc.fingerprint()                                # cache key part; no model load
    vectors = enc.encode(["text", ...])              # loads on first use

See docs/encoders.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from segtool.encoders._resolve import (
    SHIPPED_MODELS,
    ShippedModel,
    check_encoder,
    hf_cache_dir,
    resolve_model_path,
)
from segtool.errors import EncoderError

if TYPE_CHECKING:
    import numpy as np

    from segtool.project.specs import EncoderSpec

__all__ = [
    "Encoder",
    "EncoderError",
    "build_encoder",
    "check_encoder",
    "resolve_model_path",
    "default_cache_dir",
    "hf_cache_dir",
    "SHIPPED_MODELS",
    "ShippedModel",
]


@runtime_checkable
class Encoder(Protocol):
    """What the embed stage needs from an encoder."""

    spec: EncoderSpec
    # modules encode() imports: a text step rendering on two CPUs imports
    # them while the other CPU renders (execute/render.py)
    imports: tuple[str, ...]

    @property
    def dim(self) -> int:
        """Output dimension (may load the model)."""
        ...

    @property
    def device(self) -> str:
        """Resolved device: "cpu", "cuda:0", "mps"."""
        ...

    @property
    def dtype(self) -> str:
        """Resolved compute dtype name: "float32", "float16", "bfloat16"."""
        ...

    def fingerprint(self) -> str:
        """sha256 hex of everything that decides the vectors (not batch size or device)."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim), rows in input order."""
        ...


def default_cache_dir(project_root: Path) -> Path:
    """Where exported ONNX models go unless the caller says otherwise: under
    target/, and not through a symlink inside it that leads out."""
    from segtool.project.reach import check_inside

    target = Path(project_root) / "target"
    return check_inside(target, target / "onnx")


# kinds that always encode on this process's CPU: a `device:` does not apply
CPU_ONLY_KINDS = ("hashing", "static")


def build_encoder(
    spec: EncoderSpec,
    project_root: Path,
    device_override: str | None = None,
    cache_dir: Path | None = None,
    *,
    threads: int | None = None,
    allow_download: bool = True,
) -> Encoder:
    """An encoder for `spec`. Resolves the model's files now (raising EncoderError when they
    cannot be found) but loads nothing until `encode` or `dim` needs it.

    device_override: replaces `spec.device` when given (e.g. a profile target's `device:`).
    cache_dir: where backend: onnx keeps exported models (default <project_root>/target/onnx).
    threads: CPU threads for torch / ONNX Runtime (default: OMP_NUM_THREADS, else the CPUs
        this process may use). torch's setting is process-wide.
    allow_download: False forbids a hub download even when HF_HUB_OFFLINE is not set.
    """
    from segtool.encoders._device import check_device_string

    project_root = Path(project_root)
    if device_override is not None:
        check_device_string(device_override)
    if spec.kind == "hashing":
        from segtool.encoders.hashing import HashingEncoder

        return HashingEncoder(spec)

    from segtool.encoders._resolve import resolve

    if not spec.model:
        raise EncoderError(f"encoder '{spec.name}' (kind {spec.kind}) needs `model`")
    resolved = resolve(spec.model, spec.revision, project_root, allow_download=allow_download)
    if spec.kind == "static":
        from segtool.encoders.static_backend import StaticEncoder

        return StaticEncoder(spec, resolved)
    if spec.kind == "sentence-transformers":
        if spec.backend == "onnx":
            raise EncoderError(
                f"encoder '{spec.name}': backend: onnx is supported with kind: transformers only",
                hint="use kind: transformers with backend: onnx (same pooling and normalisation)",
            )
        from segtool.encoders.st_backend import SentenceTransformersEncoder

        return SentenceTransformersEncoder(
            spec, resolved, device_override=device_override, threads=threads
        )
    if spec.backend == "onnx":
        from segtool.encoders.onnx_backend import OnnxEncoder, require_onnxruntime

        require_onnxruntime()
        return OnnxEncoder(
            spec,
            resolved,
            cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(project_root),
            device_override=device_override,
            threads=threads,
        )
    from segtool.encoders.transformers_backend import TransformersEncoder

    return TransformersEncoder(spec, resolved, device_override=device_override, threads=threads)
