"""Small helpers shared by the backends (no heavy imports)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from segtool.errors import EncoderError


class CpuFloat32:
    """For encoders that compute on the CPU in float32 whatever the settings
    (hashing, static): the Encoder protocol's device and dtype."""

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dtype(self) -> str:
        return "float32"


def l2_rows(x):
    """Each row of a float array scaled to unit length (zero rows stay zero)."""
    import numpy as np

    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of str, or an EncoderError naming the first bad item."""
    if isinstance(texts, str):
        raise EncoderError("encode() takes a sequence of texts, not one string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise EncoderError(f"text #{i} is {type(t).__name__}, not str")
    return texts


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load-time progress bars and "weights not used" notices
    (segtool prints its own progress); restore the previous settings afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
