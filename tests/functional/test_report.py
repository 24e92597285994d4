"""`segtool docs`: one offline, script-free HTML file with charts drawn by
Vega-Lite (vl-convert), every user string escaped, PII kept out; and, marked
slow, the page in a real headless Chromium (playwright)."""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.fixtures import data_files

PAYLOAD = "</script><img src=x onerror=alert(1)>"


def two_runs(project) -> str:
    """Run, change some users' data (flows between runs), run, write the report."""
    project.cli("run")
    for rel, content in data_files(changed=tuple(range(1, 25)), extra_users=10).items():
        project.write(rel, content)
    project.cli("run")
    project.cli("docs")
    return (project.root / "target/report/index.html").read_text(encoding="utf-8")


def svgs(page: str) -> list[str]:
    """The charts (the swatches in tables are 10 px SVGs too)."""
    return [s for s in re.findall(r"<svg\b.*?</svg>", page, flags=re.S) if 'class="sw"' not in s]


def test_report_draws_every_part_offline(project):
    page = two_runs(project)
    # one file, nothing to fetch, nothing to run
    assert "<script" not in page and "https://" not in page and "http://" not in page
    links = re.findall(r"""(?:src|href)=["']?([^"'\s>]*)""", page)
    assert all(u.startswith(("#", "data:")) for u in links), links
    assert len(page.encode()) < 3_000_000
    assert "not drawn" not in page.lower()  # "Not drawn: ...", "The lineage was not drawn"
    for part in ("Lineage", "Feature profile", "Drivers", "2-D map", "Sizes over runs"):
        assert f">{part}<" in page, part
    assert "Flows in run 2" in page and "<h3>Example users</h3>" in page
    # the lineage fits its box (1,120 px), every segmentation in it
    lineage = svgs(page)[0]
    assert int(re.search(r'width="(\d+)', lineage).group(1)) <= 1130
    assert ">behaviour<" in lineage and ">lifecycle<" in lineage
    # labels, not bare ids: flows, examples, the map's legend and tooltips
    labels = [r[0] for r in project.sql("select distinct segment from segments.behaviour")]
    for label in labels:
        assert page.count(html.escape(label, quote=False)) >= 5, label
    assert re.search(r"<title>\d+: [^<]+\n[\d,]+ users \(", page)  # map: label, size, ...
    assert "“A shopper from" in page  # ... and a sample text
    # rule segmentations: the rule and what sets each segment apart
    assert "revenue &gt; 300" in page and "recency_days &gt; 120" in page
    assert "otherwise" in page
    # runs have durations
    runs = page[page.index('id="runs"') :]
    assert len(re.findall(r"\d+\.\d s</td>", runs)) == 2


def test_report_escapes_labels_texts_and_column_names(project):
    # a rule segment's name, a data value (in texts, traits and labels) and a column name
    project.edit("segments/segments.yml", "{segment: big, when:", f'{{segment: "{PAYLOAD}", when:')
    project.edit(
        "models/user_features.sql",
        "count(o.order_id) as orders,",
        f'count(o.order_id) as orders, count(o.order_id) * 2 as "{PAYLOAD.replace("1", "2")}",',
    )
    # control characters too: one in a user's text (the map's tooltip) made the
    # chart's SVG unreadable XML, and the report said "Not drawn: the map"
    for rel, content in data_files().items():
        project.write(
            rel, content.replace(",FR\n", f",FR {PAYLOAD.replace('1', '3')}\x1b[31m\x01\n")
        )
    project.cli("run")
    project.cli("docs")
    page = (project.root / "target/report/index.html").read_text(encoding="utf-8")
    assert "not drawn" not in page.lower()
    assert "<img" not in page and "<script" not in page and "onerror=alert(1)>" not in page
    for n in (1, 2, 3):  # each one is shown, escaped
        assert f"&lt;img src=x onerror=alert({n})&gt;" in page, n


