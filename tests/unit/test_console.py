"""Progress you can follow: a moving bar with rate and time left on a
terminal, plain lines at a steady interval in a CI log, nothing with -q."""

import io
import threading
import time

import click

from segtool.report.console import Reporter


def test_plain_progress_prints_lines_while_work_runs(monkeypatch):
    monkeypatch.setenv("SEGTOOL_PROGRESS_INTERVAL", "0.05")
    out = io.StringIO()
    rep = Reporter(stream=out, color=False)
    with rep.progress("embed story with minilm", 400, "texts") as bar:
        time.sleep(0.12)  # a model loading: lines appear before anything is done
        for _ in range(4):
            threading.Thread(target=bar.advance, args=(50,)).start()
            time.sleep(0.06)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    assert lines[0].startswith("  embed story with minilm: 0/400 (0%)") and "starting" in lines[0]
    moving = [ln for ln in lines if "texts/s" in ln]
    assert moving and "eta " in moving[-1] and "elapsed" in moving[-1]
    assert any(
        "/400 (" in ln and not ln.startswith("  embed story with minilm: 0/") for ln in moving
    )
    n = len(lines)
    time.sleep(0.15)
    assert len(out.getvalue().splitlines()) == n  # the ticker stopped with the stage


def test_plain_progress_says_what_it_waits_for_and_rates_only_the_work(monkeypatch):
    """A transformer loads for seconds before its first chunk: the line says
    so, and the rate counts from when encoding began, not from the loading."""
    import segtool.report.console as console

    monkeypatch.setenv("SEGTOOL_PROGRESS_INTERVAL", "60")  # lines asked for, not ticked
    clock = [0.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    rep = Reporter(stream=io.StringIO(), color=False)
    with rep.progress("embed story with minilm", 400, "texts") as bar:
        bar.note("loading the model")
        clock[0] = 5.0
        assert bar.line().endswith("0:05 elapsed, loading the model")
        clock[0] = 100.0  # the model took 100 s to load
        bar.begin()
        clock[0] = 110.0  # then 200 texts took 10 s
        bar.advance(200)
        line = bar.line()
    assert "200/400 (50%), 20 texts/s, 1:50 elapsed, eta 0:10" in line, line


def test_plain_progress_stops_the_stage_when_its_output_is_gone(monkeypatch):
    """`segtool run | head`: the ticker's line meets a closed pipe. It stops
    ticking without a thread traceback, and the stage's next step raises the
    error in the main thread (the CLI then exits 141)."""

    class Gone(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setenv("SEGTOOL_PROGRESS_INTERVAL", "0.01")
    crashed = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    rep = Reporter(stream=Gone(), color=False)
    with rep.progress("embed story", 10, "texts") as bar:
        deadline = time.monotonic() + 5
        while bar._broken is None and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            bar.advance(1)
        except BrokenPipeError:
            raised = True
        else:
            raised = False
    assert raised and not crashed


def test_quiet_and_empty_stages_print_nothing(monkeypatch):
    monkeypatch.setenv("SEGTOOL_PROGRESS_INTERVAL", "0.01")
    out = io.StringIO()
    with Reporter(stream=out, quiet=True).progress("embed", 10) as bar:
        bar.advance(10)
        time.sleep(0.05)
    with Reporter(stream=out, color=False).progress("embed", 0) as bar:
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_terminal_progress_shows_rate_and_eta():
    out = io.StringIO()
    rep = Reporter(stream=out, color=True)
    with rep.progress("render story", 100, "users") as bar:
        for _ in range(10):
            bar.advance(10)
            time.sleep(0.02)
        rep.console.file.flush()
    text = out.getvalue()
    assert "render story" in text and "users/s" in text and "eta" in text


def test_piped_marks_and_warnings_follow_force_color_and_no_color(monkeypatch):
    """Piped (not a TTY): plain lines, coloured with FORCE_COLOR, never with NO_COLOR."""

    def emit() -> str:
        out = io.StringIO()
        rep = Reporter(stream=out)
        assert not rep.rich
        rep.mark("PASS", "not_null_user_id")
        rep.mark("FAIL", "unique_user_id")
        rep.warn("careful")
        return out.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    plain = "PASS  not_null_user_id\nFAIL  unique_user_id\nwarning: careful\n"
    assert emit() == plain

    monkeypatch.setenv("FORCE_COLOR", "1")
    forced = emit()
    assert click.unstyle(forced) == plain
    pass_, fail, warning = forced.splitlines()
    assert pass_.startswith("\x1b[32m") and pass_.endswith("PASS \x1b[0m not_null_user_id")
    assert fail.startswith("\x1b[31m") and fail.endswith("FAIL \x1b[0m unique_user_id")
    assert warning.startswith("\x1b[33m") and warning.endswith("warning: \x1b[0mcareful")

    monkeypatch.setenv("NO_COLOR", "1")  # NO_COLOR wins over FORCE_COLOR
    assert emit() == plain


def test_piped_error_is_red_with_force_color_and_plain_without(tmp_path):
    import subprocess
    import sys

    def run(**env):
        import os

        e = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
        e.update(env)
        cmd = [sys.executable, "-m", "segtool", "run", "--project-dir", str(tmp_path)]
        return subprocess.run(cmd, capture_output=True, text=True, env=e).stderr

    assert "\x1b[" in run(FORCE_COLOR="1") and "no segtool_project.yml" in run(FORCE_COLOR="1")
    plain = run()
    assert "\x1b[" not in plain and plain.startswith("error: no segtool_project.yml")
    assert "\x1b[" not in run(FORCE_COLOR="1", NO_COLOR="1")


def _columns(text: str) -> int:
    """Terminal columns, counted here apart from the code under test."""
    import unicodedata

    return sum(
        0
        if unicodedata.category(c) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(c) in "WF"
        else 1
        for c in text
    )


def test_tables_line_up_with_wide_characters():
    """A CJK label or an emoji takes two terminal columns: padded by len(),
    every column after it sat one column per wide character too far left."""
    from segtool.report.console import format_table

    def at(line: str, cell: str) -> int:
        """The display column `cell` starts at in `line`."""
        return _columns(line[: line.index(cell)])

    rows = [[1, "日本語 label", "1,024"], [2, "🎮 gamers", "7"], [3, "plain", "12"]]
    text = format_table(["id", "segment", "users"], rows)
    head, rule, *body = text.splitlines()
    assert len(body) == 3 and rule == "--  ------------  -----", text
    for line, (_, segment, users) in zip(body, rows):
        assert at(line, segment) == at(head, "segment") == 4, text
        assert at(line, users) == at(head, "users") == 18, text

    # narrowed to a terminal's width, wide cells wrap by columns, not characters
    long = "日本語のラベル とても長い セグメント名 🎮🎮🎮 gamers"
    text = format_table(["id", "segment", "users"], [[1, long, "1,024"]], width=30)
    head, rule, first, *more = text.splitlines()
    assert more and all(_columns(line) <= 30 for line in text.splitlines()), text
    assert at(first, "日本語") == at(head, "segment") and at(first, "1,024") == at(head, "users")
    for line in more:  # continuation lines: the segment column's, nothing else
        assert _columns(line) - _columns(line.lstrip()) == at(head, "segment"), text
    said = "".join(line.strip() for line in [first[4:].rsplit("  ", 1)[0], *more])
    assert said.replace(" ", "") == long.replace(" ", "")


def test_display_width_and_wrap():
    from segtool.report.console import display_width, pad, wrap

    assert display_width("日本語 label") == 12 and display_width("🎮 gamers") == 9
    assert display_width("e\u0301") == 1  # e and a combining acute accent
    assert pad("日本", 6) == "日本  " and pad("abc", 2) == "abc"
    assert wrap("日本語 日本語", 7) == ["日本語", "日本語"]
    assert wrap("日本語日本語", 7) == ["日本語", "日本語"]  # a word wider than a line
    assert wrap("plain words wrap as before", 10) == ["plain", "words wrap", "as before"]
