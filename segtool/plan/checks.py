"""Data checks a plan runs before anything is written: the population of a
segmentation is not empty, k fits it, and its inputs are finite and cover
the same users. A failed check stops the run with nothing changed."""

from __future__ import annotations

from segtool.compile.segments import base_model
from segtool.compile.sql import quote_ident
from segtool.errors import DataError
from segtool.state import tables
from segtool.words import counted


def check_nonempty(proj, seg, n: int) -> None:
    """A segmentation (clusters or rules) needs users to segment."""
    if n == 0:
        raise DataError(
            f"segmentation '{seg.name}': the population is empty (0 users"
            + (
                f" match `{seg.population}`"
                if seg.population
                else f" in model '{base_model(proj, seg)}'"
            )
            + ")",
            hint="check the population predicate and the upstream data",
            path=seg.file,
            line=seg.line,
        )


def check_population(
    proj, seg, con, users: str, n: int, model_rel=tables.model, *, fits: bool = True
) -> None:
    """Data checks that must fail before anything is written: empty population,
    k larger than the population, k: auto on too few users, NULL/NaN/inf
    features, inputs with different user sets. `users` holds the population;
    `fits`: the plan fits the segmentation (an imputed column then needs a
    finite value to take its mean or median of)."""
    k = quote_ident(proj.key)
    where = f"segmentation '{seg.name}'"
    check_nonempty(proj, seg, n)
    kk = seg.cluster.k
    if isinstance(kk, int) and kk > n:
        raise DataError(
            f"{where}: k={kk} is larger than the population ({n} users)",
            hint=f"lower k to at most {n}, or use k: auto",
            path=seg.file,
            line=seg.line,
        )
    smallest = max(2, int(seg.cluster.k_range[0]))
    if kk == "auto" and n <= smallest:
        raise DataError(
            f"{where}: k: auto needs more users than the smallest k tried "
            f"({n} users, k_range {list(seg.cluster.k_range)})",
            hint="set a fixed `k`, lower `k_range`, or widen the population",
            path=seg.file,
            line=seg.line,
        )
    # models that hold every user of the population: the population is drawn
    # from its base model, so that one needs no check
    covered: set[str] = {base_model(proj, seg)}
    for inp in seg.inputs:
        if inp.features:
            fs = proj.features[inp.features]
            model, what = fs.model, f"features '{fs.name}'"
            _check_finite(con, proj, fs, users, model_rel, fits=fits)
        else:
            tx = proj.texts[inp.embedding.text]
            model, what = tx.model, f"text '{tx.name}'"
        if model in covered:
            continue
        covered.add(model)
        missing = con.execute(
            f"SELECT p.{k} FROM {users} p WHERE NOT EXISTS (SELECT 1 FROM {model_rel(model)} m WHERE m.{k} = p.{k}) ORDER BY 1 LIMIT 5"
        ).fetchall()
        if missing:
            ex = ", ".join(repr(r[0]) for r in missing)
            raise DataError(
                f"{where}: its inputs have different user sets: {what} (model '{model}') lacks users of the population, e.g. {ex}",
                hint="give every input one row per user of the population, or narrow the population",
                path=seg.file,
                line=seg.line,
            )


def _check_finite(con, proj, fs, users: str, model_rel, *, fits: bool = True) -> None:
    from segtool.state.result import one

    k = quote_ident(proj.key)
    rel = model_rel(fs.model)
    for col, c in fs.columns.items():
        if c.type != "numeric":
            continue
        q = quote_ident(col)
        bad = f"m.{q} IS NULL OR NOT isfinite(CAST(m.{q} AS DOUBLE))"
        if c.impute in ("mean", "median"):
            # the fit takes the fill value from the finite ones: with none it
            # failed mid-run, after the models and texts were committed
            if (
                fits
                and not one(
                    con.execute(
                        f"SELECT count(*) FROM {rel} m JOIN {users} p ON p.{k} = m.{k} WHERE NOT ({bad})"
                    )
                )[0]
            ):
                raise DataError(
                    f"features '{fs.name}': column '{col}' of model '{fs.model}' has no finite "
                    f"value in the population to take the {c.impute} of",
                    hint=f"fix the model, or set `{col}: {{impute: zero}}`",
                    path=fs.file,
                    line=fs.line,
                )
            continue
        if c.impute != "error":
            continue
        rows = con.execute(
            f"SELECT m.{k}, CAST(m.{q} AS VARCHAR) FROM {rel} m JOIN {users} p ON p.{k} = m.{k} WHERE {bad} ORDER BY 1 LIMIT 5"
        ).fetchall()
        if rows:
            total = one(
                con.execute(
                    f"SELECT count(*) FROM {rel} m JOIN {users} p ON p.{k} = m.{k} WHERE {bad}"
                )
            )[0]
            ex = ", ".join(f"{r[0]!r} ({r[1] if r[1] is not None else 'NULL'})" for r in rows)
            raise DataError(
                f"features '{fs.name}': column '{col}' of model '{fs.model}' has {counted(total, 'NULL/NaN/inf value')}, e.g. {proj.key} {ex}",
                hint=f"fix the model, or set `{col}: {{impute: median}}` (zero|mean|median) in the feature set",
                path=fs.file,
                line=fs.line,
            )