def test_report_says_when_a_rule_changed_after_the_run_it_shows(project):
    """A rule edited after the last run was shown beside the sizes the old
    rule gave, and a rule reading a var was shown as raw Jinja."""
    project.edit(
        "segments/segments.yml",
        '{segment: big, when: "revenue > 300"}',
        "{segment: big, when: \"revenue > 300 and DATE '{{ var('as_of') }}' > DATE '2020-01-01'\"}",
    )
    project.cli("run")
    project.cli("docs")
    page = (project.root / "target/report/index.html").read_text(encoding="utf-8")
    assert "revenue &gt; 300 and DATE &#39;2024-07-01&#39; &gt; DATE" in page  # as it runs
    assert "changed after run" not in page
    project.edit("segments/segments.yml", "revenue > 300 and", "revenue > 5000 and")
    project.cli("docs")
    page = (project.root / "target/report/index.html").read_text(encoding="utf-8")
    assert "The definition of lifecycle changed after run 1" in page
    assert "segtool run -s lifecycle" in page


def test_report_keeps_pii_out_unless_allowed(project):
    project.edit("models/user_features.sql", "u.country,", "u.country, u.country as birth_place,")
    project.edit(
        "models/schema.yml",
        "      - name: top_category\n",
        "      - name: birth_place\n        pii: true\n      - name: top_category\n",
    )
    project.cli("run")
    project.cli("docs")
    page = (project.root / "target/report/index.html").read_text(encoding="utf-8")
    assert "birth_place" not in page and "birth place" not in page
    # a segmentation that allows it shows it (its drivers, traits); drivers
    # are measured when a segmentation is fitted or its rules change, so anew
    project.edit(
        "segments/segments.yml", "default: active", "default: active\n    allow_pii: [birth_place]"
    )
    shutil.rmtree(project.root / "target")
    project.cli("run")
    project.cli("docs")
    page = (project.root / "target/report/index.html").read_text(encoding="utf-8")
    lifecycle = page[page.index(">lifecycle <") :]
    behaviour = page[page.index(">behaviour <") : page.index(">lifecycle <")]
    assert "birth_place" in lifecycle and "birth_place" not in behaviour


