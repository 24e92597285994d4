"""Segmentations: fit or assign clusters, apply rules, keep ids stable and
keep history.

Per segmentation NAME:
  segments.NAME            one row per user of the population (current)
  segments.NAME_history    every (user, segment) spell, valid_from/valid_to by run
  _segtool.inputs__NAME    the hash of each user's inputs at last assignment
  _segtool.fitted          fitted state (params JSON + npz arrays), one active row
  _segtool.segment_catalog ids, labels, sizes, births and deaths

Each segmentation is written in one transaction: a failure leaves the previous
tables whole."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from segtool.compile.sql import quote_ident, relation
from segtool.errors import DataError, ProjectError, did_you_mean
from segtool.graph.dag import sha
from segtool.project.loader import dumps
from segtool.state.db import RESULTS, STATE, now, table_exists
from segtool.state.result import one


def seg_table(name: str) -> str:
    return f"{RESULTS}.{quote_ident(name)}"


def hist_table(name: str) -> str:
    return f"{RESULTS}.{quote_ident(name + '_history')}"


def inputs_table(name: str) -> str:
    return f"{STATE}.{quote_ident('inputs__' + name)}"


def base_model(proj, seg) -> str:
    if seg.model:
        return seg.model
    for inp in seg.inputs:
        if inp.features:
            return proj.features[inp.features].model
        return proj.texts[inp.embedding.text].model
    raise AssertionError("validated segmentations have inputs")


def population_sql(proj, seg) -> str:
    """The population's keys (and ordering column __ord)."""
    from segtool.compile.predicates import segmentation_predicates

    k = quote_ident(proj.key)
    pred = segmentation_predicates(proj, seg).population
    where = f"WHERE {pred.wrapped}" if pred else ""
    return f"SELECT m.{k}, row_number() OVER (ORDER BY m.{k}) AS __ord FROM {relation(base_model(proj, seg))} m {where}"


def rules_case(proj, seg) -> str:
    """The CASE expression of a rule segmentation: first matching rule wins."""
    from segtool.compile.predicates import segmentation_predicates
    from segtool.compile.sql import sql_literal

    rules = segmentation_predicates(proj, seg).rules
    whens = " ".join(f"WHEN {p.wrapped} THEN {sql_literal(s)}" for s, p in rules)
    default = sql_literal(seg.default) if seg.default else "NULL"
    return f"CASE {whens} ELSE {default} END"


# ----------------------------------------------------------------------------- checks in stage 1


def check_inputs(runner, con, uids: list[str]) -> None:
    """Data checks that must fail before anything is written: empty population,
    k larger than the population, NaN/inf features, inputs with different users."""
    proj = runner.proj
    graph = runner.project.graph().graph
    k = quote_ident(proj.key)
    for uid in uids:
        seg = graph[uid].spec
        where = f"segmentation '{seg.name}'"
        pop = population_sql(proj, seg)
        try:
            n = one(con.execute(f"SELECT count(*) FROM ({pop})"))[0]
        except Exception as exc:  # noqa: BLE001 - a predicate that fails at run time
            raise ProjectError(
                f"{where}: population predicate failed: {str(exc).splitlines()[0]}",
                path=seg.file,
                line=seg.line,
            ) from exc
        if n == 0:
            raise DataError(
                f"{seg.file}:{seg.line}: {where}: the population is empty (0 users"
                + (
                    f" match `{seg.population}`"
                    if seg.population
                    else f" in model '{base_model(proj, seg)}'"
                )
                + ")",
                hint="check the population predicate and the upstream data",
            )
        if seg.is_rules:
            continue
        kk = seg.cluster.k
        if isinstance(kk, int) and kk > n:
            raise DataError(
                f"{seg.file}:{seg.line}: {where}: k={kk} is larger than the population ({n} users)",
                hint=f"lower k to at most {n}, or use k: auto",
            )
        smallest = max(2, int(seg.cluster.k_range[0]))
        if kk == "auto" and n <= smallest:
            raise DataError(
                f"{seg.file}:{seg.line}: {where}: k: auto needs more users than the smallest k tried "
                f"({n} users, k_range {list(seg.cluster.k_range)})",
                hint="set a fixed `k`, lower `k_range`, or widen the population",
            )
        models = []
        for inp in seg.inputs:
            if inp.features:
                fs = proj.features[inp.features]
                models.append((fs.model, f"features '{fs.name}'"))
                _check_finite(con, proj, fs, pop)
            else:
                tx = proj.texts[inp.embedding.text]
                models.append((tx.model, f"text '{tx.name}'"))
        for model, what in models:
            missing = con.execute(
                f"SELECT p.{k} FROM ({pop}) p WHERE NOT EXISTS (SELECT 1 FROM {relation(model)} m WHERE m.{k} = p.{k}) ORDER BY 1 LIMIT 5"
            ).fetchall()
            if missing:
                ex = ", ".join(repr(r[0]) for r in missing)
                raise DataError(
                    f"{seg.file}:{seg.line}: {where}: its inputs have different user sets: {what} (model '{model}') lacks users of the population, e.g. {ex}",
                    hint="give every input one row per user of the population, or narrow the population",
                )


