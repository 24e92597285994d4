"""How segtool says things: plan lines (report/plan.py) and what `show`
says sets a segment apart (report/profile.py)."""

from __future__ import annotations

import re


def test_step_counts_put_nouns_in_number():
    from segtool.report.plan import counts

    assert counts("model", {"rows": 1}) == "1 row"
    assert counts("model", {"rows": 1553, "deleted": 2}) == "1,553 rows, 2 deleted"
    one = counts(
        "text",
        {"users": 1, "new": 1, "changed": 0, "removed": 0, "unchanged": 0, "texts_changed": 1},
    )
    assert one == "1 user: 1 new, 0 changed, 0 removed, 0 unchanged (1 text differs)"
    many = counts(
        "text",
        {"users": 9, "new": 0, "changed": 9, "removed": 0, "unchanged": 0, "texts_changed": 9},
    )
    assert many.endswith("(9 texts differ)")
    assert counts("embedding", {"texts": 1, "embedded": 1, "cached": 0}) == (
        "1 distinct text: 1 to embed, 0 cached"
    )
    seg = counts(
        "segmentation", {"users": 5, "assigned": 1, "removed": 0, "moved": 0, "segments": 1}
    )
    assert seg == "5 users: 1 assigned, 0 removed, 0 moved, 1 segment"


def test_show_names_the_traits_folded_into_one():
    from segtool.report.profile import trait_str

    t = {"column": "top_category", "kind": "value", "value": "none", "share": 1.0,
         "base_share": 0.125, "same_users": [
             {"column": "orders", "kind": "value", "value": 0.0, "text": "orders 0.0"},
             {"column": "subscribed", "kind": "value", "value": "false",
              "text": "not subscribed"},
             {"column": "top_viewed_category", "kind": "value", "value": "Video Games",
              "text": "Video Games"},
             {"column": "recent_products", "kind": "contains", "value": "Kindle",
              "text": "recent products incl. Kindle"}]}  # fmt: skip
    # folded traits read as a label says them, with their column where it is not said
    assert trait_str(t) == (
        "top category: none (100% vs 12%; same users: orders 0, not subscribed, "
        "top viewed category Video Games, recent products incl. Kindle)"
    )
    date = {"column": "signup_at", "kind": "high", "text": "recent signup at",
            "median": "2023-12-15", "base_median": "2023-06-15"}  # fmt: skip
    assert trait_str(date) == "recent signup at (median 2023-12-15 vs 2023-06-15)"


def test_validate_counts_its_errors_in_number():
    from segtool.errors import ProjectError
    from segtool.report.formats import format_validation

    one = [ProjectError("bad model", path="models/a.sql", line=3)]
    assert format_validation(one, "text", 5).splitlines()[-1] == "1 error"
    assert format_validation(one * 2, "github", 5).splitlines()[-1] == "2 errors"


def test_counts_say_their_noun_and_verb_in_number():
    from segtool.words import counted

    assert counted(1, "row") == "1 row" and counted(1553, "user") == "1,553 users"
    assert counted(0, "file") == "0 files" and counted(2, "match", "matches") == "2 matches"
    assert counted(1, "user", verb=("has", "have")) == "1 user has"
    assert counted(3, "file", verb=("differs", "differ")) == "3 files differ"


def test_a_hidden_column_leaves_folded_traits_too():
    """A column marked PII since the fit was filtered as a trait's own column
    only: folded under another (`same users: country FR`) it still showed,
    and a hidden head took its folded non-PII traits away with it."""
    from segtool.report.profile import _without

    traits = [
        {"model": "m", "column": "country", "same_users": [
            {"model": "m", "column": "orders"}, {"model": "m", "column": "city"}]},
        {"model": "m", "column": "revenue", "same_users": [{"model": "m", "column": "country"}]},
        {"model": "m", "column": "plan"},
    ]  # fmt: skip
    assert _without(traits, {"m.country"}) == [
        {"model": "m", "column": "orders", "same_users": [{"model": "m", "column": "city"}]},
        {"model": "m", "column": "revenue"},
        {"model": "m", "column": "plan"},
    ]
    assert _without(traits, set()) == traits


