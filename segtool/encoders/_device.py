"""Device, dtype and CPU thread choices (these import torch, so call them late)."""

from __future__ import annotations

import os
import warnings

from segtool.errors import EncoderError
from segtool.project.specs import DEVICE_RE
from segtool.words import counted


def check_device_string(device: str) -> str:
    if not DEVICE_RE.match(device):
        raise EncoderError(f"unknown device '{device}'", hint="use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_device(requested: str) -> str:
    """auto -> cuda:0, then mps, then cpu. An explicit device that is not there is an error
    (silently running a `device: cuda` project on CPU would be a surprise)."""
    check_device_string(requested)
    if requested == "cpu":
        return "cpu"
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.current_device()}"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EncoderError(
                f"device '{requested}' was asked for but CUDA is not available",
                hint="set device: auto (or cpu), or install a CUDA build of torch",
            )
        index = int(requested.split(":")[1]) if ":" in requested else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise EncoderError(
                f"device '{requested}' does not exist: {counted(torch.cuda.device_count(), 'GPU')} visible",
                hint="pick cuda:0..cuda:N-1, or check CUDA_VISIBLE_DEVICES",
            )
        return f"cuda:{index}"
    # mps
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise EncoderError(
            "device 'mps' was asked for but Apple MPS is not available",
            hint="set device: auto (or cpu)",
        )
    return "mps"


def resolve_dtype(requested: str, device: str) -> str:
    """auto: float16 on a GPU (CUDA or MPS), float32 on CPU.

    float16 rather than bfloat16 on CUDA so that every GPU (bf16-less T4s included) gives
    the same fingerprint; set dtype: bfloat16 for models that overflow in float16.
    """
    if requested == "auto":
        return "float16" if device.startswith(("cuda", "mps")) else "float32"
    return requested


def warn_slow_cpu_dtype(dtype: str, device: str) -> None:
    if device == "cpu" and dtype in ("float16", "bfloat16"):
        warnings.warn(f"dtype {dtype} on CPU is usually much slower than float32", stacklevel=3)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def default_threads(threads: int | None) -> int:
    """Explicit `threads`, else OMP_NUM_THREADS, else the CPUs this process may use."""
    if threads:
        return max(1, int(threads))
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cpus()


def configure_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (process-wide): explicit value, OMP_NUM_THREADS, or the
    CPUs available to this process (torch's own default can count host cores that a
    container quota does not let us use, which oversubscribes badly)."""
    import torch

    n = default_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
