"""Fit a clustering on every user of its population, keep segment ids stable
(warm start from the previous assignment, then Hungarian matching by member
overlap), label the segments, and store the fitted model."""

from __future__ import annotations

import numpy as np

from segtool.compile.segments import hidden_pii
from segtool.compile.sql import quote_ident
from segtool.execute.segment import drivers, store
from segtool.execute.segment.inputs import load_inputs
from segtool.state import tables
from segtool.state.result import one


def label_sample(ids: np.ndarray, seed: int, per_segment: int = 2000) -> np.ndarray:
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


def texts_of(con, proj, text: str, keys: np.ndarray) -> list[str]:
    """The rendered texts of these users, in this order."""
    from segtool.state.frames import registered

    k = quote_ident(proj.key)
    with registered(con, "__segtool_label_keys", {"k": keys, "i": np.arange(len(keys))}):
        return [
            r[0]
            for r in con.execute(
                f"SELECT t.text FROM __segtool_label_keys u JOIN {tables.texts(text)} t ON t.{k} = u.k ORDER BY u.i"
            ).fetchall()
        ]


# a fit reads every user up to this many, a seeded sample of this many beyond
# (`cluster.fit_sample` sets another size, or `all`); see docs/scale.md
FIT_SAMPLE_DEFAULT = 1_000_000


def fit_population(con, seg, users: str) -> tuple[str, str | None, int]:
    """(the table of the users the fit reads, the table of the others or
    None, how many others); both are (key, ..., __ord 1..n). The sample is
    seeded (`cluster.seed`) over the population's order, so a refit of the
    same population reads the same users."""
    from segtool.state.frames import registered
    from segtool.state.tables import work_table

    n = int(one(con.execute(f"SELECT count(*) FROM {users}"))[0])
    setting = seg.cluster.fit_sample
    m = n if setting == "all" else min(n, setting or FIT_SAMPLE_DEFAULT)
    if m >= n:
        return users, None, 0
    rng = np.random.default_rng(seg.cluster.seed)
    picked = np.sort(rng.choice(n, size=m, replace=False)) + 1  # their __ord
    sample = work_table("seg", seg.name, "fit_sample")
    rest = work_table("seg", seg.name, "fit_rest")
    with registered(con, "__segtool_fit_sample", {"o": picked, "i": np.arange(1, m + 1)}):
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {sample} AS SELECT u.* EXCLUDE (__ord), s.i AS __ord
            FROM {users} u JOIN __segtool_fit_sample s ON s.o = u.__ord"""
        )
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {rest} AS SELECT u.* EXCLUDE (__ord),
            row_number() OVER (ORDER BY u.__ord) AS __ord
            FROM {users} u ANTI JOIN __segtool_fit_sample s ON s.o = u.__ord"""
        )
    return sample, rest, n - m


