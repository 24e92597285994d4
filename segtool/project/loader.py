"""Read a project folder into specs. Collects every error it can find in one
pass (validate shows them all); `load_project(..., strict=True)` raises them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtool.errors import ProjectError, ProjectErrors, did_you_mean
from segtool.project import reach
from segtool.project.secrets import Secrets
from segtool.project.specs import (
    EncoderSpec,
    FeatureSetSpec,
    ModelPropsSpec,
    ProfilesSpec,
    ProjectSpec,
    PropertiesFile,
    SegmentationSpec,
    SegmentsFile,
    SourceSpec,
    SourceTableSpec,
    TargetSpec,
    TextSpec,
)
from segtool.project.validation import require_mapping, validate_spec
from segtool.project.yamlio import ProjectYamlTooBig, load_yaml, parse_yaml, project_budget

PROJECT_FILE = "segtool_project.yml"
PROFILES_FILE = "profiles.yml"


@dataclass
class ModelFile:
    name: str
    path: str  # relative to the project root
    sql: str
    props: ModelPropsSpec | None = None


@dataclass
class TemplateFile:
    name: str  # path under templates/, with forward slashes
    path: str  # relative to the project root
    text: str


@dataclass
class SourceTable:
    source: SourceSpec
    table: SourceTableSpec

    @property
    def key(self) -> tuple[str, str]:
        return (self.source.name, self.table.name)


@dataclass
class LoadedProject:
    root: Path
    spec: ProjectSpec
    target_name: str
    target: TargetSpec
    vars: dict[str, Any]
    sources: dict[tuple[str, str], SourceTable] = field(default_factory=dict)
    models: dict[str, ModelFile] = field(default_factory=dict)
    templates: dict[str, TemplateFile] = field(default_factory=dict)
    features: dict[str, FeatureSetSpec] = field(default_factory=dict)
    texts: dict[str, TextSpec] = field(default_factory=dict)
    encoders: dict[str, EncoderSpec] = field(default_factory=dict)
    segmentations: dict[str, SegmentationSpec] = field(default_factory=dict)
    errors: list[ProjectError] = field(default_factory=list)
    secrets: Secrets = field(default_factory=Secrets)
    # `diff` extracts a git ref and links the entries git lacks (ignored data)
    # to the working tree's: that project folder is within its SQL's reach too
    linked_root: Path | None = None

    @property
    def roots(self) -> list[Path]:
        """The project folders whose visible entries the project's SQL may read."""
        return _roots(self.root, self.linked_root)

    def env_var(self, name: str, default: Any = None) -> str:
        """The Jinja `env_var()`: values read from the environment are secrets."""
        return self.secrets.env_var(name, default)

    def segmentation(self, name: str) -> SegmentationSpec:
        """The segmentation `name`, or a ProjectError that suggests the nearest."""
        if name not in self.segmentations:
            raise ProjectError(
                f"no segmentation named '{name}'", hint=did_you_mean(name, self.segmentations)
            )
        return self.segmentations[name]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        return self.spec.entity.key

    @property
    def database_path(self) -> Path:
        db = Path(self.target.database)
        return db if db.is_absolute() else self.root / db

    def relpath(self, p: Path) -> str:
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)


def find_project_root(start: Path) -> Path:
    start = start.resolve()
    for d in (start, *start.parents):
        if (d / PROJECT_FILE).is_file():
            return d
    raise ProjectError(
        f"no {PROJECT_FILE} in {start} or any parent folder",
        hint="run segtool inside a project, pass --project-dir, or create one with `segtool init DIR`",
    )


def parse_vars(text: str | None) -> dict[str, Any]:
    """--vars accepts YAML or JSON: '{as_of: 2024-02-01}'."""
    if not text:
        return {}
    data, _ = parse_yaml(text, "--vars")
    if not isinstance(data, dict):
        raise ProjectError("--vars must be a mapping, e.g. --vars '{as_of: \"2024-02-01\"}'")
    return data


def _render_env(text: str, rel: str, secrets: Secrets) -> str:
    """profiles.yml may use {{ env_var('X', 'default') }}."""
    from segtool.compile.jinja import render_string

    return render_string(text, {"env_var": secrets.env_var}, name=rel)


def load_project(
    project_dir: Path | str | None = None,
    *,
    target: str | None = None,
    vars: dict[str, Any] | None = None,
    strict: bool = True,
    linked_root: Path | None = None,
) -> LoadedProject:
    """`linked_root`: the folder the project's missing entries link to (`diff`
    of a git ref: files git does not keep come from the working tree). Its
    YAML files share one budget of values (yamlio.MAX_PROJECT_VALUES)."""
    with project_budget():
        return _load_project(project_dir, target, vars, strict, linked_root)


