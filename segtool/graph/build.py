"""Build the node graph from a loaded project: refs from SQL and from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

from segtool.compile.predicates import predicate_vars
from segtool.compile.reads import reads_of
from segtool.compile.sql import CompiledModel, compile_model
from segtool.errors import ProjectError, ProjectErrors, did_you_mean
from segtool.graph.dag import Graph, Node
from segtool.project.loader import LoadedProject
from segtool.project.secrets import env_digest_read


@dataclass
class BuiltGraph:
    graph: Graph
    compiled: dict[str, CompiledModel] = field(default_factory=dict)
    errors: list[ProjectError] = field(default_factory=list)
    # models that did not compile (their errors are in `errors`)
    failed: set[str] = field(default_factory=set)
    # incremental models whose merge alone reads files directly or calls
    # now()/random() (inside `{% if is_incremental() %}`): merged every run
    merge_volatile: set[str] = field(default_factory=set)


def _model_meta(m) -> dict:
    props = m.props
    if props is None:
        return {}
    return {
        "columns": [c.model_dump(exclude={"tags"}) for c in props.columns],
    }


def template_dependencies(proj: LoadedProject, name: str) -> list[str]:
    """A template and everything it includes/imports/extends, transitively."""
    import jinja2.meta

    from segtool.compile.jinja import default_env

    seen: list[str] = []
    todo = [name]
    while todo:
        t = todo.pop()
        if t in seen or t not in proj.templates:
            continue
        seen.append(t)
        try:
            ast = default_env().parse(proj.templates[t].text)
        except Exception:  # noqa: BLE001 - syntax errors are reported by the text check
            continue
        refs = list(jinja2.meta.find_referenced_templates(ast))
        if None in refs:
            # a name computed when rendering ({% include "parts/" ~ channel ~ ".j2" %}):
            # it may be any template, so the text depends on every one (an
            # edit to parts/paid_search.j2 changed nothing the plan saw)
            refs = list(proj.templates)
        todo.extend(r for r in refs if r)
    return seen


def _referenced(proj: LoadedProject, name: str) -> list[str]:
    import jinja2.meta

    from segtool.compile.jinja import default_env

    try:
        ast = default_env().parse(proj.templates[name].text)
    except Exception:  # noqa: BLE001 - syntax errors are reported by the text check
        return []
    return [r for r in jinja2.meta.find_referenced_templates(ast) if r]


def is_volatile(cm) -> bool:
    """A compiled model that reads files directly or calls now()/random()."""
    shape = cm.shape
    return shape is None or shape.volatile or shape.file_reads > cm.source_reads


def _incremental_branch(proj: LoadedProject, m, cm) -> tuple[str | None, list[str], bool]:
    """An incremental model's SQL as a merge compiles it, when it differs from
    the full build's (is_incremental() in its SQL), else None; and what only
    the merge reads (refs and sources inside `{% if is_incremental() %}`: new
    rows in such a source must start a merge, and `-s source+` must find it),
    and whether the merge is volatile where the full build is not."""
    if cm.config.materialized != "incremental" or "is_incremental" not in m.sql:
        return None, [], False
    try:
        merge = compile_model(proj, m, incremental=True)
    except ProjectError:  # the run reports it when it merges; the full build compiled
        return None, [], False
    reads = [f"model.{r}" for r in merge.refs if r != m.name and r not in cm.refs] + [
        f"source.{s}.{t}" for s, t in merge.sources if (s, t) not in cm.sources
    ]
    branch = merge.portable_sql if merge.portable_sql != cm.portable_sql else None
    return branch, reads, is_volatile(merge) and not is_volatile(cm)


def build_graph(proj: LoadedProject, *, strict: bool = True) -> BuiltGraph:
    nodes: list[Node] = []
    errors: list[ProjectError] = []
    compiled: dict[str, CompiledModel] = {}
    failed: set[str] = set()
    volatile_merges: set[str] = set()

    for (s, t), st in proj.sources.items():
        tbl = st.table
        nodes.append(
            Node(
                unique_id=f"source.{s}.{t}",
                kind="source",
                name=f"{s}.{t}",
                path=tbl.file,
                line=tbl.line,
                tags=[*st.source.tags, *tbl.tags],
                description=tbl.description,
                spec=st,
                data={
                    "path": tbl.path,
                    "format": tbl.format,
                    "options": tbl.options,
                    "database": st.source.database,
                    "schema": st.source.schema_,
                    "identifier": tbl.identifier,
                },
                meta={"columns": [c.model_dump() for c in tbl.columns]},
            )
        )

    for name, m in proj.models.items():
        try:
            cm = compile_model(proj, m)
        except ProjectError as exc:
            if exc.path is None:
                exc.path = m.path
            errors.append(exc)
            failed.add(name)
            continue
        if not cm.config.enabled:
            continue
        compiled[name] = cm
        branch, merge_reads, merge_volatile = _incremental_branch(proj, m, cm)
        if merge_volatile:
            volatile_merges.add(name)
        props = m.props
        nodes.append(
            Node(
                unique_id=f"model.{name}",
                kind="model",
                name=name,
                path=m.path,
                line=1,
                tags=[*cm.config.tags, *(props.tags if props else [])],
                description=props.description if props else "",
                depends_on=list(
                    dict.fromkeys(
                        [f"model.{r}" for r in cm.refs]
                        + [f"source.{s}.{t}" for s, t in cm.sources]
                        + merge_reads
                    )
                ),
                spec=cm,
                data={
                    "sql": cm.portable_sql,
                    "materialized": cm.config.materialized,
                    "unique_key": cm.config.unique_key,
                    # only when set: a new key in every model's data would change
                    # every own_hash, and rebuild every model after an upgrade
                    **({"delete_not_in": keep} if (keep := cm.config.delete_not_in) else {}),
                    # what a merge runs, when is_incremental() changes it: an
                    # edit inside `{% if is_incremental() %}` changed no hash
                    # (state:modified, diff and run all missed it)
                    **({"incremental_sql": branch} if branch else {}),
                },
                meta=_model_meta(m),
            )
        )

    def need_model(name: str, spec, what: str) -> str | None:
        if name in compiled:
            return f"model.{name}"
        if name in failed:  # failed to compile: already reported
            return f"model.{name}"
        if name in proj.models:  # disabled: said nowhere else (the run fell on a KeyError)
            errors.append(
                ProjectError(
                    f"{what} reads model '{name}', which is disabled (enabled=false in its config)",
                    path=spec.file,
                    line=spec.line,
                    hint=f"enable model '{name}', or point {what} at another model",
                )
            )
            return None
        errors.append(
            ProjectError(
                f"{what}: unknown model '{name}'",
                path=spec.file,
                line=spec.line,
                hint=did_you_mean(name, proj.models),
            )
        )
        return None

    for name, fs in proj.features.items():
        dep = need_model(fs.model, fs, f"features '{name}'")
        nodes.append(
            Node(
                unique_id=f"features.{name}",
                kind="features",
                name=name,
                path=fs.file,
                line=fs.line,
                tags=fs.tags,
                description=fs.description,
                depends_on=[dep] if dep else [],
                spec=fs,
                data=fs.model_dump(exclude={"description", "tags"}),
            )
        )

    for name, tx in proj.texts.items():
        dep = need_model(tx.model, tx, f"text '{name}'")
        if tx.template not in proj.templates:
            errors.append(
                ProjectError(
                    f"text '{name}': no template '{tx.template}' under {proj.spec.paths.templates}/",
                    path=tx.file,
                    line=tx.line,
                    hint=did_you_mean(tx.template, proj.templates),
                )
            )
        tdeps = template_dependencies(proj, tx.template)
        for t in tdeps:
            for ref in _referenced(proj, t):
                if ref not in proj.templates:
                    errors.append(
                        ProjectError(
                            f"template '{t}' includes '{ref}', which is not under {proj.spec.paths.templates}/",
                            path=proj.templates[t].path,
                            hint=did_you_mean(ref, proj.templates),
                        )
                    )
        texts = [proj.templates[t].text for t in tdeps]
        # the vars the templates read are part of what the text depends on
        # (those read: a var no template reads re-rendered every user)
        reads = reads_of(*texts)
        read = reads.vars
        if read is None:  # a name computed when rendering: any var
            used_vars: dict | None = dict(proj.vars)
        else:
            used_vars = {n: proj.vars[n] for n in sorted(read) if n in proj.vars} if read else None
        # ... and the environment variables they read (a digest: values may be secrets)
        env = env_digest_read(reads.env_vars)
        nodes.append(
            Node(
                unique_id=f"text.{name}",
                kind="text",
                name=name,
                path=tx.file,
                line=tx.line,
                tags=tx.tags,
                description=tx.description,
                depends_on=[dep] if dep else [],
                spec=tx,
                data={
                    "model": tx.model,
                    "max_chars": tx.max_chars,
                    "templates": {t: proj.templates[t].text for t in tdeps},
                    "vars": used_vars,
                    **({"env_var()": env} if env else {}),
                },
            )
        )

    for name, enc in proj.encoders.items():
        nodes.append(
            Node(
                unique_id=f"encoder.{name}",
                kind="encoder",
                name=name,
                path=enc.file,
                line=enc.line,
                tags=enc.tags,
                description=enc.description,
                spec=enc,
                data=enc.model_dump(
                    exclude={"description", "tags", "batch_size", "device", "name"}
                ),
                # where and how fast vectors are computed, not what they are:
                # a change shows in a diff and reruns nothing
                meta={"device": enc.device, "batch_size": enc.batch_size},
            )
        )

    embeddings: dict[str, Node] = {}
    for name, seg in proj.segmentations.items():
        deps: list[str] = []
        where = f"segmentation '{name}'"
        if seg.is_rules:
            d = need_model(seg.model, seg, where)
            if d:
                deps.append(d)
        else:
            if seg.model:
                d = need_model(seg.model, seg, where)
                if d:
                    deps.append(d)
            for inp in seg.inputs:
                if inp.features is not None:
                    if inp.features not in proj.features:
                        errors.append(
                            ProjectError(
                                f"{where}: unknown features '{inp.features}'",
                                path=inp.file,
                                line=inp.line,
                                hint=did_you_mean(inp.features, proj.features),
                            )
                        )
                        continue
                    deps.append(f"features.{inp.features}")
                else:
                    e = inp.embedding
                    ok = True
                    if e.text not in proj.texts:
                        errors.append(
                            ProjectError(
                                f"{where}: unknown text '{e.text}'",
                                path=inp.file,
                                line=inp.line,
                                hint=did_you_mean(e.text, proj.texts),
                            )
                        )
                        ok = False
                    if e.encoder not in proj.encoders:
                        errors.append(
                            ProjectError(
                                f"{where}: unknown encoder '{e.encoder}'",
                                path=inp.file,
                                line=inp.line,
                                hint=did_you_mean(e.encoder, proj.encoders),
                            )
                        )
                        ok = False
                    if not ok:
                        continue
                    uid = f"embedding.{e.text}.{e.encoder}"
                    if uid not in embeddings:
                        embeddings[uid] = Node(
                            unique_id=uid,
                            kind="embedding",
                            name=f"{e.text}.{e.encoder}",
                            path=inp.file,
                            line=inp.line,
                            depends_on=[f"text.{e.text}", f"encoder.{e.encoder}"],
                            data={"text": e.text, "encoder": e.encoder},
                        )
                    deps.append(uid)
        nodes.append(
            Node(
                unique_id=f"segmentation.{name}",
                kind="segmentation",
                name=name,
                path=seg.file,
                line=seg.line,
                tags=seg.tags,
                description=seg.description,
                depends_on=list(dict.fromkeys(deps)),
                spec=seg,
                data={
                    **seg.model_dump(exclude={"description", "tags", "tests", "update"}),
                    # predicates may read vars (`--vars`): their values decide who is where
                    "vars": predicate_vars(proj, seg),
                },
                meta={"tests": seg.tests.model_dump(), "update": seg.update.model_dump()},
            )
        )
    nodes.extend(embeddings.values())

    graph = Graph(nodes)
    try:
        graph.fingerprint()  # also detects cycles
    except ProjectError as exc:
        errors.append(exc)
    if strict and errors:
        raise ProjectErrors(errors)
    return BuiltGraph(
        graph=graph,
        compiled=compiled,
        errors=errors,
        failed=failed,
        merge_volatile=volatile_merges,
    )
