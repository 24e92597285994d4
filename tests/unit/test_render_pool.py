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


class _FallingFrontier:
    """The child's frontier as render_split reads it: each reading one step
    further down a script (the child renders while this side does)."""

    def __init__(self, readings: list[int]):
        self.readings = readings
        self.calls = 0

    def frontier(self, n: int) -> int:
        value = self.readings[min(self.calls, len(self.readings) - 1)]
        self.calls += 1
        return value


def test_this_side_stops_where_it_met_the_child_however_the_frontier_falls(monkeypatch):
    """The race a loaded machine hit: the frontier read above `done` (render
    on), then lower again while the chunk's end was taken. Reading it twice
    made the chunk empty and `done` move back, so the child's texts from
    there repeated rows rendered here: 'zip() argument 3 is longer'."""
    monkeypatch.setattr(render_pool, "SPLIT_CHUNK", 4)
    rendered: list[tuple[int, int]] = []

    def render_rows(lo, hi):
        rendered.append((lo, hi))
        return [f"row {i}" for i in range(lo, hi)]

    # read twice per chunk, the third chunk saw 12 (go on) and then 4 (end there)
    reports = _FallingFrontier([60, 60, 60, 60, 12, 4])
    texts, done = render_pool._render_up_to_the_child(reports, 60, render_rows)
    assert rendered == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert texts == [f"row {i}" for i in range(16)] and done == 16
    # the child's texts from its frontier (4) on, kept from `done` as render_split does
    theirs = [f"row {i}" for i in range(4, 60)]
    assert texts + theirs[done - 4 :] == [f"row {i}" for i in range(60)]


def test_this_side_renders_everything_when_the_child_never_reports(monkeypatch):
    monkeypatch.setattr(render_pool, "SPLIT_CHUNK", 4)
    texts, done = render_pool._render_up_to_the_child(
        _FallingFrontier([10]), 10, lambda lo, hi: list(range(lo, hi))
    )
    assert texts == list(range(10)) and done == 10


def test_a_split_render_leaves_ctrl_c_as_it_found_it(monkeypatch):
    """SIGINT is blocked across the fork (a Ctrl-C there must not raise in the
    child before it ignores it): this process unblocks it again, whatever the
    child does."""
    import signal
    from types import SimpleNamespace

    import pyarrow as pa

    monkeypatch.setattr(render_pool, "SPLIT_CHUNK", 4)
    proj = SimpleNamespace(key="user_id")
    spec = SimpleNamespace(name="story", max_chars=100)
    table = pa.table({"user_id": list(range(50)), "__row_hash": list(range(50))})
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    rows, n_cut, n_empty = render_pool.render_split(
        proj, spec, table, lambda ctx: f"user {ctx['key']}"
    )
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    assert signal.SIGINT not in before
    assert [r[0] for r in rows] == list(range(50)) and [r[3] for r in rows][:2] == [
        "user 0",
        "user 1",
    ]
    assert (n_cut, n_empty) == (0, 0)


@pytest.mark.parametrize("reports_first", [True, False])
def test_a_child_that_hangs_is_killed_once_every_row_is_rendered_here(monkeypatch, reports_first):
    """A forked child can hang on a lock that another thread held at the fork;
    the run waited for its texts forever. This side now renders on while it
    waits, never idle, and kills the child when it has every row: each text
    once, in order, in about the time of rendering them here."""
    import os
    import time
    from types import SimpleNamespace

    import pyarrow as pa

    def hang(proj, spec, table, render, out_fd, stop_fd):
        if reports_first:  # says it has rendered rows 20 to 40, then never sends them
            os.write(out_fd, render_pool._REPORT.pack(b"F", 20))
        time.sleep(3600)

    monkeypatch.setattr(render_pool, "_render_from_the_end", hang)
    proj = SimpleNamespace(key="user_id")
    spec = SimpleNamespace(name="story", max_chars=100)
    table = pa.table({"user_id": list(range(40)), "__row_hash": list(range(40))})
    t0 = time.perf_counter()
    rows, _, _ = render_pool.render_split(proj, spec, table, lambda ctx: f"user {ctx['key']}")
    assert time.perf_counter() - t0 < 10
    assert [r[3] for r in rows] == [f"user {i}" for i in range(40)]
    assert [r[0] for r in rows] == list(range(40))


