"""What the HTML report (`segtool docs`) reads and says: events, sizes,
profiles and the map, against the cases a review found wrong."""

from __future__ import annotations

import html
import re

import duckdb

from tests.fixtures import data_files


def _page(pd) -> str:
    pd.cli("docs")
    return (pd.root / "target/report/index.html").read_text(encoding="utf-8")


def _con(pd):
    return duckdb.connect(str(pd.db), read_only=True)


def _section(page: str, name: str) -> str:
    start = page.index(f"<h2>{name} ")
    end = page.find("<section", start)
    return page[start : end if end > 0 else len(page)]


def _lifecycle_profile(pd, columns: str) -> dict:
    """lifecycle's feature profile (data.z_profile) after a run with
    `columns` (SQL) added to user_features after its orders column."""
    from segtool.execute.segment import drivers
    from segtool.report.html import data

    pd.edit(
        "models/user_features.sql",
        "count(o.order_id) as orders,",
        f"count(o.order_id) as orders, {columns},",
    )
    pd.cli("run")
    con = _con(pd)
    try:
        found, _ = drivers.load(con, "lifecycle")
        return data.z_profile(con, "user_id", "lifecycle", found)
    finally:
        con.close()


def test_events_list_every_event_of_the_last_runs():
    """`LIMIT 8` cut the event rows before they were grouped: a refit to
    k=22 (18 births and a split) was listed as 8 births, no split, and the
    line of run 1 was gone."""
    from segtool.report.html import _events, data

    con = duckdb.connect()
    con.execute("CREATE SCHEMA _segtool")
    con.execute(
        "CREATE TABLE _segtool.segment_events "
        "(segmentation VARCHAR, run_id INTEGER, event VARCHAR, detail JSON)"
    )
    rows = [("s", 1, "birth", str(i)) for i in (2, 0, 1, 3)]
    rows += [("s", 2, "birth", str(i)) for i in range(21, 3, -1)]  # 18 births
    rows += [("s", 2, "split", '{"segment_id": 3, "into": [3, 4, 5]}')]
    rows += [("other", 2, "birth", "99")]
    con.executemany("INSERT INTO _segtool.segment_events VALUES (?, ?, ?, ?)", rows)
    got = data.events(con, "s")
    assert len(got) == 23  # every event of the segmentation
    assert [(e["run_id"], e["event"]) for e in got] == sorted(
        [(e["run_id"], e["event"]) for e in got], key=lambda x: (-x[0], x[1])
    )
    assert _events(got) == [
        "run 2: segments 4, 5, 6, 7, 8, 9, 10, 11 ... and 10 more appeared",
        "run 2: segment 3 split into 3, 4, 5",
        "run 1: segments 0, 1, 2, 3 appeared",
    ]
    # the last runs' events, all of each: an older run's are left out whole
    for run in range(3, 2 + data.EVENT_RUNS):
        con.execute("INSERT INTO _segtool.segment_events VALUES ('s', ?, 'death', '1')", [run])
    lines = _events(data.events(con, "s"))
    assert not any(x.startswith("run 1:") for x in lines)
    assert len(lines) == data.EVENT_RUNS + 1 and lines[-1] == "run 2: segment 3 split into 3, 4, 5"
    con.close()


def test_sizes_over_runs_draw_a_segment_that_fell_to_zero(built):
    """A rule that matches nobody after an edit: the segment is still live,
    with 0 users, but the chart's line stopped at the run before."""
    from segtool.report.html import data

    built.edit("segments/segments.yml", '"revenue > 300"', '"revenue > 100000"')
    built.cli("run")
    con = _con(built)
    try:
        big = con.execute(
            "SELECT segment_id FROM _segtool.segment_catalog "
            "WHERE segmentation = 'lifecycle' AND label = 'big'"
        ).fetchall()[0][0]
        runs = data.segment_runs(con, data.history_runs(con, "lifecycle"))
        sizes = data.sizes_over_runs(con, "lifecycle", runs)
    finally:
        con.close()
    assert runs == [1, 2]
    got = {r["run"]: r["users"] for r in sizes if r["segment_id"] == big}
    assert got[1] > 0 and got[2] == 0
    page = _page(built)
    assert re.search(rf"<title>{big}: big\nrun 2 \([^)]*\): 0 users</title>", page)


_LS, _PS = "\u2028", "\u2029"


def test_charts_draw_line_and_paragraph_separators_and_noncharacters(built):
    """U+2028/U+2029 in a label stopped the heatmap (the sort array is an
    expression to Vega: 'Unexpected token ILLEGAL'); U+FFFE/U+FFFF in a text
    stopped the map (not well-formed XML)."""
    built.edit("segments/segments.yml", "{segment: big, when:", '{segment: "big\\u2028one", when:')
    for rel, content in data_files().items():
        built.write(rel, content.replace(",FR\n", f",FR{_PS}x\ufffe\uffff\n"))
    built.cli("run")
    page = _page(built)
    assert "not drawn" not in page.lower()
    lifecycle = _section(page, "lifecycle")
    assert "Feature profile" in lifecycle and "Sizes over runs" in lifecycle
    assert "big one" in lifecycle  # the chart says it with a space
    behaviour = _section(page, "behaviour")
    assert "2-D map" in behaviour
    assert re.search(r"<title>[^<]*from FR x +with", behaviour)  # the map's tooltip


