"""When rendering goes to a worker pool: from 20,000 users, or 100,000 on a
two-CPU machine (where the two-CPU split is as fast below that); an explicit
SEGTOOL_RENDER_POOL_MIN decides on any machine."""

from __future__ import annotations

import pytest

from segtool.execute import render_pool


@pytest.mark.parametrize(
    ("cpus", "users", "workers"),
    [
        (2, 99_999, 1),
        (2, 100_000, 2),
        (4, 19_999, 1),
        (4, 20_000, 4),
        (16, 50_000, render_pool.MAX_WORKERS),
        (1, 500_000, 1),
    ],
)
def test_workers_by_cpus_and_users(monkeypatch, cpus, users, workers):
    monkeypatch.setattr("segtool.encoders._device.available_cpus", lambda: cpus)
    monkeypatch.setattr(render_pool, "RENDER_POOL_MIN", None)
    assert render_pool.workers_for(users) == workers


def test_an_explicit_threshold_decides_on_any_machine(monkeypatch):
    monkeypatch.setattr("segtool.encoders._device.available_cpus", lambda: 2)
    monkeypatch.setattr(render_pool, "RENDER_POOL_MIN", 1_000)
    assert render_pool.workers_for(1_000) == 2 and render_pool.workers_for(999) == 1
