"""`segtool test`: column tests from models/*.yml (unique, not_null,
accepted_values, relationships) and segmentation tests. Each failing test
names itself and shows a few offending rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from segtool.compile.column_tests import parse_test, relationship_target
from segtool.compile.segments import population_sql
from segtool.compile.sql import quote_ident, relation, source_sql, sql_literal
from segtool.errors import ProjectError, did_you_mean
from segtool.execute.segment.inputs import apply_transformers, load_inputs
from segtool.execute.segment.store import active_fit, restore
from segtool.state import tables
from segtool.state.db import table_exists
from segtool.state.result import one
from segtool.words import counted


@dataclass
class TestResult:
    name: str
    node: str
    status: str  # pass | fail | error
    failures: int = 0
    message: str = ""
    examples: list[Any] = field(default_factory=list)
    path: str | None = None
    line: int | None = None


def column_test_sql(project, rel: str, col, name: str, args: dict) -> tuple[str, str]:
    """(query returning offending rows, test name)."""
    c = quote_ident(col.name)
    if name == "not_null":
        return f"SELECT * FROM {rel} WHERE {c} IS NULL", "not_null"
    if name == "unique":
        return (
            f"SELECT {c}, count(*) AS n FROM {rel} WHERE {c} IS NOT NULL GROUP BY {c} HAVING count(*) > 1",
            "unique",
        )
    if name == "accepted_values":
        values = args.get("values")
        if not isinstance(values, list) or not values:
            raise ProjectError(f"accepted_values on '{col.name}' needs `values: [...]`")
        lits = ", ".join(sql_literal(v) for v in values)
        return (
            f"SELECT {c}, count(*) AS n FROM {rel} WHERE {c} IS NOT NULL AND {c} NOT IN ({lits}) GROUP BY {c}",
            "accepted_values",
        )
    if name == "relationships":
        to, fld = args.get("to"), args.get("field")
        if not to or not fld:
            raise ProjectError(f"relationships on '{col.name}' needs `to:` and `field:`")
        kind, target = relationship_target(project.loaded, to, col)
        parent = (
            relation(target)
            if kind == "model"
            else source_sql(project.loaded.sources[target], project.loaded.root)
        )
        return (
            f"SELECT {c}, count(*) AS n FROM {rel} c WHERE {c} IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {parent} p WHERE p.{quote_ident(fld)} = c.{c}) GROUP BY {c}",
            "relationships",
        )
    raise AssertionError(name)


def run_tests(project, select=(), exclude=(), reporter=None, state_dir=None) -> list[TestResult]:
    from segtool.report.console import Reporter

    rep = reporter or Reporter(quiet=True)
    nodes = project.ls(select, exclude, state_dir)
    con = project.connect(read_only=True)
    results: list[TestResult] = []
    try:
        for node in nodes:
            if node.kind == "model":
                props = project.loaded.models[node.name].props
                cols = props.columns if props else []
                rel = relation(node.name)
            elif node.kind == "source":
                cols = node.spec.table.columns
                rel = source_sql(node.spec, project.loaded.root)
            else:
                continue
            for col in cols:
                for test in col.all_tests():
                    try:
                        name, args = parse_test(test, col)
                    except ProjectError as exc:  # this test only: the others still run
                        results.append(
                            TestResult(
                                f"{_written_name(test)}({node.name}.{col.name})",
                                node.unique_id,
                                "error",
                                0,
                                exc.message,
                                [],
                                col.file,
                                col.line,
                            )
                        )
                        continue
                    tname = f"{name}({node.name}.{col.name})"
                    try:
                        sql, kind = column_test_sql(project, rel, col, name, args)
                        # grouped queries carry n per value: count rows, not values
                        count = "coalesce(sum(n), 0)" if kind != "not_null" else "count(*)"
                        n = one(con.execute(f"SELECT {count} FROM ({sql})"))[0]
                        ex = _examples(con, sql, grouped=kind != "not_null") if n else []
                        status = "fail" if n else "pass"
                        msg = counted(n, "offending row") if n else ""
                    except ProjectError as exc:  # this test only: the others still run
                        status, n, ex, msg = "error", 0, [], exc.message
                    except duckdb.Error as exc:
                        status, n, ex = "error", 0, []
                        msg = str(exc).splitlines()[0]
                        if "Permission Error" in msg:
                            msg += (
                                " (a view reads a file outside the project: if the project "
                                "folder moved since the last run, `segtool run` rebuilds its views)"
                            )
                    results.append(
                        TestResult(
                            tname, node.unique_id, status, int(n), msg, ex, col.file, col.line
                        )
                    )

        for node in nodes:
            if node.kind == "segmentation":
                try:
                    results += segmentation_tests(project, con, node)
                except ProjectError as exc:  # its tests only (vectors missing for a
                    # silhouette): the other segmentations' still run
                    spec = node.spec
                    results.append(
                        TestResult(
                            f"tests({node.name})",
                            node.unique_id,
                            "error",
                            0,
                            exc.message,
                            [],
                            exc.path or spec.file,
                            exc.line if exc.path else spec.line,
                        )
                    )
    finally:
        con.close()
    _report(rep, results)
    return results


def _examples(con, sql: str, *, grouped: bool) -> list[str]:
    """Up to five offending rows, each with its column names: a grouped test's
    `order_id 1553: 2 rows` read as `1553, 2` (two order ids?), a not_null
    test's whole row as `user_id=7, signup_at=NULL, ...`."""
    cur = con.execute(f"SELECT * FROM ({sql}) LIMIT 5")
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        if grouped:  # (value, n)
            out.append(f"{names[0]} {_row_text(row[:1])}: {counted(int(row[1]), 'row')}")
        else:
            out.append(", ".join(f"{k}={_row_text((v,))}" for k, v in zip(names, row)))
    return out


