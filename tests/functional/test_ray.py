"""The Ray executor on a local Ray instance (2 CPUs): the same project on a
local and a ray target gives identical vectors and segments; a worker killed
mid-stage loses no committed vector; a run stopped mid-stage keeps what it
committed and the next one embeds only the rest; assignment on Ray workers
gives the local predictions bit for bit. Skipped without Ray."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from tests.conftest import ProjectDir, write_files  # noqa: E402
from tests.fixtures import tiny_project_files  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One Ray instance for the module (segtool joins the one its process has)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def profiles(**executor) -> str:
    settings = ", ".join(f"{k}: {v}" for k, v in {"kind": "ray", **executor}.items())
    return f"""
        targets:
          dev: {{database: target/segtool.duckdb}}
          cluster:
            database: target/cluster.duckdb
            executor: {{{settings}}}
    """


def make(tmp_path, files: dict[str, str], **executor) -> ProjectDir:
    files = {**files, "profiles.yml": profiles(**executor)}
    return ProjectDir(write_files(tmp_path / "proj", files))


def db_vectors(pd: ProjectDir, db: str) -> dict[str, np.ndarray]:
    import duckdb

    con = duckdb.connect(str(pd.root / "target" / db), read_only=True)
    try:
        (table,) = con.execute("select table_name from _segtool.encoders").fetchone()
        rows = con.execute(f'select text_hash, vector from _segtool."{table}"').fetchall()
    finally:
        con.close()
    out = {h: np.asarray(v, dtype=np.float32) for h, v in rows}
    assert len(out) == len(rows), "a text was stored twice"
    return out


def db_rows(pd: ProjectDir, db: str, sql: str):
    import duckdb

    con = duckdb.connect(str(pd.root / "target" / db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def same_vectors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[h], b[h]) for h in a)


SEGMENTS = "select user_id, segment_id, distance, confidence from segments.behaviour order by 1"


def results(pd: ProjectDir) -> dict:
    return json.loads((pd.root / "target/run_results.json").read_text())["summary"]


def bert_files(tmp_path: Path, n_users: int) -> dict[str, str]:
    from tests.fixtures import save_tiny_bert

    files = tiny_project_files(n_users=n_users)
    files["segments/segments.yml"] = (
        files["segments/segments.yml"]
        .replace(
            "- name: hash\n                kind: hashing\n                dim: 256",
            f"- name: bert\n                kind: transformers\n                model: {save_tiny_bert(tmp_path / 'bert')}\n                device: cpu\n                batch_size: 16",
        )
        .replace("encoder: hash}", "encoder: bert}")
    )
    assert "kind: transformers" in files["segments/segments.yml"]
    return files


# ----------------------------------------------------------------------------- same results


def test_hashing_local_and_ray_targets_give_identical_vectors_and_segments(tmp_path):
    files = tiny_project_files(n_users=300)
    pd = make(tmp_path, files, workers=2, batch_size=32)
    pd.cli("run")
    local = results(pd)["embeddings"]["story.hash"]
    assert (local["executor"], local["workers"]) == ("local", 1)
    r = pd.cli("run", "--target", "cluster")
    assert "on Ray (2 workers x 1 CPU, local instance)" in r.stdout or "texts/s on ray" in r.stdout
    got = results(pd)["embeddings"]["story.hash"]
    assert got["executor"] == "ray" and got["workers"] == 2
    assert got["embedded"] == got["texts"] == local["texts"]
    assert got["shards"] == -(-got["texts"] // 32)
    assert sum(w["texts"] for w in got["per_worker"]) == got["embedded"]
    assert got["texts_per_s"] > 0 and got["device"].startswith("ray (")
    # connecting (starting the local Ray instance) is its own figure, not staging's:
    # both lie before the first shard came back
    assert got["connect_s"] >= 0 and got["stage_s"] >= 0
    assert got["connect_s"] + got["stage_s"] <= got["startup_s"] + 0.002  # rounding
    # hashing vectors do not depend on batching: identical at any batch size
    assert same_vectors(db_vectors(pd, "segtool.duckdb"), db_vectors(pd, "cluster.duckdb"))
    assert db_rows(pd, "segtool.duckdb", SEGMENTS) == db_rows(pd, "cluster.duckdb", SEGMENTS)
    # nothing changed: nothing is sent to Ray again
    pd.cli("run", "--target", "cluster")
    assert results(pd)["embeddings"]["story.hash"]["action"] == "skip"


def test_tiny_transformer_local_and_ray_targets_give_identical_vectors(tmp_path):
    """With the default batch_size (the local chunk) an actor encodes the very
    texts of a local encode call: bit-identical vectors."""
    pd = make(tmp_path, bert_files(tmp_path, 120), workers=2)
    pd.cli("run")
    pd.cli("run", "--target", "cluster")
    got = results(pd)["embeddings"]["story.bert"]
    assert got["executor"] == "ray" and got["embedded"] == got["texts"] > 0
    assert same_vectors(db_vectors(pd, "segtool.duckdb"), db_vectors(pd, "cluster.duckdb"))
    assert db_rows(pd, "segtool.duckdb", SEGMENTS) == db_rows(pd, "cluster.duckdb", SEGMENTS)


# ----------------------------------------------------------------------------- failures


def encoder_actor_pids() -> list[int]:
    """Processes of Ray Data's encoder actors on this machine (their title
    names the UDF class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"_EncodeActor" in cmd and b"MapWorker" in cmd:
            pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_stage_loses_no_committed_vector(tmp_path, monkeypatch):
    """SIGKILL an encoder actor right after the second shard is committed:
    Ray Data restarts it and retries its shard; every committed vector stays,
    none is written twice, and the result equals a local run's (whose chunk
    is the shard size, so the texts of each encode call match)."""
    import segtool.execute.embed as embed
    from segtool.state import vectors
    from segtool.state.result import one

    pd = make(tmp_path, bert_files(tmp_path, 300), workers=2, batch_size=8)

    real_insert = vectors.insert
    seen = {"commits": 0, "killed": [], "committed_then": 0}

    def insert(con, table, hashes, vecs, run_id):
        real_insert(con, table, hashes, vecs, run_id)
        seen["commits"] += 1
        seen["committed_then"] += len(hashes)
        if seen["commits"] == 2:
            seen["at_kill"] = one(con.execute(f"select count(*) from {table}"))[0]
            for pid in encoder_actor_pids()[:1]:
                os.kill(pid, signal.SIGKILL)
                seen["killed"].append(pid)

    monkeypatch.setattr(vectors, "insert", insert)
    pd.cli("run", "--target", "cluster")
    monkeypatch.setattr(vectors, "insert", real_insert)
    assert seen["killed"], "no encoder actor was found to kill"
    got = results(pd)["embeddings"]["story.bert"]
    assert seen["at_kill"] < got["texts"], "the kill came after the last shard"
    assert got["embedded"] == got["texts"] == seen["committed_then"]
    ray_vecs = db_vectors(pd, "cluster.duckdb")  # asserts no text is stored twice
    assert len(ray_vecs) == got["texts"]

    monkeypatch.setattr(embed, "CHUNK", 8)
    pd.cli("run")
    assert same_vectors(db_vectors(pd, "segtool.duckdb"), ray_vecs)
    # the rerun has nothing left to do
    pd.cli("run", "--target", "cluster")
    assert results(pd)["embeddings"]["story.bert"]["action"] == "skip"