def _check_finite(con, proj, fs, pop: str) -> None:
    k = quote_ident(proj.key)
    for col, c in fs.columns.items():
        if c.type != "numeric" or c.impute != "error":
            continue
        q = quote_ident(col)
        bad = f"m.{q} IS NULL OR NOT isfinite(CAST(m.{q} AS DOUBLE))"
        rows = con.execute(
            f"SELECT m.{k}, CAST(m.{q} AS VARCHAR) FROM {relation(fs.model)} m JOIN ({pop}) p ON p.{k} = m.{k} WHERE {bad} ORDER BY 1 LIMIT 5"
        ).fetchall()
        if rows:
            total = one(
                con.execute(
                    f"SELECT count(*) FROM {relation(fs.model)} m JOIN ({pop}) p ON p.{k} = m.{k} WHERE {bad}"
                )
            )[0]
            ex = ", ".join(f"{r[0]!r} ({r[1] if r[1] is not None else 'NULL'})" for r in rows)
            raise DataError(
                f"{fs.file}:{fs.line}: features '{fs.name}': column '{col}' of model '{fs.model}' has {total} NULL/NaN/inf value(s), e.g. {proj.key} {ex}",
                hint=f"fix the model, or set `{col}: {{impute: median}}` (zero|mean|median) in the feature set",
            )


# ----------------------------------------------------------------------------- run


@dataclass
class Loaded:
    keys: np.ndarray
    blocks: list[np.ndarray]
    raw: Any  # polars frame of raw feature columns (for profiles), or None


def fit_hash(proj, fingerprint, seg) -> str:
    """What a fitted model depends on: the definition and the spaces of its
    inputs (feature definitions, encoder fingerprints), not templates or SQL.
    `fingerprint(encoder_name)` gives each encoder's fingerprint."""
    parts: list[Any] = [
        seg.model_dump(exclude={"description", "tags", "tests", "update", "labels"})
    ]
    for inp in seg.inputs:
        if inp.features:
            parts.append(proj.features[inp.features].model_dump(exclude={"description", "tags"}))
        else:
            parts.append(fingerprint(inp.embedding.encoder))
    return sha(dumps(parts))


def run_segmentations(runner, con, uids: list[str]) -> None:
    from segtool.execute.run import NodeResult
    from segtool.state.db import record_nodes

    graph = runner.project.graph().graph
    for uid in uids:
        node = graph[uid]
        seg = node.spec
        t0 = time.perf_counter()
        con.execute("BEGIN")
        try:
            stats = (
                _run_rules(runner, con, seg) if seg.is_rules else _run_clusters(runner, con, seg)
            )
            record_nodes(con, [node], runner.run_id)
            con.execute("COMMIT")
        except BaseException:
            from segtool.execute.run import rollback

            rollback(con)
            raise
        stats["seconds"] = round(time.perf_counter() - t0, 3)
        runner.summary.setdefault("segmentations", {})[seg.name] = stats
        runner.results.append(
            NodeResult(
                uid,
                "segmentation",
                "success",
                stats["action"],
                stats["users"],
                stats["seconds"],
                detail=stats,
            )
        )
        runner.rep.line(
            f"  seg   {seg.name:<28} {stats['action']} ({stats['reason']}): {stats['users']:,} users, "
            f"{stats['assigned']:,} assigned, {stats['moved']:,} moved, {stats['segments']} segments"
        )


def _load_inputs(proj, fingerprint, con, seg, users_sql: str) -> Loaded:
    """Blocks for the users of `users_sql` (key + __ord), in __ord order.
    `fingerprint(encoder_name)` gives the cache key of each encoder."""
    from segtool.execute.embed import load_vectors

    k = quote_ident(proj.key)
    keys = np.asarray(
        con.sql(f"SELECT {k} FROM ({users_sql}) ORDER BY __ord")
        .to_arrow_table()
        .column(0)
        .to_numpy(zero_copy_only=False)
    )
    blocks: list[np.ndarray] = []
    raw = None
    for inp in seg.inputs:
        if inp.features:
            fs = proj.features[inp.features]
            cols = ", ".join(f"m.{quote_ident(c)}" for c in fs.columns)
            df = con.sql(
                f"SELECT {cols} FROM ({users_sql}) u JOIN {relation(fs.model)} m ON m.{k} = u.{k} ORDER BY u.__ord"
            ).pl()
            blocks.append(df)  # transformed by the caller (fit or stored transformer)
            if raw is None:
                raw = df
        else:
            e = inp.embedding
            fp = fingerprint(e.encoder)
            vk, mat = load_vectors(con, e.text, fp, users_sql, proj.key)
            if len(vk) != len(keys):
                raise DataError(
                    f"segmentation '{seg.name}': {len(keys) - len(vk)} user(s) have no vector for text '{e.text}' / encoder '{e.encoder}'",
                    hint=f"run the embedding first: segtool run -s +{seg.name}",
                )
            blocks.append(mat)
    return Loaded(keys, blocks, raw)