def _load_project(project_dir, target, vars, strict, linked_root) -> LoadedProject:
    root = find_project_root(Path(project_dir or "."))
    errors: list[ProjectError] = []
    roots = _roots(root, linked_root)

    _within_the_project(roots, root / PROJECT_FILE)
    data, marks = load_yaml(root / PROJECT_FILE, PROJECT_FILE)
    errors += require_mapping(data, PROJECT_FILE)
    spec, errs = validate_spec(ProjectSpec, data or {}, marks=marks, rel=PROJECT_FILE)
    if spec is None:
        raise ProjectErrors(errs)

    # profiles and target
    secrets = Secrets()
    targets: dict[str, TargetSpec] = {}
    pmarks: dict = {}
    prof_path = root / PROFILES_FILE
    if prof_path.is_file():
        _within_the_project(roots, prof_path)
        try:
            text = _render_env(prof_path.read_text(encoding="utf-8"), PROFILES_FILE, secrets)
            pdata, pmarks = parse_yaml(text, PROFILES_FILE)
            errs = require_mapping(pdata, PROFILES_FILE)
            profiles, errs2 = validate_spec(
                ProfilesSpec, pdata or {}, marks=pmarks, rel=PROFILES_FILE
            )
            errors += errs + errs2
            if profiles:
                targets = profiles.targets
        except ProjectError as exc:
            errors.append(
                exc if exc.path else ProjectError(exc.message, path=PROFILES_FILE, hint=exc.hint)
            )
    target_name = (
        target or spec.target or ("dev" if "dev" in targets or not targets else next(iter(targets)))
    )
    if targets and target_name not in targets:
        raise ProjectError(
            f"target '{target_name}' is not in {PROFILES_FILE}",
            path=PROFILES_FILE,
            hint=did_you_mean(target_name, targets),
        )
    if not targets and target and target != (spec.target or "dev"):
        if errors:  # profiles.yml did not load: its own errors say why, not "not defined"
            raise ProjectErrors(errors)
        raise ProjectError(
            f"target '{target}' is not defined", hint=f"add it under `targets:` in {PROFILES_FILE}"
        )
    tspec = targets.get(target_name, TargetSpec())
    errors += _executor_errors(target_name, tspec, pmarks)

    merged_vars = {**spec.vars, **(vars or {})}
    for name in spec.secret_vars:
        if name in merged_vars:
            secrets.add(merged_vars[name])
    proj = LoadedProject(
        root=root,
        spec=spec,
        target_name=target_name,
        target=tspec,
        vars=merged_vars,
        secrets=secrets,
        linked_root=linked_root,
    )

    _load_models(proj, errors)
    _load_templates(proj, errors)
    _load_segments(proj, errors)
    proj.errors = errors
    if strict and errors:
        raise ProjectErrors(errors)
    return proj


def _executor_errors(target_name: str, tspec: TargetSpec, marks: dict) -> list[ProjectError]:
    """A target whose heavy stages run on Ray needs Ray installed (found
    without importing it: validate stays light) and, for a cluster address it
    names, the environment's confirmation (reach.py)."""
    import importlib.util

    from segtool.project.reach import confirm_ray_address

    if tspec.executor.kind != "ray":
        return []

    def at(key: str) -> tuple[int | None, int | None]:
        found = marks.get(("targets", target_name, "executor", key)) or marks.get(
            ("targets", target_name, "executor")
        )
        return found if found else (None, None)

    errors = []
    try:
        confirm_ray_address(tspec.executor.address, target_name)
    except ProjectError as exc:
        exc.line, exc.col = at("address")
        errors.append(exc)
    if importlib.util.find_spec("ray") is None:
        line, col = at("kind")
        errors.append(
            ProjectError(
                f"target '{target_name}' runs embedding and assignment on Ray (executor kind: ray), "
                "but Ray is not installed",
                path=PROFILES_FILE,
                line=line,
                col=col,
                hint="pip install 'segtool[ray]' (Ray Data), or use kind: local",
            )
        )
    return errors


def _files(roots: list[Path], sub: str, patterns: tuple[str, ...]) -> list[Path]:
    root = roots[0]
    base = root / sub
    if not base.is_dir():
        return []
    _within_the_project(roots, base)
    out = []
    for pat in patterns:
        out += [
            p
            for p in base.rglob(pat)
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts)
        ]
    for p in out:
        _within_the_project(roots, p)
    return sorted(set(out))


def _roots(root: Path, linked_root: Path | None) -> list[Path]:
    return [root] + ([linked_root] if linked_root else [])


def _within_the_project(roots: list[Path], path: Path) -> None:
    """A project file that is a symlink out of the project (to a CI runner's
    credentials) would be read, and parse errors quote what they read."""
    try:
        rel = path.relative_to(roots[0]).as_posix()
    except ValueError:  # paths.models: /somewhere/else
        rel = PROJECT_FILE
    reach.check_reach(roots, path, "project file", file=rel, code=True)


def _read_text(p: Path, rel: str) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProjectError(
            f"file is not valid UTF-8 (byte {exc.start})", path=rel, hint="save it as UTF-8"
        ) from exc