def test_a_run_stopped_mid_stage_keeps_its_shards_and_the_next_sends_the_rest(
    tmp_path, monkeypatch
):
    from segtool.state import vectors

    pd = make(tmp_path, tiny_project_files(n_users=300), workers=2, batch_size=16)
    real_insert = vectors.insert
    calls = {"n": 0}

    def insert(con, table, hashes, vecs, run_id):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("the driver was stopped")
        real_insert(con, table, hashes, vecs, run_id)

    monkeypatch.setattr(vectors, "insert", insert)
    r = pd.cli("run", "--target", "cluster", expect=2)
    assert "the driver was stopped" in r.stdout + r.stderr
    monkeypatch.setattr(vectors, "insert", real_insert)
    kept = db_vectors(pd, "cluster.duckdb")
    assert len(kept) == 3 * 16
    assert db_rows(pd, "cluster.duckdb", "select status from _segtool.runs") == [("error",)]

    pd.cli("run", "--target", "cluster")
    got = results(pd)["embeddings"]["story.hash"]
    assert got["cached"] == len(kept)
    assert got["embedded"] == got["texts"] - len(kept)
    after = db_vectors(pd, "cluster.duckdb")
    assert all(np.array_equal(after[h], kept[h]) for h in kept)
    pd.cli("run")
    assert same_vectors(db_vectors(pd, "segtool.duckdb"), after)
    assert db_rows(pd, "segtool.duckdb", SEGMENTS) == db_rows(pd, "cluster.duckdb", SEGMENTS)


# ----------------------------------------------------------------------------- assignment

CLUSTERINGS = """
              - name: by_gmm
                inputs:
                  - {embedding: {text: story, encoder: hash}, weight: 1.0}
                  - {features: rfm, weight: 0.3}
                reduce: {method: pca, n_components: 4}
                cluster: {method: gmm, k: 3, seed: 1}
                labels: {keywords: 0}
              - name: by_hdbscan
                inputs:
                  - {embedding: {text: story, encoder: hash}}
                cluster: {method: hdbscan, min_cluster_size: 5}
                labels: {keywords: 0}
"""