def _fingerprints(runner):
    from segtool.execute.embed import encoder_for

    return lambda name: encoder_for(runner, name).fingerprint()


def project_fingerprints(project):
    """Encoder fingerprints outside a run (tests, report); models are not loaded."""
    from segtool.encoders import build_encoder

    cache: dict[str, str] = {}

    def fingerprint(name: str) -> str:
        if name not in cache:
            enc = build_encoder(project.loaded.encoders[name], project.root)
            cache[name] = enc.fingerprint()
        return cache[name]

    return fingerprint


def _active_fit(con, name: str) -> tuple | None:
    return one(
        con.execute(
            f"SELECT fit_id, fit_hash, params, arrays FROM {STATE}.fitted WHERE segmentation = ? AND active ORDER BY fit_id DESC LIMIT 1",
            [name],
        )
    )


def _restore(row) -> tuple[list, Any, dict]:
    from segtool.ml.features import FeatureTransformer
    from segtool.ml.pipeline import SegmentModel
    from segtool.ml.serialize import from_npz_bytes

    params = json.loads(row[2])
    arrays = from_npz_bytes(bytes(row[3]))
    transformers = []
    for i, p in enumerate(params["features"]):
        if p is None:
            transformers.append(None)
            continue
        pre = f"ft{i}/"
        transformers.append(
            FeatureTransformer.from_state_dict(
                p, {a[len(pre) :]: v for a, v in arrays.items() if a.startswith(pre)}
            )
        )
    model = SegmentModel.from_state_dict(
        params["model"], {a[6:]: v for a, v in arrays.items() if a.startswith("model/")}
    )
    return transformers, model, params


def _apply_transformers(transformers, loaded: Loaded) -> list[np.ndarray]:
    out = []
    for t, b in zip(transformers, loaded.blocks):
        out.append(t.transform(b, loaded.keys) if t is not None else b)
    return out