def fit(ctx, seg, users: str, fhash: str) -> dict:
    """Fit on the users of the table `users` (key, __ord), or a seeded sample
    of them (`cluster.fit_sample`); write the fitted model, catalog, events and
    the assignment of every user."""
    from segtool.compile.jinja import literal_text
    from segtool.ml.features import FeatureTransformer
    from segtool.ml.labels import feature_profile, keyword_labels, literal_words, segment_label
    from segtool.ml.matching import match_clusters
    from segtool.ml.pipeline import SegmentModel

    proj = ctx.loaded
    con = ctx.con
    name = seg.name
    sample, rest, n_rest = fit_population(con, seg, users)
    loaded = load_inputs(proj, ctx.encoders.fingerprint, con, seg, f"SELECT * FROM {sample}")
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
    # stable ids: start from the previous assignment, then match by member
    # overlap; not from an assignment no fit made (the segmentation was rules
    # until now: its segments are no clusters to start from or to inherit ids)
    prev = (
        store.previous_ids(con, proj, name, loaded.keys)
        if store.has_active_fit(con, name)
        else np.full(len(loaded.keys), -2, dtype=np.int64)
    )
    model = SegmentModel(
        [i.weight for i in seg.inputs], seg.reduce, seg.cluster, input_names=names
    ).fit(blocks, loaded.keys, init_labels=prev if (prev >= 0).any() else None)
    labels, dist, conf = model.predict(blocks, loaded.keys)
    # the inputs are done with: at 1M users the vectors alone are a gigabyte,
    # and the labels, drivers and writes below would otherwise hold them too
    blocks = loaded.blocks = None

    alive = [
        r[0]
        for r in con.execute(
            f"SELECT segment_id FROM {tables.CATALOG} WHERE segmentation = ? AND died_run IS NULL AND segment_id >= 0",
            [name],
        ).fetchall()
    ]
    next_id = one(
        con.execute(
            f"SELECT coalesce(max(segment_id) + 1, 0) FROM {tables.CATALOG} WHERE segmentation = ?",
            [name],
        )
    )[0]
    match = match_clusters(prev, labels, alive, int(next_id))
    ids = match.apply(labels)

    # what drives the segmentation and sets each segment apart (its traits),
    # read from the models that feed it; labels say only what is true of members
    from segtool.state.frames import registered

    with registered(con, "__segtool_fit_ids", {proj.key: loaded.keys, "segment_id": ids}):
        profile = drivers.compute(con, proj, seg, "__segtool_fit_ids", ctx.project.pii_columns())
    kw = {}
    text_input = next((i.embedding.text for i in seg.inputs if i.embedding), None)
    if text_input and seg.labels.keywords:
        # keywords read a seeded sample of each segment's texts, not every user's;
        # words the template writes for everyone never name a segment
        idx = label_sample(ids, seg.cluster.seed)
        texts = texts_of(con, proj, text_input, loaded.keys[idx])
        template = proj.templates[proj.texts[text_input].template].text
        kw = keyword_labels(
            texts,
            ids[idx],
            seg.labels.keywords,
            seed=seg.cluster.seed,
            exclude=literal_words([literal_text(template)]),
            min_doc_share=drivers.MIN_SHARE,
            min_lift=drivers.MIN_LIFT,
        )
    prof = {}
    first_features = next((i.features for i in seg.inputs if i.features), None)
    if loaded.raw is not None and seg.labels.features and first_features:
        num = [
            c for c, spec in proj.features[first_features].columns.items() if spec.type == "numeric"
        ]
        if num:
            X = loaded.raw.select(num).to_numpy().astype(np.float64)
            prof = feature_profile(X, num, ids, seg.labels.features)
    catalog = {}
    for sid in sorted(set(ids.tolist())):
        traits = profile.traits.get(sid, [])
        if sid < 0:
            catalog[sid] = ("outlier", [], [], traits)
            continue
        catalog[sid] = (
            segment_label(traits, kw.get(sid, [])),
            kw.get(sid, []),
            prof.get(sid, []),
            traits,
        )
    drivers.save(con, name, ctx.run_id, profile.drivers)

    params = {
        "label_to_id": {str(k_): v for k_, v in match.mapping.items()},
        # the labels settings the catalog was written with: until the next
        # fit, a plan says when they differ from the project's
        "labels": ctx.graph[f"segmentation.{name}"].part_hashes().get("labels"),
        # the PII columns its traits and labels left out: one marked since
        # may be named, with its values, in the labels until the next fit
        "pii": hidden_pii(proj, seg, ctx.project.pii_columns()),
    }
    store.save_fit(con, name, fhash, ctx.run_id, transformers, model, params)
    store.write_catalog(con, name, catalog, ctx.run_id, ids)
    store.write_assignments(con, proj, name, loaded.keys, ids, dist, conf, ctx.run_id, full=True)
    scaled = {"executor": "local", "workers": 1}  # the fit itself runs here
    if n_rest:  # the users outside the fit sample, with the model just stored
        from segtool.execute.executors import assign_users

        scaled["fit_sample"] = len(loaded.keys)
        scaled.update(assign_users(ctx, seg, rest, n_rest, store.active_fit(con, name)))
    events = {
        "births": match.births,
        "deaths": match.deaths,
        "splits": match.splits,
        "merges": match.merges,
    }
    store.record_events(con, name, ctx.run_id, events)
    return {
        "segments": int(len([s for s in catalog if s >= 0])),
        "k": int(getattr(model, "k_", len(catalog))),
        "events": {k_: len(v) for k_, v in events.items()},
        **scaled,
    }
