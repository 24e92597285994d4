"""Segmentations: execute a planned step in one transaction (segment table,
history, fitted model, catalog and stored inputs change together or not at
all).

    inputs.py   population, input hashes, data checks, feature/vector blocks
    fit.py      fit on every user, stable ids, labels
    update.py   assign new and changed users with the stored model; drift
    rules.py    rule segments
    store.py    the segmentation's tables
"""

from __future__ import annotations

import time

from segtool.compile.segments import fit_hash
from segtool.compile.sql import quote_ident
from segtool.execute.context import StepResult
from segtool.state import tables
from segtool.words import above


def execute_segmentation(ctx, step) -> StepResult:
    from segtool.state.db import record_nodes, rollback
    from segtool.state.tables import work_table

    t0 = time.perf_counter()
    node = ctx.graph[step.unique_id]
    seg = node.spec
    if step.action == "skip":
        return StepResult.of(step)
    # NumPy and the fitting code: imported when a segmentation has work, so a
    # run with nothing to do (and `import drivers`) goes without them
    from segtool.execute.segment import fit, rules, store, update

    con = ctx.con
    name = seg.name
    k = quote_ident(ctx.loaded.key)
    action, reason = step.action, step.reason
    con.execute("BEGIN")
    try:
        if seg.is_rules:
            # drivers and traits are measured again when the rules are new or
            # changed (like a fit), not for an assignment of changed users
            stored = ctx.planner.state.node(step.unique_id)
            extra: dict = {}
            touched = rules.write_rules(
                ctx,
                seg,
                work_table("rules", name),
                refresh=stored is None or stored.own_hash != node.own_hash,
            )
        else:
            users = work_table("seg", name, "users")
            fhash = fit_hash(ctx.loaded, ctx.encoders.fingerprint, seg)
            if action in ("create", "refit"):
                extra = fit.fit(ctx, seg, users, fhash)
                full = True
            else:
                changed = work_table("seg", name, "changed")
                extra = update.assign_changed(ctx, seg, users, changed, store.active_fit(con, name))
                drift = extra.get("drift")
                full = False
                if drift and drift["score"] > seg.update.drift_threshold:
                    # the policy the plan stated: refit if drift > threshold
                    action = "refit"
                    reason = (
                        f"drift {above(drift['score'], seg.update.drift_threshold)} > {seg.update.drift_threshold}: "
                        "refit on every user (update.refit: on_drift)"
                    )
                    extra.update(fit.fit(ctx, seg, users, fhash))
                    extra["assigned"] = step.detail.get("users")
                    full = True
            # each user's inputs, for the next plan's change detection
            if full:
                con.execute(
                    f"CREATE OR REPLACE TABLE {tables.inputs(name)} AS SELECT {k}, input_hash, {int(ctx.run_id)} AS run_id FROM {users}"
                )
            else:
                con.execute(
                    f"DELETE FROM {tables.inputs(name)} WHERE {k} NOT IN (SELECT {k} FROM {users}) "
                    f"OR {k} IN (SELECT {k} FROM {changed})"
                )
                con.execute(
                    f"INSERT INTO {tables.inputs(name)} SELECT u.{k}, u.input_hash, {int(ctx.run_id)} FROM {users} u "
                    f"WHERE u.{k} IN (SELECT {k} FROM {changed})"
                )
        # after an assignment only the changed users and those who left can move
        if not seg.is_rules:
            touched = (
                None
                if full
                else (
                    f"SELECT {k} FROM {changed} UNION ALL SELECT h.{k} FROM {tables.history(name)} h "
                    f"WHERE h.valid_to_run IS NULL AND h.{k} NOT IN (SELECT {k} FROM {users})"
                )
            )
        extra["moved"] = store.update_history(con, ctx.loaded, name, ctx.run_id, touched)
        store.refresh_sizes(con, name)
        extra["segments"] = store.segment_count(con, name)
        asked = None if seg.is_rules or seg.cluster.method == "hdbscan" else seg.cluster.k
        if isinstance(asked, int) and full and extra["segments"] < asked:
            # a fit with k near the number of distinct users leaves segments
            # without a user: they were dropped without a word
            ctx.reporter.warn(
                f"segmentation '{name}': k={asked} asked, {extra['segments']} segments found: "
                "the others would hold no user (users with identical inputs cannot be split)"
            )
        record_nodes(con, [node], ctx.run_id, ctx.planner.hashes)
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    detail = {**step.detail, **extra}
    return StepResult(
        step.unique_id,
        step.kind,
        action,
        reason,
        detail,
        seconds=round(time.perf_counter() - t0, 3),
    )