def _launch(p):
    """Playwright's own Chromium, else a system one (apt's chromium), else skip."""
    try:
        return p.chromium.launch()
    except Exception as exc:  # noqa: BLE001 - its browser is not installed
        why = str(exc).splitlines()[0]
    for exe in (
        os.environ.get("SEGTOOL_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if exe:
            return p.chromium.launch(executable_path=exe)
    pytest.skip(f"no Chromium for playwright ({why}); install one: apt-get install chromium")


@pytest.mark.slow
def test_report_in_headless_chromium(project, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    project.edit("segments/segments.yml", "{segment: big, when:", f'{{segment: "{PAYLOAD}", when:')
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = _launch(p)  # first: no browser, no need to build the report
        try:
            two_runs(project)
            report = project.root / "target/report/index.html"
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.on(
                "request",
                lambda r: (
                    problems.append(f"request: {r.url}")
                    if not r.url.startswith(("file:", "data:"))
                    else None
                ),
            )
            page.goto(report.as_uri(), wait_until="load")
            assert page.locator("img").count() == 0  # the payload stayed text
            assert page.get_by_text(PAYLOAD, exact=True).first.is_visible()
            # the charts are laid out, and the lineage fits its section
            charts = page.locator(".chart svg")
            assert charts.count() >= 10
            box = page.locator("#lineage .chart svg").bounding_box()
            section = page.locator("#lineage").bounding_box()
            assert box["width"] > 300 and box["x"] + box["width"] <= section["x"] + section["width"]
            # hovering a map point shows its segment's tooltip (an SVG <title>)
            tip = page.locator("#seg-0 .chart circle").first.evaluate(
                "c => c.closest('g').querySelector(':scope > title').textContent"
            )
            assert re.match(r"\d+: .+\n[\d,]+ users \(", tip)
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
            if os.environ.get("SEGTOOL_REPORT_SCREENSHOT"):
                shutil.copy(shot, Path(os.environ["SEGTOOL_REPORT_SCREENSHOT"]))
        finally:
            browser.close()
    assert problems == []


def test_events_read_as_lines_newest_first():
    """Births (deaths) of one run on one line, ids sorted; splits and merges by id."""
    from segtool.report.html import _events

    rows = [  # as data.events returns them: newest run first
        {"run_id": 3, "event": "birth", "detail": 7},
        {"run_id": 3, "event": "split", "detail": {"segment_id": 2, "into": [2, 7]}},
        {"run_id": 3, "event": "birth", "detail": 5},
        {"run_id": 2, "event": "merge", "detail": {"segment_id": 1, "from": [1, 4]}},
        {"run_id": 2, "event": "death", "detail": 4},
        {"run_id": 1, "event": "birth", "detail": 1},
    ]
    assert _events(rows) == [
        "run 3: segments 5, 7 appeared",
        "run 3: segment 2 split into 2, 7",
        "run 2: segments 1, 4 merged into 1",
        "run 2: segment 4 ended",
        "run 1: segment 1 appeared",
    ]


def test_lineage_layout_fits_and_keeps_edges_out_of_boxes():
    from segtool.report.html import layout

    # the example project's shape: 7 columns, edges that skip columns, an
    # encoder used late, unused encoders
    parents = {
        "s1": [], "s2": [], "s3": [], "s4": [],
        "v1": ["s1"], "v2": ["s2"], "v3": ["s3"], "v4": ["s4"],
        "enriched": ["v2", "v3"], "features": ["v4", "enriched", "v1", "v3"],
        "rfm": ["features"], "acq": ["features"], "rules": ["features"],
        "tiers": ["rfm"], "text": ["features"], "enc": [], "unused": [],
        "emb": ["text", "enc"], "clusters": ["emb", "rfm"],
    }  # fmt: skip
    kinds = {u: "model" for u in parents}
    kinds.update({f"s{i}": "source" for i in range(1, 5)}, enc="encoder", unused="encoder")
    lay = layout.lineage(list(parents), parents, kinds, max_width=1120)
    assert lay.width <= 1120 and lay.node_w >= layout.NODE_W_MIN
    assert lay.boxes["enc"].x == lay.boxes["text"].x  # next to its embedding
    half = layout.NODE_H / 2
    for pts in lay.edges:
        for (x1, y1), (x2, y2) in zip(pts, pts[1:]):
            assert x2 > x1
            if abs(x2 - x1 - lay.node_w) < 1e-6:  # through a column: a lane of its own
                assert y1 == y2
                for b in lay.boxes.values():
                    if abs(b.x - x1) < 1e-6:
                        assert abs(b.y - y1) >= half + layout.LANE_H / 2, (b.id, y1)
            else:  # across the gap between two columns: no box there
                for b in lay.boxes.values():
                    assert b.x + lay.node_w <= x1 + 1e-6 or b.x >= x2 - 1e-6, b.id
    # boxes of one column never overlap
    for a in lay.boxes.values():
        for b in lay.boxes.values():
            if a.id < b.id and a.x == b.x:
                assert abs(a.y - b.y) >= 2 * half


def test_sankey_bands_fill_their_nodes():
    from segtool.report.html import layout

    flows = [("a", "a", 50), ("a", "b", 10), ("b", "b", 30), ("new", "a", 5), ("b", "gone", 5)]
    sk = layout.sankey(flows, ["a", "b", "new"], ["a", "b", "gone"], height=300)
    for side, nodes in ((0, sk.left), (1, sk.right)):
        for n, (top, bottom) in nodes.items():
            bands = [b for b in sk.bands if (b.source if side == 0 else b.target) == n]
            ys = sorted(b.y0 if side == 0 else b.y1 for b in bands)
            assert abs(ys[0][0] - top) < 1e-6 and abs(ys[-1][1] - bottom) < 1e-6, n
            assert all(abs(p[1] - q[0]) < 1e-6 for p, q in zip(ys, ys[1:]))  # stacked
