"""execute/preload.py: a run whose data changed imports what rendering and
embedding need in a background thread while DuckDB runs the models; a
no-change run and a dry run start none."""

from __future__ import annotations

import sys
import threading

from segtool.execute import preload


def test_imports_in_the_background_and_wait_joins(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    seen = []
    monkeypatch.setattr(preload, "_thread", None)
    real = preload.importlib.import_module

    def spy(name):
        seen.append((name, threading.current_thread().name))
        return real(name)

    monkeypatch.setattr(preload.importlib, "import_module", spy)
    preload.start(("colorsys", "segtool_no_such_module"))  # a failed import is the step's to report
    preload.wait()
    assert "colorsys" in sys.modules
    assert seen == [
        ("colorsys", "segtool-preload"),
        ("segtool_no_such_module", "segtool-preload"),
    ]
    assert preload._thread is None
    preload.wait()  # nothing to wait for


def test_a_run_preloads_only_when_data_changed(project, monkeypatch):
    from tests.fixtures import data_files

    calls = []
    monkeypatch.setattr(preload, "start", lambda mods: calls.append(mods))
    project.cli("run")
    first = list(calls)
    calls.clear()
    project.cli("run")  # nothing changed: nothing to import
    assert calls == []
    for rel, content in data_files(changed=(5, 9), extra_users=3).items():
        project.write(rel, content)
    project.cli("run", "--dry-run")  # a dry run embeds nothing
    assert calls == []
    project.cli("run")
    assert first and set(calls) == set(first)  # once per rebuilt model (it starts one thread)
    assert calls[0][0] == "polars" and "segtool.encoders._hashing_features" in calls[0]
