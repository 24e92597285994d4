"""The SQL of a segmentation: who its population is, its rules as one CASE,
what each user's inputs hash to, and what its fitted model depends on. Used
by the planner (to count) and by the stages (to run): one definition each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from segtool.compile.sql import quote_ident
from segtool.graph.dag import sha
from segtool.ml import version
from segtool.project.loader import dumps
from segtool.state import tables


def base_model(proj, seg) -> str:
    if seg.model:
        return seg.model
    for inp in seg.inputs:
        if inp.features:
            return proj.features[inp.features].model
        return proj.texts[inp.embedding.text].model
    raise AssertionError("validated segmentations have inputs")


# the DuckDB types drivers measure (execute/segment/drivers.py), kept here
# free of NumPy: validate checks association tests with them
_NUMERIC = (
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
    "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "DATE", "TIMESTAMP", "TIME",
    "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "INTERVAL",
)  # fmt: skip
_CATEGORICAL = ("VARCHAR", "BOOLEAN", "ENUM", "UUID")


def column_kind(duck_type: str) -> str | None:
    """'numeric', 'categorical', 'list' (a list of scalars) or None (left out)."""
    t = duck_type.upper()
    if t.endswith("[]"):
        inner = t[:-2]
        return (
            "list" if not inner.endswith("[]") and not inner.startswith(("STRUCT", "MAP")) else None
        )
    if t.startswith(("STRUCT", "MAP", "UNION", "BLOB", "BIT", "ARRAY")) or "[" in t:
        return None
    if t.startswith("DECIMAL") or t in _NUMERIC:
        return "numeric"
    if t.startswith("ENUM") or t in _CATEGORICAL:
        return "categorical"
    return None


def feeding_models(proj, seg) -> list[str]:
    """The base model first, then every other model an input reads."""
    out = [base_model(proj, seg)]
    for inp in seg.inputs:
        m = (
            proj.features[inp.features].model
            if inp.features
            else proj.texts[inp.embedding.text].model
        )
        if m not in out:
            out.append(m)
    return out


def hidden_columns(proj, seg, pii) -> dict[str, set[str]]:
    """Per model feeding SEG, its PII columns that SEG does not allow
    (`allow_pii`): what its drivers, traits and labels leave out. `pii`:
    model -> its PII columns (Project.pii_columns, or checks.pii_columns'
    column -> where it is marked)."""
    return {m: set(pii.get(m, ())) - set(seg.allow_pii) for m in feeding_models(proj, seg)}


def hidden_pii(proj, seg, pii) -> list[str]:
    """hidden_columns as `model.column` names."""
    return sorted(f"{m}.{c}" for m, cols in hidden_columns(proj, seg, pii).items() for c in cols)


def population_sql(proj, seg, model_rel=tables.model) -> str:
    """The population's keys (and ordering column __ord), over `model_rel(name)`."""
    from segtool.compile.predicates import segmentation_predicates

    k = quote_ident(proj.key)
    pred = segmentation_predicates(proj, seg).population
    where = f"WHERE {pred.wrapped}" if pred else ""
    return f"SELECT m.{k}, row_number() OVER (ORDER BY m.{k}) AS __ord FROM {model_rel(base_model(proj, seg))} m {where}"


def rules_case(proj, seg) -> str:
    """The CASE expression of a rule segmentation: first matching rule wins."""
    from segtool.compile.predicates import segmentation_predicates
    from segtool.compile.sql import sql_literal

    rules = segmentation_predicates(proj, seg).rules
    whens = " ".join(f"WHEN {p.wrapped} THEN {sql_literal(s)}" for s, p in rules)
    default = sql_literal(seg.default) if seg.default else "NULL"
    return f"CASE {whens} ELSE {default} END"


def rules_changes_sql(
    k: str, work: str, old: str, fitted_ids: Iterable[int] = ()
) -> tuple[str, str]:
    """(the users whose rule segment is new or another, the users who left):
    `work` holds each user's segment now, `old` the stored table. The plan
    counts them; the run closes and opens their history spells. A stored row
    with one of `fitted_ids` (a cluster's id: the table came from a fit)
    changes whatever its name: a rule named like the cluster gets its own id,
    and the user's cluster spell stayed open under the retired id."""
    ids = sorted({int(i) for i in fitted_ids})
    from_fit = f" OR s.segment_id IN ({', '.join(map(str, ids))})" if ids else ""
    changed = (
        f"SELECT r.{k} FROM {work} r LEFT JOIN {old} s ON s.{k} = r.{k} "
        f"WHERE s.{k} IS NULL OR s.segment <> r.segment{from_fit}"
    )
    removed = f"SELECT s.{k} FROM {old} s ANTI JOIN {work} r ON r.{k} = s.{k}"
    return changed, removed


def input_hash_sql(proj, seg, alias: str, model_rel=tables.model, text_rel=tables.texts) -> str:
    """A SQL expression hashing everything a user's assignment depends on:
    their feature values and text hashes, read from `model_rel(model)` and
    `text_rel(text)` (what the run reads)."""
    k = quote_ident(proj.key)
    parts = []
    for inp in seg.inputs:
        if inp.features:
            fs = proj.features[inp.features]
            cols = ", ".join(f"f.{quote_ident(c)}" for c in fs.columns)
            parts.append(
                f"(SELECT hash({cols}) FROM {model_rel(fs.model)} f WHERE f.{k} = {alias}.{k})"
            )
        else:
            parts.append(
                f"(SELECT hash(t.text_hash) FROM {text_rel(inp.embedding.text)} t WHERE t.{k} = {alias}.{k})"
            )
    return f"hash({', '.join(parts)})"


def fit_hash(proj, fingerprint, seg) -> str:
    """What a fitted model depends on: the definition and the spaces of its
    inputs (feature definitions, encoder fingerprints), not templates, SQL,
    labels, tests or the update policy. `fingerprint(encoder)` gives each
    encoder's fingerprint."""
    parts: list[Any] = [
        seg.model_dump(exclude={"description", "tags", "tests", "update", "labels", "allow_pii"})
    ]
    for inp in seg.inputs:
        if inp.features:
            parts.append(proj.features[inp.features].model_dump(exclude={"description", "tags"}))
        else:
            parts.append(fingerprint(inp.embedding.encoder))
    parts.append({"algorithm": version.ALGORITHM_VERSION})
    return sha(dumps(parts))


def fit_is_current(project, seg, stored_fit_hash: str, con) -> bool:
    """Whether a stored fit (in the database `con`) was made in the spaces of
    SEG's inputs as they are now (an encoder whose weights changed puts new
    vectors through it)."""
    fingerprint = project.encoders(con=con).fingerprint
    return fit_hash(project.loaded, fingerprint, seg) == stored_fit_hash
