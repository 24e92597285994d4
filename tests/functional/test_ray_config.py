"""The executor setting of a target and the fit sample of a segmentation:
what needs no Ray (tests/functional/test_ray.py runs on a local Ray)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import ProjectDir, write_files
from tests.fixtures import tiny_project_files

PROFILES = """
targets:
  dev: {database: target/segtool.duckdb}
  cluster:
    database: target/cluster.duckdb
    executor:
      kind: ray
      workers: 4
      gpus_per_worker: 1
      batch_size: 256
"""


def test_executor_spec_defaults_and_values():
    from segtool.project.specs import TargetSpec

    assert TargetSpec().executor.kind == "local"
    ex = TargetSpec(
        executor={"kind": "ray", "address": "auto", "workers": 4, "gpus_per_worker": 1}
    ).executor
    assert (ex.kind, ex.address, ex.workers, ex.gpus_per_worker, ex.batch_size) == (
        "ray",
        "auto",
        4,
        1,
        None,
    )
    assert ex.assign_min_users == 1_000_000


def test_bad_executor_settings_point_at_the_line(make_project):
    files = tiny_project_files()
    files["profiles.yml"] = """
        targets:
          dev:
            executor: {kind: ray, workers: 0}
    """
    pd = make_project(files)
    r = pd.cli("validate", expect=1)
    out = r.stdout + r.stderr
    assert "profiles.yml:3" in out and "workers" in out


def test_ray_target_without_ray_fails_validate_with_the_install_hint(make_project, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "ray" else real(name, *a, **k),
    )
    files = tiny_project_files()
    files["profiles.yml"] = PROFILES
    pd = make_project(files)
    pd.cli("validate")  # the dev target runs locally: Ray is not needed
    r = pd.cli("validate", "--target", "cluster", expect=1)
    out = r.stdout + r.stderr
    assert "Ray is not installed" in out
    assert "pip install 'segtool[ray]'" in out
    assert "profiles.yml:6" in out  # the `kind: ray` line
    r = pd.cli("run", "--target", "cluster", expect=1)
    assert not (pd.root / "target" / "cluster.duckdb").exists()


def test_unset_fit_sample_keeps_fit_hashes():
    """fit_sample is new: unset, it is not part of the definition a fit
    hash covers, so existing segmentations do not refit for it."""
    from segtool.project.specs import ClusterSpec

    assert "fit_sample" not in ClusterSpec().model_dump()
    assert ClusterSpec(fit_sample=5000).model_dump()["fit_sample"] == 5000
    assert ClusterSpec(fit_sample="all").model_dump()["fit_sample"] == "all"
    with pytest.raises(ValueError):
        ClusterSpec(fit_sample=10)


def _with_fit_sample(n_users: int, sample) -> dict[str, str]:
    files = tiny_project_files(n_users=n_users)
    files["segments/segments.yml"] = files["segments/segments.yml"].replace(
        "cluster: {method: kmeans, k: 3, seed: 7}",
        f"cluster: {{method: kmeans, k: 3, seed: 7, fit_sample: {sample}}}",
    )
    return files


def test_fit_on_a_sample_assigns_everyone(tmp_path):
    pd = ProjectDir(write_files(tmp_path / "p", _with_fit_sample(300, 120)))
    pd.cli("run")
    res = json.loads((pd.root / "target/run_results.json").read_text())
    beh = res["summary"]["segmentations"]["behaviour"]
    assert beh["fit_sample"] == 120
    assert beh["executor"] == "local"
    assert pd.sql("select count(*), count(segment_id) from segments.behaviour") == [(300, 300)]
    fitted = json.loads(pd.sql("select params from _segtool.fitted where active")[0][0])
    assert fitted["model"]["n_samples_fit"] == 120
    # the planted groups are still found from the sample
    groups = pd.sql(
        "select count(distinct segment_id) from segments.behaviour group by user_id % 3"
    )
    assert all(n == 1 for (n,) in groups)
    # a refit reads the same sample: the same segments
    first = pd.sql("select user_id, segment_id, distance from segments.behaviour order by 1")
    pd.cli("run", "--refit", "-s", "behaviour")
    again = pd.sql("select user_id, segment_id, distance from segments.behaviour order by 1")
    assert again == first
    # `all` fits on everyone (no sample: nothing in the result says so)
    pd.edit("segments/segments.yml", "fit_sample: 120", "fit_sample: all")
    pd.cli("run")
    res = json.loads((pd.root / "target/run_results.json").read_text())
    assert "fit_sample" not in res["summary"]["segmentations"]["behaviour"]


def test_a_cluster_address_in_profiles_needs_the_environments_confirmation(
    make_project, monkeypatch
):
    """CI runs `segtool run` on a pull request's head: a PR that points the
    executor at its own cluster was joined, sent every text, and Ray Client
    unpickles what a cluster sends back. Now the run stops before writing or
    connecting anything unless SEGTOOL_RAY_ADDRESSES lists the address."""
    import socket

    monkeypatch.delenv("SEGTOOL_RAY_ADDRESSES", raising=False)
    with socket.socket() as listener:  # the "attacker's" head: it must see no connection
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        files = tiny_project_files()
        files["profiles.yml"] = f"""
            targets:
              dev:
                executor: {{kind: ray, address: "ray://127.0.0.1:{port}"}}
        """
        pd = make_project(files)
        before = pd.snapshot()
        for command in ("run", "validate"):  # validate, which CI runs first, says so too
            r = pd.cli(command, expect=1)
            assert (
                f"profiles.yml:3:27: target 'dev' joins the Ray cluster at ray://127.0.0.1:{port}, "
                "which the environment must confirm" in r.stderr
            )
            assert f"export SEGTOOL_RAY_ADDRESSES=ray://127.0.0.1:{port}" in r.stderr
        assert pd.snapshot() == before
        with pytest.raises(TimeoutError):
            listener.accept()
        # another address listed is no confirmation of this one
        monkeypatch.setenv("SEGTOOL_RAY_ADDRESSES", "ray://10.0.0.1:10001, auto")
        pd.cli("run", expect=1)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_the_executor_checks_the_address_where_it_connects(monkeypatch):
    """A spec that did not come through a loaded project (the Python API)."""
    from segtool.errors import ProjectError
    from segtool.execute.executors.ray_executor import connect
    from segtool.project.specs import ExecutorSpec

    monkeypatch.delenv("SEGTOOL_RAY_ADDRESSES", raising=False)
    with pytest.raises(ProjectError, match="which the environment must confirm"):
        connect(ExecutorSpec(kind="ray", address="ray://192.0.2.1:10001"))


def test_ray_address_nothing_answers_at_fails_within_the_connect_timeout(make_project, monkeypatch):
    """ray.init retried an unreachable head for 21 s to minutes: a TCP probe
    first, connect_timeout_s long, with the address and the reason."""
    import socket
    import time

    pytest.importorskip("ray")
    import ray

    if ray.is_initialized():
        pytest.skip("this process already joined a Ray instance")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    files = tiny_project_files()
    files["profiles.yml"] = f"""
        targets:
          dev:
            executor: {{kind: ray, address: "ray://127.0.0.1:{port}", connect_timeout_s: 2}}
    """
    monkeypatch.setenv("SEGTOOL_RAY_ADDRESSES", f"ray://127.0.0.1:{port}")
    pd = make_project(files)
    t0 = time.monotonic()
    r = pd.cli("run", expect=2)  # a runtime failure, as a cluster that is down
    assert time.monotonic() - t0 < 60
    out = r.stdout + r.stderr
    assert f"could not connect to the Ray cluster at ray://127.0.0.1:{port}" in out
    assert f"127.0.0.1:{port} did not accept a connection within 2 s" in out
    assert "connect_timeout_s" in out
    assert not ray.is_initialized()


def test_ray_host_and_port_of_an_address():
    from segtool.execute.executors.ray_executor import _host_port

    assert _host_port("ray://head.example:10001") == ("head.example", 10001)
    assert _host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert _host_port("ray://[::1]:10001") == ("::1", 10001)
    assert _host_port("auto") is None
    assert _host_port("local") is None
    assert _host_port("ray://head") is None


def test_a_cluster_is_waited_for_until_a_node_can_hold_a_worker():
    """A remote cluster may add a node (an autoscaler): the wait returns when
    one has the worker's CPUs and GPUs, and fails after resources_timeout_s
    naming what the nodes have."""
    import time
    from types import SimpleNamespace

    from segtool.errors import ExecutionError
    from segtool.execute.executors.ray_executor import _wait_for_a_node

    cpu_only = {"Alive": True, "Resources": {"CPU": 8.0}}
    gpu_node = {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}
    dead_gpu = {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 4.0}}
    calls = []

    def nodes():
        calls.append(1)
        return [cpu_only, dead_gpu] + ([gpu_node] if len(calls) >= 2 else [])

    _wait_for_a_node(SimpleNamespace(nodes=nodes), "c", cpus=1, gpus=1, timeout_s=30)
    assert len(calls) == 2  # the second look found the added node
    t0 = time.monotonic()
    never = SimpleNamespace(nodes=lambda: [cpu_only, dead_gpu])
    with pytest.raises(ExecutionError) as err:
        _wait_for_a_node(never, "the Ray cluster at auto", cpus=1, gpus=1, timeout_s=0.2)
    assert time.monotonic() - t0 < 5
    assert (
        "the Ray cluster at auto has no node with 1 CPU and 1 GPU for one worker (waited 0.2 s): "
        "its nodes have 8 CPU 0 GPU; Ray would queue the workers forever" in str(err.value)
    )
    _wait_for_a_node(never, "c", cpus=8, gpus=0, timeout_s=0)  # CPUs only: the CPU node holds it