def _read_spec_file(p: Path, rel: str, cls, errors: list[ProjectError]):
    """One YAML file validated as `cls`, or None with its errors appended."""
    try:
        data, marks = load_yaml(p, rel)
    except ProjectYamlTooBig:
        raise
    except ProjectError as exc:
        errors.append(exc)
        return None
    errs = require_mapping(data, rel)
    if errs:
        errors += errs
        return None
    spec, errs = validate_spec(cls, data or {}, marks=marks, rel=rel)
    errors += errs
    return spec


def _load_models(proj: LoadedProject, errors: list[ProjectError]) -> None:
    mdir = proj.spec.paths.models
    for p in _files(proj.roots, mdir, ("*.sql",)):
        rel = proj.relpath(p)
        name = p.stem
        if name in proj.models:
            errors.append(
                ProjectError(
                    f"two models are named '{name}': {proj.models[name].path} and {rel}",
                    path=rel,
                    hint="model names come from file names and must be unique",
                )
            )
            continue
        try:
            proj.models[name] = ModelFile(name=name, path=rel, sql=_read_text(p, rel))
        except ProjectError as exc:
            errors.append(exc)

    for p in _files(proj.roots, mdir, ("*.yml", "*.yaml")):
        rel = proj.relpath(p)
        props = _read_spec_file(p, rel, PropertiesFile, errors)
        if props is None:
            continue
        for src in props.sources:
            for tbl in src.tables:
                key = (src.name, tbl.name)
                if key in proj.sources:
                    errors.append(
                        ProjectError(
                            f"source '{src.name}.{tbl.name}' is declared twice",
                            path=rel,
                            line=tbl.line,
                        )
                    )
                    continue
                if tbl.path is None and src.database is None:
                    errors.append(
                        ProjectError(
                            f"source table '{src.name}.{tbl.name}' needs `path` (a file or glob) or its source needs `database`",
                            path=rel,
                            line=tbl.line,
                        )
                    )
                    continue
                proj.sources[key] = SourceTable(src, tbl)
        for mp in props.models:
            model = proj.models.get(mp.name)
            if model is None:
                errors.append(
                    ProjectError(
                        f"properties for model '{mp.name}', but there is no models/**/{mp.name}.sql",
                        path=rel,
                        line=mp.line,
                        hint=did_you_mean(mp.name, proj.models),
                    )
                )
            elif model.props is not None:
                errors.append(
                    ProjectError(
                        f"model '{mp.name}' has properties in two places", path=rel, line=mp.line
                    )
                )
            else:
                model.props = mp


def _load_templates(proj: LoadedProject, errors: list[ProjectError]) -> None:
    base = proj.root / proj.spec.paths.templates
    for p in _files(proj.roots, proj.spec.paths.templates, ("*",)):
        rel = proj.relpath(p)
        name = p.relative_to(base).as_posix()
        try:
            proj.templates[name] = TemplateFile(name=name, path=rel, text=_read_text(p, rel))
        except ProjectError as exc:
            errors.append(exc)


def _load_segments(proj: LoadedProject, errors: list[ProjectError]) -> None:
    kinds = (
        ("features", proj.features),
        ("texts", proj.texts),
        ("encoders", proj.encoders),
        ("segmentations", proj.segmentations),
    )
    for p in _files(proj.roots, proj.spec.paths.segments, ("*.yml", "*.yaml")):
        rel = proj.relpath(p)
        seg = _read_spec_file(p, rel, SegmentsFile, errors)
        if seg is None:
            continue
        for kind, registry in kinds:
            for item in getattr(seg, kind):
                if item.name in registry:
                    other = registry[item.name]
                    errors.append(
                        ProjectError(
                            f"{kind} name '{item.name}' is used twice (also at {other.file}:{other.line})",
                            path=rel,
                            line=item.line,
                            hint="names are unique per kind",
                        )
                    )
                    continue
                registry[item.name] = item
    _check_segment_tables(proj, errors)


def _check_segment_tables(proj: LoadedProject, errors: list[ProjectError]) -> None:
    """Two segmentations whose tables would be one: `lifecycle_history` is
    `lifecycle`'s history table (a segmentation of that name silently replaced
    every spell of lifecycle's), and DuckDB names ignore case (`Behaviour`
    and `behaviour`)."""
    from segtool.state.tables import history_name

    owner: dict[str, tuple[str, str]] = {}  # lower-case table -> (segmentation, table)
    for name, seg in proj.segmentations.items():
        for table in (name, history_name(name)):
            other = owner.get(table.lower())
            if other is None:
                owner[table.lower()] = (name, table)
                continue
            o = proj.segmentations[other[0]]
            errors.append(
                ProjectError(
                    f"segmentation '{name}' would write segments.{table}, the table of "
                    f"segmentation '{other[0]}' (segments.{other[1]}, {o.file}:{o.line})"
                    + (": table names ignore case" if table != other[1] else ""),
                    path=seg.file,
                    line=seg.line,
                    hint="rename one of them (each segmentation NAME writes segments.NAME "
                    "and its history segments.NAME_history)",
                )
            )


def dumps(obj: Any) -> str:
    """Canonical JSON for hashing."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