def test_values_from_data_reach_a_terminal_without_control_characters():
    """A product name holding `ESC ] 0 ; ... BEL` set the terminal's title through
    `show`'s example texts, and column values with ESC or a newline went raw into
    the headers of `show --vs` and `score` (text and Markdown)."""
    from segtool.report.console import format_table, markdown_table
    from segtool.report.profile import cut

    evil = "Clutch \x1b]0;PWNED\x07\x1b[8mhidden\x1b[0m \x9b31m"
    for out in (
        cut(evil, 200),
        format_table(["id", "D\x1b[41mE", "F\nR|x"], [[1, 2, 3]]),
        markdown_table(["id", "D\x1b[41mE", "F\nR|x"], [[1, 2, 3]]),
    ):
        assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in out), out
    assert markdown_table(["F\nR|x"], [[1]]).splitlines()[0] == "| F R\\|x |"
    assert len(format_table(["F\nR|x"], [[1]]).splitlines()) == 3  # header, rule, one row


def test_show_writes_big_numbers_times_and_intervals_as_people_read_them():
    """A median of 1382 read '1.38e+03' (the report's heatmap: '1,382'); a
    TIME median '18:35:16.500000'; an INTERVAL '1 day, 12:00:00'."""
    from segtool.report.profile import _fmt_num, trait_str

    t = {"column": "revenue", "kind": "high", "median": 1382.4, "base_median": 95.5}
    assert trait_str(t) == "high revenue (median 1,382 vs 95.5)"
    assert _fmt_num(-25000.0) == "-25,000" and _fmt_num(12000) == "12,000"
    assert _fmt_num(999.7) == "1,000"  # not 1e+03
    assert _fmt_num(3.0) == "3" and _fmt_num(0.125) == "0.125" and _fmt_num(7) == "7"
    assert _fmt_num(True) == "True" and _fmt_num("Books") == "Books"
    assert _fmt_num("2024-03-01T10:00:00") == "2024-03-01"
    late = {"column": "usual_time", "kind": "high", "text": "late usual time",
            "median": "18:35:16.500000", "base_median": "12:00:00"}  # fmt: skip
    assert trait_str(late) == "late usual time (median 18:35:16 vs 12:00)"
    span = {"column": "active_span", "kind": "high", "median": "1 day, 12:00:00",
            "base_median": "3:00:00"}  # fmt: skip
    assert trait_str(span) == "high active span (median 1.5 days vs 3 h)"
    assert _fmt_num("-2 days, 0:00:00") == "-2 days" and _fmt_num("400 days, 0:00:00") == (
        "400 days"
    )


def test_segments_past_the_palette_get_colours_of_their_own():
    """Colours came round again after 20 segments (segment 9 had segment 1's)."""
    from segtool.report.html import _identities
    from segtool.report.html.charts import ABSENT, OUTLIER, PALETTE, _lab

    n = 60
    prof = {"segments": [{"segment_id": i, "segment": f"s{i}"} for i in [-1, *range(n)]]}
    _, colors = _identities(prof, {})
    assert colors[-1] == OUTLIER
    mine = [colors[i] for i in range(n)]
    assert mine[:20] == PALETTE  # the first 20 as before

    def delta_e(a, b):  # CIE76, in CIELAB
        return sum((x - y) ** 2 for x, y in zip(_lab(a), _lab(b))) ** 0.5

    assert len(set(mine)) == n
    for i, c in enumerate(mine[20:], start=20):
        assert re.fullmatch(r"#[0-9a-f]{6}", c), c
        others = mine[:i] + [OUTLIER, ABSENT]
        assert min(delta_e(c, o) for o in others) > 12, (i, c)