def test_charts_replace_every_character_xml_cannot_hold():
    from segtool.report.html.svg import _drawable

    spec = {"a": ["x\u2028y", "x\u2029y", "x\ufffey", "x\uffffy", "x\ud800y", "x\x01y"]}
    assert _drawable(spec) == {"a": ["x y"] * 6}
    assert _drawable({"s": "ok \U0001f600 \u00e9"}) == {"s": "ok \U0001f600 \u00e9"}


def test_feature_profile_shows_an_all_null_mean_as_absent(project):
    """A segment whose members all have NULL (no orders, no last order) was
    drawn at z 0 in the neutral colour: 'mean n/a ... (z +0.00)'."""
    from segtool.report.html.charts import ABSENT

    prof = _lifecycle_profile(
        project, "CASE WHEN sum(o.amount) > 300 THEN NULL ELSE max(o.amount) END as top_amount"
    )
    (big,) = project.sql(
        "SELECT DISTINCT segment_id FROM segments.lifecycle WHERE segment = 'big'"
    )[0]
    cells = {c["segment_id"]: c for c in prof["cells"] if c["column"]["column"] == "top_amount"}
    assert cells[big]["z"] is None and cells[big]["mean"] == "n/a"
    assert all(c["z"] is not None for s, c in cells.items() if s != big)
    heat = _section(_page(project), "lifecycle")
    tip = re.search(r'<path [^>]*fill="([^"]+)"[^>]*><title>\d+: big\ntop_amount: mean n/a', heat)
    assert tip and tip.group(1) == ABSENT
    assert "(z +0.00)" not in heat and ">n/a<" in heat


def test_feature_profile_means_leave_nan_and_infinity_out(project):
    """One NaN in a DOUBLE column (DuckDB allows them) made every mean of it
    'nan' in the heatmap ('mean nan vs nan overall (z +nan)')."""
    prof = _lifecycle_profile(
        project,
        "CASE WHEN any_value(u.user_id) % 5 = 0 THEN 'nan'::DOUBLE "
        "ELSE coalesce(sum(o.amount), 0) END as rev_nan",
    )
    cells = [c for c in prof["cells"] if c["column"]["column"] == "rev_nan"]
    assert cells and all(c["mean"] != "nan" and c["overall"] != "nan" for c in cells)
    assert all(c["z"] is None or c["z"] == c["z"] for c in cells)  # no NaN z


def test_feature_profile_reads_times_and_intervals(project):
    """TIME columns read n/a (no cast to a number) and INTERVAL columns raw
    seconds."""
    prof = _lifecycle_profile(
        project,
        "make_time(6 + CAST(sum(o.amount) AS BIGINT) % 12, CAST(sum(o.amount) AS BIGINT) % 60, "
        "0.5) as usual_time, max(o.ordered_at) - min(o.ordered_at) as active_span",
    )
    by = {}
    for c in prof["cells"]:
        by.setdefault(c["column"]["column"], []).append(c)
    assert {"usual_time", "active_span"} <= set(by)
    for c in by["usual_time"]:
        assert re.fullmatch(r"\d\d:\d\d(:\d\d)?", c["mean"]), c["mean"]
        assert re.fullmatch(r"\d\d:\d\d(:\d\d)?", c["overall"]), c["overall"]
    assert any(abs(c["z"]) > 0.1 for c in by["usual_time"])
    for c in by["active_span"]:
        assert re.fullmatch(r"[\d.,]+ days?", c["mean"]), c["mean"]


def test_map_leaves_out_users_the_inputs_no_longer_have(built):
    """After a partial run that rebuilt the model without some users, the map
    failed for every clustering: 'keys has 60 entries but the frame has 40
    rows'. It draws the users the inputs still have, and says how many it
    left out and why."""
    for rel, content in data_files().items():
        lines = content.splitlines()
        keep = [lines[0]] + [
            x for x in lines[1:] if int(x.split(",")[0 if rel.endswith("users.csv") else 1]) > 20
        ]
        built.write(rel, "\n".join(keep) + "\n")
    built.cli("run", "-s", "+user_features")
    page = _page(built)
    behaviour = _section(page, "behaviour")
    assert "not drawn" not in behaviour.lower() and "2-D map" in behaviour
    assert "40 users (a fixed sample)" in behaviour
    note = re.search(r"20 users[^<]*left out[^<]*", behaviour)
    assert note and "user_features" in note.group(0), behaviour[-3000:]
    assert "segtool run -s behaviour" in html.unescape(note.group(0))


def test_a_segmentation_not_run_yet_has_its_section(built):
    """A segmentation added after the last run had no section and no link."""
    built.edit(
        "segments/segments.yml",
        "default: active",
        "default: active\n"
        "  - name: tiers\n"
        "    model: user_features\n"
        "    rules:\n"
        '      - {segment: many, when: "orders > 3"}\n'
        "    default: few",
    )
    page = _page(built)
    nav = page[page.index("<nav>") : page.index("</nav>")]
    anchor = re.search(r'<a href="#([^"]+)">tiers</a>', nav)
    assert anchor
    section = page[page.index(f'<section id="{anchor.group(1)}">') :]
    section = section[: section.index("</section>")]
    assert "not run yet" in section and "segtool run -s tiers" in section
