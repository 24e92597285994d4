"""The local executor commits (and moves the progress bar) in chunks small
enough that a transformer on a CPU reports every few seconds, and large
chunks everywhere else."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segtool.execute.executors import CPU_MODEL_CHUNK, EmbedWork
from segtool.execute.executors.local import LocalExecutor


class _Encoder:
    """Stands in for a built encoder: one 2-d vector per text."""

    def __init__(self, device: str):
        self.device = device
        self.calls: list[int] = []

    def encode(self, texts):
        self.calls.append(len(texts))
        return np.ones((len(texts), 2), dtype=np.float32)


def _work(kind: str, device: str, todo: int, chunk: int = 2048):
    enc = _Encoder(device)
    committed: list[int] = []
    advanced: list[int] = []
    notes: list[str] = []
    texts = [f"text {i}" for i in range(todo)]

    def read(lo, hi):  # rn is 1-based
        part = texts[lo - 1 : hi - 1]
        return [f"h{i}" for i in range(lo, lo + len(part))], part

    work = EmbedWork(
        spec=SimpleNamespace(kind=kind),
        fingerprint="fp",
        todo=todo,
        chunk=chunk,
        root=Path("."),
        device=None,
        local_encoder=lambda: enc,
        read=read,
        stream=lambda n: iter(()),
        commit=lambda hashes, vecs: committed.append(len(hashes)),
        progress=SimpleNamespace(
            advance=advanced.append,
            note=notes.append,
            begin=lambda: notes.append("begin"),
            notes=notes,
        ),
    )
    return work, enc, committed, advanced


@pytest.mark.parametrize("kind", ["transformers", "sentence-transformers"])
def test_a_transformer_on_cpu_commits_small_chunks(kind):
    work, enc, committed, advanced = _work(kind, "cpu", todo=1000)
    stats = LocalExecutor().embed(work)
    assert committed == [CPU_MODEL_CHUNK] * 3 + [1000 - 3 * CPU_MODEL_CHUNK]
    assert advanced == committed and stats.embedded == 1000
    assert enc.calls[0] == 1  # the warm-up, before the first chunk
    # what the bar says before the first chunk is done
    assert work.progress.notes == [
        "loading the model",
        f"encoding the first {CPU_MODEL_CHUNK} texts",
        "begin",  # the rate counts from here: after the load, before the first chunk
    ]


@pytest.mark.parametrize(("kind", "device"), [("transformers", "cuda"), ("static", "cpu")])
def test_fast_encoders_keep_large_chunks(kind, device):
    work, _, committed, _ = _work(kind, device, todo=5000)
    LocalExecutor().embed(work)
    assert committed == [2048, 2048, 904]


def test_a_smaller_configured_chunk_wins():
    work, _, committed, _ = _work("transformers", "cpu", todo=300, chunk=100)
    LocalExecutor().embed(work)
    assert committed == [100, 100, 100]


def test_a_fit_is_known_by_its_content_not_its_ids():
    """Predictions reuse a restored fit by key: two databases may store
    different fits under the same segmentation name, fit id and fit hash."""
    from segtool.execute.executors import Fitted

    a = Fitted.of("behaviour", (1, "fhash", '{"model": 1}', b"arrays a"))
    b = Fitted.of("behaviour", (1, "fhash", '{"model": 1}', b"arrays b"))
    assert a.key != b.key
    assert a.key == Fitted.of("behaviour", (2, "other", '{"model": 1}', b"arrays a")).key
