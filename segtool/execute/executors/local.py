"""The local executor: everything in the segtool process."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from segtool.execute.executors import EmbedStats, EmbedWork, Fitted, chunk_rows


class LocalExecutor:
    kind = "local"
    workers = 1

    def describe(self) -> str:
        return "local"

    def embed(self, work: EmbedWork) -> EmbedStats:
        """Chunk by chunk: one chunk is encoded (torch, tokenizers and
        model2vec release the GIL; a GPU works on its own) while the previous
        one is committed."""
        stats = EmbedStats()
        if not work.todo:
            return stats
        bar = work.progress
        # what the bar says before its first chunk (a reporter passed to
        # Project.run may have bars that only advance)
        note = getattr(bar, "note", lambda status: None)
        note("loading the model")
        enc = work.local_encoder()
        enc.encode(["warm up"])  # load the model now, so texts/s measures encoding only
        chunk = chunk_rows(work, on_cpu=enc.device == "cpu")
        note(f"encoding the first {min(chunk, work.todo):,} texts")
        getattr(bar, "begin", lambda: None)()

        def encode(texts: list[str]):
            t = time.perf_counter()
            vecs = enc.encode(texts)
            return vecs, time.perf_counter() - t

        def commit(hashes, future) -> None:
            vecs, seconds = future.result()
            stats.encode_seconds += seconds
            work.commit(hashes, vecs)
            stats.embedded += len(hashes)
            if bar is not None:
                bar.advance(len(hashes))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtool-encode") as pool:
            pending = None
            for lo in range(1, work.todo + 1, chunk):
                hashes, texts = work.read(lo, lo + chunk)
                future = pool.submit(encode, texts)
                if pending is not None:
                    commit(*pending)
                pending = (hashes, future)
            if pending is not None:
                commit(*pending)
        stats.device = enc.device
        if stats.encode_seconds > 0:
            stats.texts_per_s = round(stats.embedded / stats.encode_seconds, 1)
        return stats

    def predict(
        self, fitted: Fitted, chunks: Iterable[tuple[Any, list, np.ndarray]]
    ) -> Iterator[tuple[Any, np.ndarray, np.ndarray, np.ndarray]]:
        from segtool.execute.executors.predict import predict_chunk

        for tag, blocks, keys in chunks:
            labels, dist, conf = predict_chunk(fitted, blocks, keys)
            yield tag, labels, dist, conf
