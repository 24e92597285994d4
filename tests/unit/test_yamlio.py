"""YAML reading with line marks: positions of keys and list items, duplicate
keys, malformed YAML with numbered context, merge keys, encoding errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from segtool.errors import ProjectError
from segtool.project.yamlio import load_yaml, mark_for, parse_yaml

DOC = """\
name: shop
segmentations:
  - name: behaviour
    cluster:
      k: 6
  - name: lifecycle
    rules:
      - {segment: vip, when: "revenue > 1000"}
      - segment: lapsed
        when: "recency_days > 180"
"""


def test_data_is_plain_python():
    data, _ = parse_yaml(DOC, "s.yml")
    assert data == {
        "name": "shop",
        "segmentations": [
            {"name": "behaviour", "cluster": {"k": 6}},
            {
                "name": "lifecycle",
                "rules": [
                    {"segment": "vip", "when": "revenue > 1000"},
                    {"segment": "lapsed", "when": "recency_days > 180"},
                ],
            },
        ],
    }


def test_marks_of_keys_and_list_items():
    _, marks = parse_yaml(DOC, "s.yml")
    # keys: (line, col) of the key itself, 1-based
    assert marks[("name",)] == (1, 1)
    assert marks[("segmentations",)] == (2, 1)
    assert marks[("segmentations", 0, "cluster")] == (4, 5)
    assert marks[("segmentations", 0, "cluster", "k")] == (5, 7)
    assert marks[("segmentations", 1, "name")] == (6, 5)
    # list items: where the item's node starts (after "- ")
    assert marks[("segmentations", 0)] == (3, 5)
    assert marks[("segmentations", 1)] == (6, 5)
    # a flow mapping item starts at its "{"
    assert marks[("segmentations", 1, "rules", 0)] == (8, 9)
    assert marks[("segmentations", 1, "rules", 0, "when")] == (8, 24)
    assert marks[("segmentations", 1, "rules", 1, "when")] == (10, 9)
    assert marks[()] == (1, 1)


def test_mark_for_falls_back_to_nearest_enclosing_key():
    _, marks = parse_yaml(DOC, "s.yml")
    assert mark_for(marks, ("segmentations", 0, "cluster", "k")) == (5, 7)
    # a key that is not in the file (e.g. a missing one): its parent's mark
    assert mark_for(marks, ("segmentations", 0, "cluster", "method")) == (4, 5)
    assert mark_for(marks, ("segmentations", 7, "x")) == (2, 1)
    assert mark_for({}, ("a",)) == (None, None)


def test_empty_document_is_none():
    assert parse_yaml("", "e.yml") == (None, {})
    assert parse_yaml("# only a comment\n", "e.yml") == (None, {})


def test_duplicate_key_error_points_at_second_occurrence():
    text = "a: 1\nb:\n  c: 2\n  d: 3\n  c: 4\n"
    with pytest.raises(ProjectError) as ei:
        parse_yaml(text, "dup.yml")
    e = ei.value
    assert e.message == "duplicate key 'c'"
    assert (e.path, e.line, e.col) == ("dup.yml", 5, 3)
    assert "remove or rename" in e.hint
    assert e.format().startswith("dup.yml:5:3: duplicate key 'c'")


def test_duplicate_top_level_key():
    with pytest.raises(ProjectError) as ei:
        parse_yaml("name: a\nvars: {}\nname: b\n", "p.yml")
    assert (ei.value.line, ei.value.col) == (3, 1)


def test_malformed_yaml_shows_numbered_context_with_marker():
    text = "a: 1\nb: [1, 2\nc: 3\nd: 4\ne: 5\nf: 6\n"
    with pytest.raises(ProjectError) as ei:
        parse_yaml(text, "bad.yml")
    e = ei.value
    assert (e.path, e.line, e.col) == ("bad.yml", 3, 2)
    assert e.message.startswith("malformed YAML: expected ',' or ']'")
    lines = e.message.splitlines()[1:]
    # two lines either side of line 3, the error line marked with ">"
    assert lines == [
        "      1 | a: 1",
        "      2 | b: [1, 2",
        "  >   3 | c: 3",
        "      4 | d: 4",
        "      5 | e: 5",
    ]
    assert "indentation" in e.hint


def test_bad_indentation_reports_line_and_column():
    with pytest.raises(ProjectError) as ei:
        parse_yaml("a: 1\n  b: 2\n", "ind.yml")
    e = ei.value
    assert (e.line, e.col) == (2, 4)
    assert "mapping values are not allowed here" in e.message
    assert e.message.endswith("      1 | a: 1\n  >   2 |   b: 2")


def test_merge_keys_are_resolved():
    text = "base: &b {x: 1, y: 2}\nz:\n  <<: *b\n  w: 3\n"
    data, marks = parse_yaml(text, "m.yml")
    assert data["z"] == {"x": 1, "y": 2, "w": 3}
    assert "<<" not in data["z"]
    assert marks[("z", "w")] == (4, 3)


def test_explicit_key_overrides_merged_key():
    text = "base: &b {x: 1, y: 2}\nz:\n  <<: *b\n  x: 3\n"
    data, _ = parse_yaml(text, "m.yml")
    assert data["z"] == {"x": 3, "y": 2}


def test_anchors_and_aliases():
    data, _ = parse_yaml("a: &v [1, 2]\nb: *v\n", "a.yml")
    assert data == {"a": [1, 2], "b": [1, 2]}


def test_non_scalar_mapping_key_is_an_error():
    with pytest.raises(ProjectError) as ei:
        parse_yaml("? [1, 2]\n: x\n", "k.yml")
    assert ei.value.message == "mapping keys must be plain scalars"
    assert (ei.value.line, ei.value.col) == (1, 3)


def test_unsafe_tag_on_a_scalar_is_refused():
    with pytest.raises(ProjectError) as ei:
        parse_yaml("a: !!python/name:os.system\n", "u.yml")
    assert (ei.value.line, ei.value.col) == (1, 4)
    assert "could not determine a constructor" in ei.value.message


def test_unsafe_tag_on_a_sequence_is_refused():
    with pytest.raises(ProjectError) as ei:
        parse_yaml("a: !!python/object/apply:os.system ['echo hi']\n", "u.yml")
    assert ei.value.line == 1


def test_scalar_types_follow_yaml_1_1_safe_loader():
    data, _ = parse_yaml("i: 3\nf: 0.5\nb: true\nn: null\ns: '007'\n", "t.yml")
    assert data == {"i": 3, "f": 0.5, "b": True, "n": None, "s": "007"}


def test_load_yaml_reads_file_and_uses_rel_path(tmp_path):
    p = tmp_path / "x.yml"
    p.write_text("a:\n  b: 1\n", encoding="utf-8")
    data, marks = load_yaml(p, "models/x.yml")
    assert data == {"a": {"b": 1}}
    assert marks[("a", "b")] == (2, 3)
    p.write_text("a: 1\na: 2\n", encoding="utf-8")
    with pytest.raises(ProjectError) as ei:
        load_yaml(p, "models/x.yml")
    assert ei.value.format().startswith("models/x.yml:2:1:")


def test_load_yaml_non_utf8(tmp_path):
    p = tmp_path / "latin.yml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ProjectError) as ei:
        load_yaml(p, "latin.yml")
    e = ei.value
    assert e.message == "file is not valid UTF-8 (byte 9)"
    assert e.path == "latin.yml"
    assert "UTF-8" in e.hint


def test_load_yaml_missing_file(tmp_path):
    with pytest.raises(ProjectError) as ei:
        load_yaml(tmp_path / "nope.yml", "nope.yml")
    assert ei.value.message.startswith("cannot read file")
    assert ei.value.path == "nope.yml"


def test_libyaml_and_pure_python_parsers_give_the_same_data_and_marks():
    """parse_yaml parses with libyaml when PyYAML has it (fast), and with
    the pure-Python parser only when a file is rejected: both must read every
    file a project has into the same data and the same line marks."""
    import yaml

    from segtool.project import yamlio

    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml: only the pure-Python parser")
    assert yamlio._Loader is yaml.CSafeLoader
    root = Path(__file__).resolve().parents[2]
    texts = [
        p.read_text() for d in ("examples", "project_template") for p in (root / d).rglob("*.yml")
    ]
    texts.append("base: &b {k: 3, x: [1, 2]}\nuse:\n  <<: *b\n  k: 4\nwhen: 2024-01-01\nyes: on\n")
    assert len(texts) > 5
    for text in texts:
        fast = yamlio._parse(yaml.CSafeLoader(text), text, "f.yml")
        slow = yamlio._parse(yaml.SafeLoader(text), text, "f.yml")
        assert fast == slow


def test_aliases_that_multiply_or_contain_themselves_are_refused():
    """Six lines of aliases of aliases (238 bytes) made 10^6 values in 5 s and
    310 MB, and `a: &a [*a]` ended in an internal RecursionError."""
    import pytest

    from segtool.errors import ProjectError
    from segtool.project.yamlio import parse_yaml

    lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcde", "bcdef", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    with pytest.raises(ProjectError, match="expands to more than 200,000 values"):
        parse_yaml("\n".join(lines), "bomb.yml")
    with pytest.raises(ProjectError, match="nests deeper than 100 levels"):
        parse_yaml("a: &a [*a]\n", "loop.yml")
    # ~1000 brackets: libyaml refuses, the pure-Python parser recursed
    with pytest.raises(ProjectError, match="nests deeper than 100 levels"):
        parse_yaml("a: " + "[" * 1200 + "]" * 1200 + "\n", "deep.yml")
    with pytest.raises(ProjectError, match="a value cannot be read"):
        parse_yaml("a: " + "9" * 5000 + "\n", "digits.yml")
    # aliases as people use them still work
    data, _ = parse_yaml("base: &b {k: 3}\nseg:\n  <<: *b\n  seed: 7\n", "ok.yml")
    assert data["seg"] == {"k": 3, "seed": 7}


def test_a_project_s_yaml_files_share_one_budget_of_values(tmp_path):
    """Each file stayed under 200,000 values, so a hundred of them took 26 s
    to refuse one by one: one project load reads at most 1,000,000 values in
    all its files and stops at the file that reaches it, with one error."""
    import time

    from segtool.project.loader import load_project
    from segtool.project.yamlio import MAX_PROJECT_VALUES, project_budget
    from tests.conftest import write_files
    from tests.fixtures import tiny_project_files

    many = "a: &a [" + ",".join(["1"] * 400) + "]\nb: [" + ",".join(["*a"] * 490) + "]\n"
    with project_budget():
        for i in range(MAX_PROJECT_VALUES // 196_401):
            parse_yaml(many, f"f{i}.yml")
        with pytest.raises(ProjectError, match="YAML files expand to more than 1,000,000"):
            parse_yaml(many, "last.yml")
    parse_yaml(many, "alone.yml")  # outside a project load: the file's own bound only
    files = tiny_project_files()
    files.update({f"models/bomb{i:02d}.yml": "models: []\n" + many for i in range(40)})
    root = write_files(tmp_path / "p", files)
    t0 = time.monotonic()
    with pytest.raises(ProjectError) as err:
        load_project(root)
    assert time.monotonic() - t0 < 10
    assert "models/bomb05.yml:2: the project's YAML files expand to more than 1,000,000" in str(
        err.value.format()
    )
    load_project(write_files(tmp_path / "ok", tiny_project_files()))  # the budget is per load


def test_a_long_base_60_number_is_refused_before_it_is_read():
    """PyYAML reads YAML 1.1's 1:30:00 in quadratic time: 32,000 colons took
    0.5 s, a million would take minutes."""
    import time

    t0 = time.monotonic()
    with pytest.raises(ProjectError, match="a base-60 number of 63,999 characters"):
        parse_yaml("a: " + ":".join(["1"] * 32000) + "\n", "x.yml")
    with pytest.raises(ProjectError, match="base-60"):
        parse_yaml("? " + ":".join(["1"] * 32000) + "\n: 3\n", "x.yml")
    assert time.monotonic() - t0 < 0.3
    data, _ = parse_yaml('a: 1:30:00\nb: "1:2:3"\n', "ok.yml")
    assert data == {"a": 5400, "b": "1:2:3"}
