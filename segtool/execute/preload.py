"""Import what a run needs later while DuckDB works.

A period-2 run spends a fifth of its time importing Polars and the encoder's
libraries (SciPy, tokenizers: ~0.45 s on 2 cores) just before it renders and
embeds. DuckDB releases the GIL while it executes SQL, so a thread started
when the first model is rebuilt imports them while the merges and the text
plan run, for nothing. Only a run whose data changed starts one: a no-change
run imports none of it (issue 10's no-op goal).

Anything that forks (the two-CPU render split) calls `wait()` first: a child
forked while this thread held an import lock would inherit the lock held
forever.
"""

from __future__ import annotations

import importlib
import threading

_thread: threading.Thread | None = None


def start(modules: tuple[str, ...]) -> None:
    """Import `modules` in a background thread (once per process)."""
    global _thread
    if _thread is not None or not modules:
        return

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the step that needs it reports it, in its words
                pass

    _thread = threading.Thread(target=load, name="segtool-preload", daemon=True)
    _thread.start()


def wait() -> None:
    """Return once the background imports, if any, are done."""
    global _thread
    if _thread is not None:
        _thread.join()
        _thread = None