def _run_clusters(runner, con, seg) -> dict:
    proj = runner.proj
    name = seg.name
    k = quote_ident(proj.key)
    pop = population_sql(proj, seg)
    fhash = fit_hash(proj, _fingerprints(runner), seg)
    hash_expr = input_hash_sql(proj, seg, "u")
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __segtool_cur AS SELECT u.{k}, u.__ord, {hash_expr} AS input_hash FROM ({pop}) u"
    )
    n_users = one(con.execute("SELECT count(*) FROM __segtool_cur"))[0]
    has_prev = table_exists(con, RESULTS, name) and table_exists(con, STATE, "inputs__" + name)
    active = _active_fit(con, name)

    # who changed since the last assignment
    if has_prev and active is not None:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE __segtool_changed AS
            SELECT c.{k}, row_number() OVER (ORDER BY c.__ord) AS __ord FROM __segtool_cur c
            LEFT JOIN {inputs_table(name)} i ON i.{k} = c.{k}
            WHERE i.{k} IS NULL OR i.input_hash <> c.input_hash"""
        )
    else:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __segtool_changed AS SELECT {k}, __ord FROM __segtool_cur"
        )
    n_changed = one(con.execute("SELECT count(*) FROM __segtool_changed"))[0]

    reason = None
    drift = None
    if active is None:
        reason = "first fit"
    elif active[1] != fhash:
        reason = "definition changed"
    elif runner.opts.refit:
        reason = "--refit"
    elif seg.update.refit == "always" and n_changed:
        reason = "policy: always"
    elif not has_prev:
        reason = "segment table missing"

    if reason is None:
        transformers, model, params = _restore(active)
        result = _assign(runner, con, seg, transformers, model, params, n_changed)
        if seg.update.refit == "on_drift" and (n_changed or result.get("removed")):
            drift = population_drift(con, proj, name, model, params)
            if drift["score"] > seg.update.drift_threshold:
                reason = f"drift {drift['score']:.2f} > {seg.update.drift_threshold}"
    if reason is not None:
        result = _fit(runner, con, seg, fhash, reason)
    if drift is not None:
        result["drift"] = drift
    result["moved"] = _update_history(con, proj, name, runner.run_id)
    # remember each user's inputs, for the next run's change detection
    con.execute(
        f"CREATE OR REPLACE TABLE {inputs_table(name)} AS SELECT {k}, input_hash, {int(runner.run_id)} AS run_id FROM __segtool_cur"
    )
    result["users"] = int(n_users)
    result["changed_inputs"] = int(n_changed)
    for t in ("__segtool_cur", "__segtool_changed"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return result


def population_drift(con, proj, name: str, model, params: dict) -> dict:
    """Drift of the whole current population against the fit-time baseline,
    from the stored distances (cheap: no model evaluation).

    far_share      share of users farther from their centroid than that
                   cluster's fit-time 95th percentile (about 0.05 at fit time)
    distance_ratio mean distance now / mean distance at fit time
    score          max(0, (far_share - 0.05) / 0.95, distance_ratio - 1)

    Measured over everyone (not just this run's changed users), so a stream of
    small updates adds up and a handful of odd users cannot force a refit."""
    from segtool.ml.drift import EXPECTED_FAR_SHARE

    seg_ids, dist = (
        np.asarray(a)
        for a in con.execute(
            f"SELECT segment_id, distance FROM {seg_table(name)} WHERE segment_id >= 0 AND distance IS NOT NULL"
        )
        .fetchnumpy()
        .values()
    )
    if len(dist) == 0:
        return {"score": 0.0, "far_share": 0.0, "distance_ratio": 1.0, "n": 0}
    id_to_label = {
        int(sid): int(lab) for lab, sid in params["label_to_id"].items() if int(lab) >= 0
    }
    p95 = np.asarray(model.cluster_p95_distance_, dtype=np.float64)
    # segment id -> cluster label, vectorised (a Python loop costs ~0.5 s at 1M users)
    lut = np.full(max(id_to_label, default=0) + 1, -1, dtype=np.int64)
    for sid, lab in id_to_label.items():
        lut[sid] = lab
    seg_ids = seg_ids.astype(np.int64)
    known = (seg_ids >= 0) & (seg_ids < len(lut))
    labels = np.full(len(seg_ids), -1, dtype=np.int64)
    labels[known] = lut[seg_ids[known]]
    ok = labels >= 0
    far_share = float((dist[ok] > p95[labels[ok]]).mean()) if ok.any() else 0.0
    base = float(model.mean_distance_)
    ratio = float(dist.mean()) / base if base > 0 else 1.0
    score = max(0.0, (far_share - EXPECTED_FAR_SHARE) / (1 - EXPECTED_FAR_SHARE), ratio - 1.0)
    return {
        "score": round(score, 4),
        "far_share": round(far_share, 4),
        "distance_ratio": round(ratio, 4),
        "n": int(len(dist)),
    }


def input_hash_sql(proj, seg, alias: str, model_rel=relation, text_rel=None) -> str:
    """A SQL expression hashing everything a user's assignment depends on:
    their feature values and text hashes. `model_rel(model)` / `text_rel(text)`
    give the relations to read (the plan passes ones not built yet)."""
    from segtool.execute.render import text_table

    text_rel = text_rel or text_table
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


def _label_sample(ids: np.ndarray, seed: int, per_segment: int = 2000) -> np.ndarray:
    """Row indices: at most `per_segment` users of each segment, seeded."""
    from segtool.ml.labels import MAX_TEXTS_PER_CLUSTER

    per_segment = min(per_segment, MAX_TEXTS_PER_CLUSTER)
    rng = np.random.default_rng(seed)
    out = []
    for sid in np.unique(ids):
        rows = np.flatnonzero(ids == sid)
        if rows.size > per_segment:
            rows = np.sort(rng.choice(rows, size=per_segment, replace=False))
        out.append(rows)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _texts_of(con, proj, text: str, keys: np.ndarray) -> list[str]:
    """The rendered texts of these users, in this order."""
    import pyarrow as pa

    from segtool.execute.render import text_table

    k = quote_ident(proj.key)
    con.register("__segtool_label_keys", pa.table({"k": keys, "i": np.arange(len(keys))}))
    try:
        return (
            con.sql(
                f"SELECT t.text FROM __segtool_label_keys u JOIN {text_table(text)} t ON t.{k} = u.k ORDER BY u.i"
            )
            .to_arrow_table()
            .column(0)
            .to_pylist()
        )
    finally:
        con.unregister("__segtool_label_keys")


def _fit(runner, con, seg, fhash: str, reason: str) -> dict:
    from segtool.ml.features import FeatureTransformer
    from segtool.ml.labels import feature_profile, keyword_labels, segment_name
    from segtool.ml.matching import match_clusters
    from segtool.ml.pipeline import SegmentModel
    from segtool.ml.serialize import to_npz_bytes

    proj = runner.proj
    name = seg.name
    loaded = _load_inputs(proj, _fingerprints(runner), con, seg, "SELECT * FROM __segtool_cur")
    transformers = []
    blocks = []
    for inp, b in zip(seg.inputs, loaded.blocks):
        if inp.features:
            fs = proj.features[inp.features]
            t = FeatureTransformer(fs.columns, fs.scale).fit(b, loaded.keys)
            transformers.append(t)
            blocks.append(t.transform(b, loaded.keys))
        else:
            transformers.append(None)
            blocks.append(b)
    names = [inp.features or f"{inp.embedding.text}/{inp.embedding.encoder}" for inp in seg.inputs]
    # stable ids: start from the previous assignment, then match by member overlap
    prev = _previous_ids(con, proj, name, loaded.keys)
    model = SegmentModel(
        [i.weight for i in seg.inputs], seg.reduce, seg.cluster, input_names=names
    ).fit(blocks, loaded.keys, init_labels=prev if (prev >= 0).any() else None)
    labels, dist, conf = model.predict(blocks, loaded.keys)

    alive = [
        r[0]
        for r in con.execute(
            f"SELECT segment_id FROM {STATE}.segment_catalog WHERE segmentation = ? AND died_run IS NULL AND segment_id >= 0",
            [name],
        ).fetchall()
    ]
    next_id = one(
        con.execute(
            f"SELECT coalesce(max(segment_id) + 1, 0) FROM {STATE}.segment_catalog WHERE segmentation = ?",
            [name],
        )
    )[0]
    match = match_clusters(prev, labels, alive, int(next_id))
    ids = match.apply(labels)

    # labels: keywords of member texts, distinguishing raw features
    kw = {}
    text_input = next((i.embedding.text for i in seg.inputs if i.embedding), None)
    if text_input and seg.labels.keywords:
        # keywords read a seeded sample of each segment's texts, not every user's
        idx = _label_sample(ids, seg.cluster.seed)
        texts = _texts_of(con, proj, text_input, loaded.keys[idx])
        kw = keyword_labels(texts, ids[idx], seg.labels.keywords, seed=seg.cluster.seed)
    prof = {}
    if loaded.raw is not None and seg.labels.features:
        num = [
            c
            for c, spec in proj.features[
                seg.inputs[[i for i, x in enumerate(seg.inputs) if x.features][0]].features
            ].columns.items()
            if spec.type == "numeric"
        ]
        if num:
            X = loaded.raw.select(num).to_numpy().astype(np.float64)
            prof = feature_profile(X, num, ids, seg.labels.features)
    catalog = {}
    for sid in sorted(set(ids.tolist())):
        if sid < 0:
            catalog[sid] = ("outlier", [], [])
            continue
        catalog[sid] = (
            segment_name(kw.get(sid, []), prof.get(sid, [])),
            kw.get(sid, []),
            prof.get(sid, []),
        )

    # fitted state: params JSON + one npz blob, no pickle
    params: dict[str, Any] = {
        "features": [],
        "label_to_id": {str(k_): v for k_, v in match.mapping.items()},
    }
    arrays: dict[str, np.ndarray] = {}
    for i, t in enumerate(transformers):
        if t is None:
            params["features"].append(None)
            continue
        p, a = t.state_dict()
        params["features"].append(p)
        arrays.update({f"ft{i}/{n}": v for n, v in a.items()})
    p, a = model.state_dict()
    params["model"] = p
    arrays.update({f"model/{n}": v for n, v in a.items()})
    fit_id = one(
        con.execute(
            f"SELECT coalesce(max(fit_id), 0) + 1 FROM {STATE}.fitted WHERE segmentation = ?",
            [name],
        )
    )[0]
    con.execute(f"UPDATE {STATE}.fitted SET active = false WHERE segmentation = ?", [name])
    con.execute(
        f"INSERT INTO {STATE}.fitted VALUES (?, ?, ?, ?, ?, ?, ?, true)",
        [name, fit_id, fhash, runner.run_id, now(), json.dumps(params), to_npz_bytes(arrays)],
    )

    _write_catalog(con, name, catalog, match, runner.run_id, ids)
    _write_assignments(con, proj, name, loaded.keys, ids, dist, conf, runner.run_id, full=True)
    events = {
        "births": match.births,
        "deaths": match.deaths,
        "splits": match.splits,
        "merges": match.merges,
    }
    for ev, items in events.items():
        for item in items:
            con.execute(
                f"INSERT INTO {STATE}.segment_events VALUES (?, ?, ?, ?)",
                [name, runner.run_id, ev.rstrip("s"), json.dumps(item)],
            )
    return {
        "action": "refit",
        "reason": reason,
        "assigned": int(len(ids)),
        "segments": int(len([s for s in catalog if s >= 0])),
        "k": int(getattr(model, "k_", len(catalog))),
        "events": {k_: len(v) for k_, v in events.items()},
    }


def _assign(runner, con, seg, transformers, model, params, n_changed: int) -> dict:
    proj = runner.proj
    name = seg.name
    k = quote_ident(proj.key)
    # users gone from the population leave the table
    removed = one(
        con.execute(
            f"SELECT count(*) FROM {seg_table(name)} s WHERE s.{k} NOT IN (SELECT {k} FROM __segtool_cur)"
        )
    )[0]
    con.execute(f"DELETE FROM {seg_table(name)} WHERE {k} NOT IN (SELECT {k} FROM __segtool_cur)")
    if n_changed:
        ch = _load_inputs(proj, _fingerprints(runner), con, seg, "SELECT * FROM __segtool_changed")
        labels, dist, conf = model.predict(_apply_transformers(transformers, ch), ch.keys)
        mapping = {int(a): int(b) for a, b in params["label_to_id"].items()}
        ids = np.array([mapping.get(int(x), -1) for x in labels], dtype=np.int64)
        _write_assignments(con, proj, name, ch.keys, ids, dist, conf, runner.run_id, full=False)
    _refresh_sizes(con, name)
    n_segments = one(
        con.execute(
            f"SELECT count(DISTINCT segment_id) FROM {seg_table(name)} WHERE segment_id >= 0"
        )
    )[0]
    reason = "no changes" if not n_changed and not removed else f"{n_changed:,} new/changed user(s)"
    return {
        "action": "assign" if n_changed or removed else "unchanged",
        "reason": reason,
        "assigned": int(n_changed),
        "removed": int(removed),
        "segments": int(n_segments),
    }


def _previous_ids(con, proj, name: str, keys: np.ndarray) -> np.ndarray:
    if not table_exists(con, RESULTS, name):
        return np.full(len(keys), -2, dtype=np.int64)
    import pyarrow as pa

    k = quote_ident(proj.key)
    con.register("__segtool_keys", pa.table({"k": keys, "i": np.arange(len(keys))}))
    rows = con.sql(
        f"SELECT coalesce(s.segment_id, -2) FROM __segtool_keys u LEFT JOIN {seg_table(name)} s ON s.{k} = u.k ORDER BY u.i"
    ).fetchnumpy()
    con.unregister("__segtool_keys")
    return np.asarray(next(iter(rows.values())), dtype=np.int64)


def _write_catalog(con, name: str, catalog: dict, match, run_id: int, ids: np.ndarray) -> None:
    sizes = dict(zip(*np.unique(ids, return_counts=True)))
    existing = {
        r[0]
        for r in con.execute(
            f"SELECT segment_id FROM {STATE}.segment_catalog WHERE segmentation = ?", [name]
        ).fetchall()
    }
    for sid, (label, kws, feats) in catalog.items():
        size = int(sizes.get(sid, 0))
        if sid in existing:
            con.execute(
                f"UPDATE {STATE}.segment_catalog SET label = ?, keywords = ?, features = ?, size = ?, died_run = NULL WHERE segmentation = ? AND segment_id = ?",
                [label, json.dumps(kws), json.dumps(feats), size, name, int(sid)],
            )
        else:
            con.execute(
                f"INSERT INTO {STATE}.segment_catalog VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                [name, int(sid), label, json.dumps(kws), json.dumps(feats), size, run_id],
            )
    live = [int(s) for s in catalog]
    con.execute(
        f"UPDATE {STATE}.segment_catalog SET died_run = ?, size = 0 WHERE segmentation = ? AND died_run IS NULL AND NOT list_contains(?, segment_id)",
        [run_id, name, live],
    )


def _refresh_sizes(con, name: str) -> None:
    con.execute(
        f"""UPDATE {STATE}.segment_catalog c SET size = coalesce((SELECT count(*) FROM {seg_table(name)} s WHERE s.segment_id = c.segment_id), 0)
        WHERE c.segmentation = ?""",
        [name],
    )


def _write_assignments(con, proj, name, keys, ids, dist, conf, run_id: int, *, full: bool) -> None:
    import pyarrow as pa

    k = quote_ident(proj.key)
    batch = pa.table(
        {
            "k": keys,
            "segment_id": pa.array(ids, pa.int32()),
            "distance": pa.array(np.asarray(dist, dtype=np.float64)),
            "confidence": pa.array(np.asarray(conf, dtype=np.float64)),
        }
    )
    con.register("__segtool_assign", batch)
    select = f"""SELECT a.k AS {k}, a.segment_id, CASE WHEN a.segment_id = -1 THEN 'outlier' ELSE coalesce(c.label, 'segment ' || a.segment_id) END AS segment,
        a.distance, a.confidence, {int(run_id)} AS run_id, now()::TIMESTAMP AS updated_at
        FROM __segtool_assign a LEFT JOIN {STATE}.segment_catalog c ON c.segmentation = '{name}' AND c.segment_id = a.segment_id"""
    if full or not table_exists(con, RESULTS, name):
        con.execute(f"CREATE OR REPLACE TABLE {seg_table(name)} AS {select} ORDER BY 1")
    else:
        con.execute(f"DELETE FROM {seg_table(name)} WHERE {k} IN (SELECT k FROM __segtool_assign)")
        con.execute(f"INSERT INTO {seg_table(name)} {select}")
    con.unregister("__segtool_assign")


def _update_history(con, proj, name: str, run_id: int) -> int:
    """Close spells that ended, open new ones. Returns how many users moved
    (had an open spell in another segment)."""
    k = quote_ident(proj.key)
    hist = hist_table(name)
    if not table_exists(con, RESULTS, name + "_history"):
        key_type = one(con.execute(f"SELECT typeof({k}) FROM {seg_table(name)} LIMIT 1"))
        con.execute(
            f"""CREATE TABLE {hist} ({k} {key_type[0] if key_type else "VARCHAR"}, segment_id INTEGER, segment VARCHAR,
            valid_from_run INTEGER, valid_to_run INTEGER, valid_from TIMESTAMP, valid_to TIMESTAMP)"""
        )
    ts = now()
    moved = one(
        con.execute(
            f"""SELECT count(*) FROM {hist} h JOIN {seg_table(name)} s ON s.{k} = h.{k}
        WHERE h.valid_to_run IS NULL AND h.segment_id <> s.segment_id"""
        )
    )[0]
    con.execute(
        f"""UPDATE {hist} h SET valid_to_run = ?, valid_to = ?
        WHERE h.valid_to_run IS NULL AND NOT EXISTS (
            SELECT 1 FROM {seg_table(name)} s WHERE s.{k} = h.{k} AND s.segment_id = h.segment_id)""",
        [run_id, ts],
    )
    con.execute(
        f"""INSERT INTO {hist} SELECT s.{k}, s.segment_id, s.segment, ?, NULL, ?, NULL FROM {seg_table(name)} s
        WHERE NOT EXISTS (SELECT 1 FROM {hist} h WHERE h.{k} = s.{k} AND h.valid_to_run IS NULL)""",
        [run_id, ts],
    )
    return int(moved)


# ----------------------------------------------------------------------------- rules


def _run_rules(runner, con, seg) -> dict:
    proj = runner.proj
    name = seg.name
    k = quote_ident(proj.key)
    # stable ids per segment name
    known = dict(
        con.execute(
            f"SELECT label, segment_id FROM {STATE}.segment_catalog WHERE segmentation = ?", [name]
        ).fetchall()
    )
    next_id = max(known.values(), default=-1) + 1
    order = [r.segment for r in seg.rules] + ([seg.default] if seg.default else [])
    for s in dict.fromkeys(order):
        if s not in known:
            known[s] = next_id
            next_id += 1
            con.execute(
                f"INSERT INTO {STATE}.segment_catalog VALUES (?, ?, ?, '[]', '[]', 0, ?, NULL)",
                [name, known[s], s, runner.run_id],
            )
    from segtool.compile.sql import sql_literal

    pop = population_sql(proj, seg)
    id_case = " ".join(f"WHEN {sql_literal(s)} THEN {i}" for s, i in known.items())
    first = not table_exists(con, RESULTS, name)
    before = None if first else one(con.execute(f"SELECT count(*) FROM {seg_table(name)}"))[0]
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE __segtool_rules AS
        SELECT m.{k}, {rules_case(proj, seg)} AS segment FROM {relation(seg.model)} m
        WHERE m.{k} IN (SELECT {k} FROM ({pop}))"""
    )
    con.execute("DELETE FROM __segtool_rules WHERE segment IS NULL")
    changed = 0
    if not first:
        changed = one(
            con.execute(
                f"""SELECT count(*) FROM __segtool_rules r LEFT JOIN {seg_table(name)} s ON s.{k} = r.{k}
            WHERE s.{k} IS NULL OR s.segment <> r.segment"""
            )
        )[0]
    con.execute(
        f"""CREATE OR REPLACE TABLE {seg_table(name)} AS
        SELECT r.{k}, CAST(CASE r.segment {id_case} END AS INTEGER) AS segment_id, r.segment,
        CAST(NULL AS DOUBLE) AS distance, CAST(1.0 AS DOUBLE) AS confidence, {int(runner.run_id)} AS run_id, now()::TIMESTAMP AS updated_at
        FROM __segtool_rules r ORDER BY 1"""
    )
    con.execute("DROP TABLE __segtool_rules")
    moved = _update_history(con, proj, name, runner.run_id)
    _refresh_sizes(con, name)
    users, n_seg = one(
        con.execute(f"SELECT count(*), count(DISTINCT segment_id) FROM {seg_table(name)}")
    )
    return {
        "action": "rules",
        "reason": "first run" if first else "rules re-evaluated",
        "users": int(users),
        "assigned": int(users if first else changed),
        "moved": moved,
        "segments": int(n_seg),
        "removed": int(max(0, (before or 0) - users)),
    }