def _row_text(row) -> str:
    """An offending row as a person reads it (`2023-01-26 00:00:00, 5`), not
    as Python writes it (`(datetime.datetime(2023, 1, 26, 0, 0), 5)`)."""
    values = row if isinstance(row, (tuple, list)) else (row,)
    return ", ".join("NULL" if v is None else str(v) for v in values)


def _written_name(test) -> str:
    """A test's name as written, for one that cannot be read."""
    if isinstance(test, dict) and len(test) == 1:
        return str(next(iter(test)))
    return str(test) if isinstance(test, str) else "test"


def _report(rep, results: list[TestResult]) -> None:
    for r in results:
        mark = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIP"}[r.status]
        rep.mark(mark, r.name + (f": {r.message}" if r.message else ""))
        if r.status in ("fail", "error") and r.path:  # where the test is declared
            rep.line(f"        at {r.path}" + (f":{r.line}" if r.line else ""))
        if r.status == "fail" and r.examples:
            for e in r.examples:
                rep.line(f"        {_row_text(e)}")
    n_fail = sum(r.status == "fail" for r in results)
    n_err = sum(r.status == "error" for r in results)
    n_pass = sum(r.status == "pass" for r in results)
    rep.line(f"{n_pass} passed, {n_fail} failed" + (f", {n_err} errors" if n_err else ""))


# ----------------------------------------------------------------------------- segmentation tests