def test_this_side_renders_on_until_the_child_answers(monkeypatch):
    """After the sides meet, rows are rendered here until the child's texts
    arrive; they are then kept from where this side got to."""
    monkeypatch.setattr(render_pool, "SPLIT_CHUNK", 4)

    class Answers:
        polls = 0

        def poll(self):
            self.polls += 1
            return self.polls > 2  # the texts arrive at the third look

    texts, done = render_pool._render_until_the_child_answers(
        Answers(), 20, [0, 1, 2, 3], 4, lambda lo, hi: list(range(lo, hi))
    )
    assert texts == list(range(12)) and done == 12
    texts, done = render_pool._render_until_the_child_answers(
        type("Silent", (), {"poll": lambda self: False})(),
        10,
        [],
        0,
        lambda lo, hi: list(range(lo, hi)),
    )
    assert texts == list(range(10)) and done == 10


def test_a_pool_worker_killed_mid_render_is_an_error_in_words(monkeypatch):
    """A worker the CPU backstop (or the system, for memory) kills breaks the
    pool; the run says so in words instead of an internal error. (A pool
    whose worker is killed while it starts can hang in its shutdown, so the
    broken pool is a stand-in here.)"""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    import pyarrow as pa

    from segtool.errors import ProjectError

    class BrokenPool:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            fut: Future = Future()
            fut.set_exception(BrokenProcessPool("A process in the process pool was terminated"))
            return fut

    monkeypatch.setattr(render_pool, "ProcessPoolExecutor", BrokenPool)
    job = render_pool.RenderJob(
        templates={"t": ("{{ key }}", "templates/t.j2")},
        template="t",
        key="id",
        text_name="story",
        max_chars=100,
        vars={},
    )
    table = pa.table({"id": list(range(10)), "__row_hash": list(range(10))})
    with pytest.raises(ProjectError, match="text 'story': a render worker process ended") as e:
        list(render_pool.render_parallel(job, iter([table] * 6), 2))
    assert "CPU backstop" in e.value.hint


def test_a_child_ended_by_the_cpu_backstop_is_an_error_not_a_second_kill(monkeypatch):
    """The child renders rows that hold a call past the CPU backstop and is
    ended (SIGPROF): rendering them here would run the call as long again and
    end this process without a word. The run stops with a message instead."""
    import os
    import signal
    import time
    from types import SimpleNamespace

    import pyarrow as pa

    from segtool.errors import ProjectError

    def ended_by_the_backstop(proj, spec, table, render, out_fd, stop_fd):
        os.write(out_fd, render_pool._REPORT.pack(b"F", 20))  # took rows 20 to 40
        os.kill(os.getpid(), signal.SIGPROF)

    rendered = []

    def render(ctx):
        if not rendered:
            time.sleep(0.3)  # the child is gone before this side reaches its rows
        rendered.append(ctx["key"])
        return f"user {ctx['key']}"

    monkeypatch.setattr(render_pool, "_render_from_the_end", ended_by_the_backstop)
    monkeypatch.setattr(render_pool, "SPLIT_CHUNK", 4)
    proj = SimpleNamespace(key="user_id")
    spec = SimpleNamespace(name="story", max_chars=100)
    table = pa.table({"user_id": list(range(40)), "__row_hash": list(range(40))})
    with pytest.raises(
        ProjectError, match="text 'story': a user's render ran one call past the CPU"
    ):
        render_pool.render_split(proj, spec, table, render)
    assert max(rendered) < 20  # the child's rows were not rendered again here