# ----------------------------------------------------------------------------- reading


def _require(project, name: str) -> None:
    if name not in project.loaded.segmentations:
        raise ProjectError(
            f"no segmentation named '{name}'", hint=did_you_mean(name, project.loaded.segmentations)
        )


def read_segments(project, name: str):
    _require(project, name)
    con = project.connect(read_only=True)
    try:
        if not table_exists(con, RESULTS, name):
            raise ProjectError(
                f"segmentation '{name}' has not been run yet", hint=f"segtool run -s +{name}"
            )
        return con.sql(f"SELECT * FROM {seg_table(name)} ORDER BY 1").pl()
    finally:
        con.close()


def read_history(project, name: str):
    _require(project, name)
    con = project.connect(read_only=True)
    try:
        if not table_exists(con, RESULTS, name + "_history"):
            raise ProjectError(
                f"segmentation '{name}' has no history yet", hint=f"segtool run -s +{name}"
            )
        return con.sql(f"SELECT * FROM {hist_table(name)} ORDER BY 1, valid_from_run").pl()
    finally:
        con.close()


# ----------------------------------------------------------------------------- tests


def segmentation_tests(project, con, node) -> list:
    from segtool.execute.tests import TestResult

    seg = node.spec
    name = seg.name
    proj = project.loaded
    k = quote_ident(proj.key)
    out: list[TestResult] = []

    def add(test: str, ok: bool, message: str = "", failures: int = 0, examples=None):
        out.append(
            TestResult(
                f"{test}({name})",
                node.unique_id,
                "pass" if ok else "fail",
                failures,
                "" if ok else message,
                examples or [],
                seg.file,
                seg.line,
            )
        )

    if not table_exists(con, RESULTS, name):
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
    table = seg_table(name)
    dups = con.execute(
        f"SELECT {k}, count(*) FROM {table} GROUP BY 1 HAVING count(*) > 1 LIMIT 5"
    ).fetchall()
    add(
        "one_segment_per_user",
        not dups,
        f"{len(dups)}+ user(s) in several segments",
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
            f"{n_missing} user(s) of the population have no segment",
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
        add(
            "min_share",
            not small,
            f"{len(small)} segment(s) below min_share {t.min_share}",
            len(small),
            small,
        )
    if t.max_share is not None:
        big = [(s, lab, round(sh, 4)) for s, lab, sh in shares if sh > t.max_share]
        add(
            "max_share",
            not big,
            f"{len(big)} segment(s) above max_share {t.max_share}",
            len(big),
            big,
        )
    if t.max_moved_share is not None:
        last = one(con.execute(f"SELECT max(valid_from_run) FROM {hist_table(name)}"))[0]
        first = one(con.execute(f"SELECT min(valid_from_run) FROM {hist_table(name)}"))[0]
        if last is None or last == first:
            out.append(
                TestResult(
                    f"max_moved_share({name})",
                    node.unique_id,
                    "pass",
                    0,
                    "",
                    [],
                    seg.file,
                    seg.line,
                )
            )
        else:
            moved = one(
                con.execute(
                    f"SELECT count(DISTINCT {k}) FROM {hist_table(name)} WHERE valid_to_run = ? AND {k} IN (SELECT {k} FROM {table})",
                    [last],
                )
            )[0]
            share = moved / total
            add(
                "max_moved_share",
                share <= t.max_moved_share,
                f"{share:.1%} of users moved in run {last} (max {t.max_moved_share:.0%})",
                moved,
            )
    if t.min_silhouette is not None and not seg.is_rules:
        s = _silhouette(project, con, seg)
        add("min_silhouette", s >= t.min_silhouette, f"silhouette {s:.3f} < {t.min_silhouette}", 0)
    return out


def _silhouette(project, con, seg) -> float:
    """Silhouette of the current assignment in the fitted space, on a sample."""
    from segtool.ml.metrics import silhouette

    active = _active_fit(con, seg.name)
    if active is None:
        return -1.0
    transformers, model, _ = _restore(active)
    k = quote_ident(project.loaded.key)
    users = f"SELECT s.{k}, row_number() OVER (ORDER BY hash(s.{k})) AS __ord FROM {seg_table(seg.name)} s WHERE s.segment_id >= 0"
    sample = f"SELECT * FROM ({users}) WHERE __ord <= 5000"
    loaded = _load_inputs(project.loaded, project_fingerprints(project), con, seg, sample)
    X = model.transform(_apply_transformers(transformers, loaded), loaded.keys)
    ids = con.sql(
        f"SELECT s.segment_id FROM ({sample}) u JOIN {seg_table(seg.name)} s ON s.{k} = u.{k} ORDER BY u.__ord"
    ).fetchnumpy()["segment_id"]
    if len(set(ids.tolist())) < 2:
        return -1.0
    return float(silhouette(X, np.asarray(ids), sample_size=5000, seed=0))