def test_assignment_on_ray_workers_equals_the_local_predict(tmp_path):
    """executors.assign_users' parallel path: chunks of input blocks and the
    stored fit (params + npz) go to Ray tasks; labels, distances and
    confidences equal SegmentModel.predict on all users at once, bit for bit."""
    import duckdb

    from segtool.api import Project
    from segtool.encoders.builder import Encoders
    from segtool.execute.executors import Fitted, executor_for
    from segtool.execute.executors.local import LocalExecutor
    from segtool.execute.segment import store
    from segtool.execute.segment.inputs import apply_transformers, load_inputs
    from segtool.project.loader import load_project
    from segtool.project.specs import ExecutorSpec

    files = tiny_project_files(n_users=300)
    files["segments/segments.yml"] = files["segments/segments.yml"].replace(
        "              - name: lifecycle",
        CLUSTERINGS.strip("\n") + "\n              - name: lifecycle",
    )
    pd = make(tmp_path, files, workers=2)
    pd.cli("run")
    project = Project(load_project(pd.root))
    loaded = project.loaded
    encoders = Encoders(loaded)
    con = duckdb.connect(str(pd.db), read_only=True)
    ray_exec = executor_for(ExecutorSpec(kind="ray", workers=2))
    try:
        for name in ("behaviour", "by_gmm", "by_hdbscan"):
            seg = loaded.segmentations[name]
            users = f"SELECT user_id, row_number() OVER (ORDER BY user_id) AS __ord FROM segments.{name}"
            everyone = load_inputs(loaded, encoders.fingerprint, con, seg, users)
            row = store.active_fit(con, name)
            transformers, model, _ = store.restore(row)
            want = model.predict(apply_transformers(transformers, everyone), everyone.keys)

            def chunks(loaded=everyone, size=64):
                for lo in range(0, len(loaded.keys), size):
                    hi = lo + size
                    yield lo, [b[lo:hi] for b in loaded.blocks], loaded.keys[lo:hi]

            fitted = Fitted.of(name, row)
            for ex in (LocalExecutor(), ray_exec):
                parts = sorted(ex.predict(fitted, chunks()), key=lambda p: p[0])
                assert [p[0] for p in parts] == list(range(0, len(everyone.keys), 64))
                for i, array in enumerate(want):
                    got = np.concatenate([p[1 + i] for p in parts])
                    assert np.array_equal(got, array), (name, ex.kind, i)
    finally:
        con.close()


def test_fit_sample_with_the_rest_assigned_on_ray_matches_local(tmp_path):
    """A fit on a sample, the other users assigned on Ray (assign_min_users
    set low): the same segments as the same fit assigned locally."""
    files = tiny_project_files(n_users=300)
    files["segments/segments.yml"] = files["segments/segments.yml"].replace(
        "cluster: {method: kmeans, k: 3, seed: 7}",
        "cluster: {method: kmeans, k: 3, seed: 7, fit_sample: 120}",
    )
    pd = make(tmp_path, files, workers=2, assign_min_users=50)
    pd.cli("run")
    pd.cli("run", "--target", "cluster")
    beh = results(pd)["segmentations"]["behaviour"]
    assert beh["fit_sample"] == 120
    assert (beh["executor"], beh["workers"]) == ("ray", 2)
    assert db_rows(pd, "segtool.duckdb", SEGMENTS) == db_rows(pd, "cluster.duckdb", SEGMENTS)


def test_workers_no_node_can_hold_fail_at_once_and_name_what_the_nodes_have(tmp_path):
    """gpus_per_worker on a cluster without a GPU: Ray would queue the
    actors forever (the run hung). A local instance never grows: an error
    before anything is sent, with the nodes' resources."""
    files = tiny_project_files(n_users=60)
    pd = make(tmp_path, files, workers=1, gpus_per_worker=1)
    r = pd.cli("run", "--target", "cluster", expect=2)
    out = r.stdout + r.stderr
    assert "a local Ray instance has no node with 1 CPU and 1 GPU for one worker" in out
    assert "2 CPU 0 GPU" in out
    assert "gpus_per_worker: 0" in out
    # the models and texts were kept; no vector was written
    assert db_rows(pd, "cluster.duckdb", "select count(*) from main.user_features")[0][0] == 60
    encoders = db_rows(pd, "cluster.duckdb", "select table_name from _segtool.encoders")
    assert all(
        db_rows(pd, "cluster.duckdb", f'select count(*) from _segtool."{t}"')[0][0] == 0
        for (t,) in encoders
    )


def test_an_encoder_error_on_a_worker_reaches_the_user_with_its_hint(tmp_path, monkeypatch):
    """A worker whose encoder cannot be used (here: other model files, so
    another fingerprint than the driver's) raised in the actor's creation:
    Ray said only 'The actor died because of an error raised in its creation
    task' (exit 2, ~200 lines of tracebacks), the segtool message and hint lost."""
    from segtool.encoders.builder import Encoders

    pd = make(tmp_path, tiny_project_files(n_users=60), workers=1)
    real = Encoders.fingerprint
    monkeypatch.setattr(  # the driver's files differ from the worker's
        Encoders, "fingerprint", lambda self, name: "f" * 64 if name == "hash" else real(self, name)
    )
    r = pd.cli("run", "--target", "cluster", expect=1)
    out = r.stdout + r.stderr
    assert "encoder 'hash' on Ray worker" in out and "the driver's is ffffffffffff" in out
    assert "hint: install the same segtool and model files on every node" in out
    assert "the 0 vectors this run committed are kept" in out
    assert "segtool-error:" not in out and "actor died" not in out
    assert db_rows(pd, "cluster.duckdb", "select status from _segtool.runs") == [("error",)]
