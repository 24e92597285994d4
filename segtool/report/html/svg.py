"""Vega-Lite specs to inline SVG.

vl-convert renders a spec with Vega's own SVG renderer in-process (an
embedded JavaScript engine: no browser, no network: `allowed_base_urls=[]`
refuses any data URL). The page stays script-free: hover text is the SVG
<title> of a mark, which every browser shows as a tooltip. The output is
then made fit to inline, by walking it as XML (so every string it carries
stays escaped):

- a data mark's aria-label (Vega-Lite's `description` channel) becomes its
  <title>; consecutive marks with the same text share one <g><title> (a map's
  points of one segment: one tooltip text, not thousands)
- circle symbols become <circle> and coordinates are rounded (size)
- namespaces, ARIA roles and classes go (inline SVG in HTML needs none)
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

_CIRCLE = re.compile(
    r"M(?P<r>[0-9.]+),0A(?P=r),(?P=r),0,1,1,-(?P=r),0A(?P=r),(?P=r),0,1,1,(?P=r),0Z?$"
)
_TRANSLATE = re.compile(r"^translate\((?P<x>[-0-9.e]+),(?P<y>[-0-9.e]+)\)$")
_NUMBER = re.compile(r"-?\d+\.\d{3,}(?:e-?\d+)?")
_DROP = ("class", "role", "aria-roledescription", "aria-hidden", "version")
_INHERITED = ("fill", "fill-opacity", "stroke", "stroke-width", "stroke-opacity")

# every chart shares these (vl-convert measures text with its own fonts;
# the page asks the browser for the same generic family)
CONFIG = {
    "font": "sans-serif",
    "view": {"stroke": None},
    "background": "white",
    "axis": {
        "labelFontSize": 11,
        "titleFontSize": 11,
        "titleFontWeight": "normal",
        "titleColor": "#555",
        "labelColor": "#333",
        "gridColor": "#eee",
        "domainColor": "#bbb",
        "tickColor": "#bbb",
    },
    "legend": {
        "labelFontSize": 11,
        "titleFontSize": 11,
        "titleFontWeight": "normal",
        "labelLimit": 260,
    },
    "title": {"fontSize": 12, "fontWeight": "normal", "anchor": "start", "color": "#333"},
}


def render(spec: dict) -> str:
    """A Vega-Lite spec (inline data only) as an SVG element to inline."""
    import vl_convert as vlc

    spec = {**spec, "config": {**CONFIG, **spec.get("config", {})}}
    return inline(vlc.vegalite_to_svg(_drawable(spec), allowed_base_urls=[]))


# characters XML 1.0 cannot hold at all (control characters, U+FFFE, U+FFFF,
# lone surrogates): Vega writes them into the SVG as they are, and one in a
# user's text (a tooltip) left the report without its map. U+2028 and U+2029
# are line terminators to JavaScript: Vega-Lite turns a sort array into an
# expression, and one in a label stopped the chart ('Unexpected token
# ILLEGAL'). Replaced in data and sort alike, so the two still match.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\u2028\u2029\ufffe\uffff\ud800-\udfff]+")


def _drawable(x):
    """JSON has no NaN or infinity: they become null (Vega skips them); text
    loses the characters XML or a Vega expression cannot hold (_NOT_XML)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, str):
        return _NOT_XML.sub(" ", x)
    if isinstance(x, dict):
        return {k: _drawable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_drawable(v) for v in x]
    return x


def inline(svg: str) -> str:
    root = ET.fromstring(svg)
    for el in root.iter():
        el.tag = el.tag.rsplit("}", 1)[-1]
        for k in list(el.attrib):
            if "}" in k:  # xlink:href and the like: not used by inline charts
                del el.attrib[k]
    _tooltips(root)
    for el in root.iter():
        for k in _DROP:
            el.attrib.pop(k, None)
        if el.attrib.get("opacity") == "1":
            del el.attrib["opacity"]
        if el.attrib.get("aria-label") is not None:
            del el.attrib["aria-label"]
        if el.tag == "path":
            _to_circle(el)
        for a in ("transform", "d"):
            if a in el.attrib:
                el.attrib[a] = _NUMBER.sub(_round, el.attrib[a])
    return ET.tostring(root, encoding="unicode")


def _round(m: re.Match) -> str:
    return f"{float(m.group(0)):.2f}".rstrip("0").rstrip(".")


def _to_circle(el: ET.Element) -> None:
    m = _CIRCLE.match(el.attrib.get("d", ""))
    t = _TRANSLATE.match(el.attrib.get("transform", "translate(0,0)"))
    if not (m and t):
        return
    el.tag = "circle"
    del el.attrib["d"]
    el.attrib.pop("transform", None)
    attrs = {
        "cx": _round_num(float(t.group("x"))),
        "cy": _round_num(float(t.group("y"))),
        "r": _round_num(float(m.group("r"))),
    }
    attrs.update(el.attrib)
    el.attrib.clear()
    el.attrib.update(attrs)


def _round_num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _tooltips(root: ET.Element) -> None:
    """A data item's aria-label becomes its <title>; a run of siblings with
    the same text is wrapped in one <g> holding one <title>."""
    for parent in list(root.iter()):
        kids = list(parent)
        if not any(k.attrib.get("role") == "graphics-symbol" for k in kids):
            continue
        out: list[ET.Element] = []
        i = 0
        while i < len(kids):
            k = kids[i]
            label = (
                k.attrib.get("aria-label") if k.attrib.get("role") == "graphics-symbol" else None
            )
            if label is None:
                out.append(k)
                i += 1
                continue
            j = i + 1
            while (
                j < len(kids)
                and kids[j].attrib.get("role") == "graphics-symbol"
                and kids[j].attrib.get("aria-label") == label
            ):
                j += 1
            run = kids[i:j]
            for r in run:
                del r.attrib["aria-label"]
            if len(run) == 1:
                title = ET.Element("title")
                title.text = label
                k.insert(0, title)
                out.append(k)
            else:
                g = ET.Element("g")
                for a in _INHERITED:
                    vals = {r.attrib.get(a) for r in run}
                    if len(vals) == 1 and None not in vals:
                        g.attrib[a] = vals.pop()
                        for r in run:
                            del r.attrib[a]
                title = ET.SubElement(g, "title")
                title.text = label
                g.extend(run)
                out.append(g)
            i = j
        for k in kids:
            parent.remove(k)
        parent.extend(out)
