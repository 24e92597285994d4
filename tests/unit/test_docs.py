"""The reference docs keep up with the code: every CLI command and option is in
docs/cli.md, and every key of every project-file schema is in docs/project.md."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from segtool.cli import main
from segtool.project import specs

DOCS = Path(__file__).resolve().parents[2] / "docs"

# Every schema of a project file whose keys a user can write.
SPEC_MODELS = [
    "ProjectSpec",
    "EntitySpec",
    "PathsSpec",
    "ProfilesSpec",
    "TargetSpec",
    "ExecutorSpec",
    "PropertiesFile",
    "SourceSpec",
    "SourceTableSpec",
    "ColumnSpec",
    "ModelPropsSpec",
    "ModelConfig",
    "SegmentsFile",
    "FeatureSetSpec",
    "FeatureColumnSpec",
    "TextSpec",
    "EncoderSpec",
    "SegmentationSpec",
    "EmbeddingRef",
    "InputSpec",
    "ReduceSpec",
    "ClusterSpec",
    "UpdateSpec",
    "LabelsSpec",
    "SegmentTestsSpec",
    "RuleSpec",
]


def _read(name: str) -> str:
    path = DOCS / name
    assert path.is_file(), f"{path} is missing"
    return path.read_text(encoding="utf-8")


def _commands() -> dict[str, click.Command]:
    return dict(sorted(main.commands.items()))


def _long_flags(cmd: click.Command) -> list[str]:
    flags = []
    for p in cmd.params:
        if isinstance(p, click.Option):
            longs = [o for o in [*p.opts, *p.secondary_opts] if o.startswith("--")]
            flags += longs[:1]
    return flags


def test_cli_doc_lists_every_command():
    doc = _read("cli.md")
    missing = [name for name in _commands() if f"segtool {name}" not in doc]
    assert not missing, (
        f"docs/cli.md does not mention: {', '.join('segtool ' + m for m in missing)}"
    )


def _sections(doc: str) -> dict[str, str]:
    """`## heading` -> the text up to the next `## ` heading."""
    parts = re.split(r"(?m)^## ", doc)
    return {p.split("\n", 1)[0].strip(): p for p in parts[1:]}


@pytest.mark.parametrize("name", list(_commands()))
def test_cli_doc_lists_every_option(name):
    """Each long flag is in the command's own section, or in the sections on
    the options every project command shares (project and selection options)."""
    sections = _sections(_read("cli.md"))
    assert f"segtool {name}" in sections, f"docs/cli.md has no section `## segtool {name}`"
    shared = "".join(
        text for head, text in sections.items() if head.startswith(("Options every", "Selecting"))
    )
    text = sections[f"segtool {name}"] + shared
    cmd = _commands()[name]
    missing = [f for f in _long_flags(cmd) if not re.search(re.escape(f) + r"(?![\w-])", text)]
    assert not missing, (
        f"docs/cli.md does not document `segtool {name}` option(s): {', '.join(missing)}"
    )


def _keys(model_name: str) -> list[str]:
    model = getattr(specs, model_name)
    return [field.alias or name for name, field in model.model_fields.items()]


@pytest.mark.parametrize("model_name", SPEC_MODELS)
def test_project_doc_lists_every_key(model_name):
    doc = _read("project.md")
    missing = [
        k
        for k in _keys(model_name)
        if f"`{k}`" not in doc and not re.search(rf"(?m)^\s*(- )?{re.escape(k)}:", doc)
    ]
    assert not missing, (
        f"docs/project.md does not document {model_name} key(s): {', '.join(missing)}"
    )


def test_spec_model_list_is_complete():
    """A new schema in specs.py must be added to SPEC_MODELS (and documented)."""
    from pydantic import BaseModel

    found = {
        n
        for n, obj in vars(specs).items()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj is not specs.Spec
        and obj.__module__ == specs.__name__
    }
    assert found <= set(SPEC_MODELS), (
        f"add to SPEC_MODELS in tests/unit/test_docs.py: {sorted(found - set(SPEC_MODELS))}"
    )


def test_doc_links_resolve():
    """Relative links between docs point at files that exist (anchors not checked)."""
    broken = []
    for name in ("quickstart.md", "project.md", "cli.md", "segmentations.md"):
        for target in re.findall(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)", _read(name)):
            if not (DOCS / target).is_file():
                broken.append(f"{name} -> {target}")
    known_elsewhere = {"encoders.md"}  # written with the encoders stage
    broken = [b for b in broken if b.split(" -> ")[1] not in known_elsewhere]
    assert not broken, f"broken links: {broken}"