def segmentation_tests(project, con, node) -> list:
    seg = node.spec
    name = seg.name
    proj = project.loaded
    k = quote_ident(proj.key)
    out: list[TestResult] = []

    def add(test: str, ok: bool, message: str = "", failures: int = 0, examples=None, of=None):
        out.append(
            TestResult(
                f"{test}({of or name})",
                node.unique_id,
                "pass" if ok else "fail",
                failures,
                "" if ok else message,
                examples or [],
                seg.file,
                seg.line,
            )
        )

    if not table_exists(con, tables.RESULTS, name):
        out.append(
            TestResult(
                f"exists({name})",
                node.unique_id,
                "fail",
                0,
                "segment table missing: run `segtool run` first",
                [],
                seg.file,
                seg.line,
            )
        )
        return out
    table = tables.segments(name)
    dups = con.execute(
        f"SELECT {k}, count(*) FROM {table} GROUP BY 1 HAVING count(*) > 1 LIMIT 5"
    ).fetchall()
    add(
        "one_segment_per_user",
        not dups,
        # the query stops at 5
        f"{counted(len(dups), 'user')}{' or more' if len(dups) == 5 else ''} in several segments",
        len(dups),
        dups,
    )
    pop = population_sql(proj, seg)
    if not seg.is_rules or seg.default:
        missing = con.execute(
            f"SELECT p.{k} FROM ({pop}) p ANTI JOIN {table} s ON s.{k} = p.{k} ORDER BY 1 LIMIT 5"
        ).fetchall()
        n_missing = (
            one(
                con.execute(f"SELECT count(*) FROM ({pop}) p ANTI JOIN {table} s ON s.{k} = p.{k}")
            )[0]
            if missing
            else 0
        )
        add(
            "every_user_assigned",
            not missing,
            f"{counted(n_missing, 'user')} of the population {'has' if n_missing == 1 else 'have'} no segment",
            n_missing,
            missing,
        )
    total = one(con.execute(f"SELECT count(*) FROM {table}"))[0] or 1
    shares = con.execute(
        f"SELECT segment_id, any_value(segment), count(*) / {total}::DOUBLE AS share FROM {table} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    t = seg.tests
    if t.min_share is not None:
        small = [(s, lab, round(sh, 4)) for s, lab, sh in shares if sh < t.min_share and s >= 0]
        # a live segment no user is in (a rule that matches nobody) has share 0
        empty = con.execute(
            f"SELECT c.segment_id, c.label FROM {tables.CATALOG} c "
            f"WHERE {tables.empty_in_catalog(name)} ORDER BY 1",
            [name],
        ).fetchall()
        small = sorted(small + [(s, lab, 0.0) for s, lab in empty])
        add(
            "min_share",
            not small,
            f"{counted(len(small), 'segment')} below min_share {t.min_share}",
            len(small),
            small,
        )
    if t.max_share is not None:
        big = [(s, lab, round(sh, 4)) for s, lab, sh in shares if sh > t.max_share]
        add(
            "max_share",
            not big,
            f"{counted(len(big), 'segment')} above max_share {t.max_share}",
            len(big),
            big,
        )
    if t.max_moved_share is not None:
        # the latest successful run: a test after a run that moved nobody
        # passes, even when an earlier run moved many (it kept failing until
        # another move). With the runs that failed or were interrupted since
        # the success before it: what they committed (a segmentation's
        # transaction) is live, and their rerun had nothing left to move
        runs = f"{tables.STATE}.runs"
        last, prev = one(
            con.execute(
                f"""SELECT max(run_id), (SELECT max(run_id) FROM {runs} r WHERE r.command = 'run'
                    AND r.status = 'success' AND r.run_id < max(s.run_id))
                FROM {runs} s WHERE s.command = 'run' AND s.status = 'success'"""
            )
        )
        hist = tables.history(name)
        # moved: a spell ended and another began at one run in another
        # segment (not a user who left, nor a spell a refit's relabel renewed)
        moved = (
            one(
                con.execute(
                    f"""SELECT count(DISTINCT h.{k}) FROM {hist} h
                    WHERE h.valid_to_run > ? AND h.valid_to_run <= ? AND EXISTS (
                        SELECT 1 FROM {hist} n WHERE n.{k} = h.{k}
                        AND n.valid_from_run = h.valid_to_run AND n.segment_id <> h.segment_id)""",
                    [prev or 0, last],
                )
            )[0]
            if last is not None
            else 0
        )
        share = moved / total
        add(
            "max_moved_share",
            share <= t.max_moved_share,
            f"{share:.1%} of users moved in run {last} (max {t.max_moved_share:.0%})",
            moved,
        )
    if t.max_association or t.min_association:
        _association_tests(project, con, seg, add)
    if t.min_silhouette is not None and not seg.is_rules:
        s = silhouette_of(project, con, seg)
        add("min_silhouette", s >= t.min_silhouette, f"silhouette {s:.3f} < {t.min_silhouette}", 0)
    return out


def _association_tests(project, con, seg, add) -> None:
    """max_association / min_association: how strongly a column goes with the
    segments now (drivers' measures, on the current assignment)."""
    from segtool.execute.segment import drivers

    t = seg.tests
    wanted = set(t.max_association) | set(t.min_association)
    proj = project.loaded
    pii = project.pii_columns()
    profile = drivers.compute(con, proj, seg, tables.segments(seg.name), pii, only=wanted)
    found: dict[str, dict] = {}
    for d in profile.drivers:
        found.setdefault(d["column"], d)
        found[f"{d['model']}.{d['column']}"] = d
    measurable = [c for c in drivers.candidate_columns(con, proj, seg, pii) if c.kind != "list"]
    known = list(
        dict.fromkeys([c.name for c in measurable] + [f"{c.model}.{c.name}" for c in measurable])
    )
    for test, bounds in (
        ("max_association", t.max_association),
        ("min_association", t.min_association),
    ):
        for col, bound in bounds.items():
            d = found.get(col)
            if d is None and col in known:
                # a column drivers skip: one value (or none) for everyone, or
                # about one per user; it was called 'not a column', with
                # itself as the nearest name
                add(
                    test,
                    test == "max_association",  # nothing measured is not above a bound
                    f"'{col}' has one value, no values or about one value per user in "
                    f"'{seg.name}': its association is not measured, so it cannot be "
                    f"{'below' if test == 'min_association' else 'above'} {bound}",
                    of=f"{seg.name}, {col}",
                )
                continue
            if d is None:
                hint = did_you_mean(col, known)
                add(
                    test,
                    False,
                    f"'{col}' is not a column drivers can measure for '{seg.name}' "
                    f"(numeric, date or categorical, not PII, in {', '.join(drivers.feeding_models(proj, seg))})"
                    + (f"; {hint}" if hint else ""),
                    of=f"{seg.name}, {col}",
                )
                continue
            ok = d["value"] <= bound if test == "max_association" else d["value"] >= bound
            word = "above" if test == "max_association" else "below"
            add(
                test,
                ok,
                f"{d['model']}.{d['column']}: {d['measure']} {d['value']:.3f} is {word} {bound}",
                0,
                [f"{d['model']}.{d['column']} {d['measure']} = {d['value']:.3f} (bound {bound})"],
                of=f"{seg.name}, {col}",
            )


def silhouette_of(project, con, seg) -> float:
    """Silhouette of the current assignment in the fitted space, on a sample."""
    from segtool.ml.metrics import silhouette

    active = active_fit(con, seg.name)
    if active is None:
        return -1.0
    transformers, model, _ = restore(active)
    k = quote_ident(project.loaded.key)
    users = f"SELECT s.{k}, row_number() OVER (ORDER BY hash(s.{k})) AS __ord FROM {tables.segments(seg.name)} s WHERE s.segment_id >= 0"
    sample = f"SELECT * FROM ({users}) WHERE __ord <= 5000"
    loaded = load_inputs(project.loaded, project.encoders(con=con).fingerprint, con, seg, sample)
    X = model.transform(apply_transformers(transformers, loaded), loaded.keys)
    ids = con.sql(
        f"SELECT s.segment_id FROM ({sample}) u JOIN {tables.segments(seg.name)} s ON s.{k} = u.{k} ORDER BY u.__ord"
    ).fetchnumpy()["segment_id"]
    if len(set(ids.tolist())) < 2:
        return -1.0
    return float(silhouette(X, np.asarray(ids), sample_size=5000, seed=0))
