"""Pydantic specs, their validation errors (file:line:col, 'did you mean'),
and the project loader (root discovery, --vars, env_var, profiles/targets)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from segtool.errors import ProjectError, ProjectErrors
from segtool.project.loader import find_project_root, load_project, parse_vars
from segtool.project.secrets import Secrets
from segtool.project.specs import (
    ClusterSpec,
    EncoderSpec,
    FeatureColumnSpec,
    FeatureSetSpec,
    InputSpec,
    ProfilesSpec,
    ProjectSpec,
    SegmentationSpec,
    SegmentsFile,
)
from segtool.project.validation import require_mapping, validate_spec
from segtool.project.yamlio import parse_yaml
from tests.conftest import write_files
from tests.fixtures import tiny_project_files


def check(cls, text: str, rel: str = "segments/s.yml"):
    data, marks = parse_yaml(text, rel)
    return validate_spec(cls, data, marks=marks, rel=rel)


def errors_of(cls, text: str, rel: str = "segments/s.yml") -> list[ProjectError]:
    spec, errs = check(cls, text, rel)
    assert spec is None and errs
    return errs


# ----------------------------------------------------------------- defaults


def test_clustering_segmentation_gets_default_cluster():
    seg = SegmentationSpec(name="b", inputs=[{"features": "rfm"}])
    assert not seg.is_rules
    assert seg.cluster == ClusterSpec()
    assert (seg.cluster.method, seg.cluster.k, seg.cluster.seed) == ("kmeans", 8, 0)
    assert seg.cluster.k_range == (2, 12)
    assert seg.reduce.method == "none"
    assert seg.update.refit == "on_drift" and seg.update.drift_threshold == 0.25
    assert seg.labels.keywords == 5
    assert seg.inputs[0].weight == 1.0


def test_rule_segmentation_keeps_no_cluster():
    seg = SegmentationSpec(
        name="r", model="m", rules=[{"segment": "vip", "when": "x > 1"}], default="rest"
    )
    assert seg.is_rules
    assert seg.cluster is None


def test_k_auto_and_none_accepted():
    assert ClusterSpec(k="auto").k == "auto"
    assert ClusterSpec(k=None).k is None


def test_encoder_dims_is_dim():
    # `dims` is model2vec's word for the static encoder's PCA size
    assert EncoderSpec(name="f", kind="static", model="m", dims=128).dim == 128
    with pytest.raises(ValidationError, match="give `dim` or `dims`, not both"):
        EncoderSpec(name="f", kind="static", model="m", dim=128, dims=128)


def test_encoder_defaults():
    enc = EncoderSpec(name="h", kind="hashing")
    assert enc.model is None
    assert (enc.pooling, enc.normalize, enc.max_length, enc.batch_size) == ("mean", True, 256, 64)
    assert (enc.device, enc.dtype, enc.backend, enc.quantize, enc.dim) == (
        "auto",
        "auto",
        "torch",
        "none",
        None,  # the kind's own default: 512 buckets (hashing), 256 dims (static)
    )


def test_feature_columns_none_filled_with_defaults():
    fs = FeatureSetSpec(name="rfm", model="m", columns={"a": None, "b": {"type": "categorical"}})
    assert fs.columns["a"] == FeatureColumnSpec()
    assert fs.columns["a"].transform == "none" and fs.columns["a"].impute == "error"
    assert fs.columns["b"].type == "categorical"
    assert fs.scale == "standard"


def test_feature_set_needs_a_column():
    with pytest.raises(ValidationError, match="at least one column"):
        FeatureSetSpec(name="rfm", model="m", columns={})


def test_project_spec_defaults():
    p = ProjectSpec(name="shop")
    assert (p.entity.name, p.entity.key) == ("user", "user_id")
    assert (p.paths.models, p.paths.templates, p.paths.segments) == (
        "models",
        "templates",
        "segments",
    )
    assert p.vars == {} and p.target is None


# ----------------------------------------------------------------- encoder rules


def test_hashing_needs_no_model():
    assert EncoderSpec(name="h", kind="hashing").kind == "hashing"


@pytest.mark.parametrize("kind", ["transformers", "sentence-transformers"])
def test_model_backed_encoder_needs_model(kind):
    with pytest.raises(ValidationError, match=f"encoder kind '{kind}' needs `model`"):
        EncoderSpec(name="e", kind=kind)
    assert EncoderSpec(name="e", kind=kind, model="org/m").model == "org/m"


def test_int8_needs_onnx():
    with pytest.raises(ValidationError, match="quantize: int8 needs backend: onnx"):
        EncoderSpec(name="e", kind="transformers", model="m", quantize="int8")
    ok = EncoderSpec(name="e", kind="transformers", model="m", quantize="int8", backend="onnx")
    assert ok.quantize == "int8"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_valid_devices(device):
    assert EncoderSpec(name="h", kind="hashing", device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU"])
def test_invalid_devices(device):
    with pytest.raises(ValidationError, match="device must be auto, cpu, cuda, cuda:N or mps"):
        EncoderSpec(name="h", kind="hashing", device=device)


def test_max_length_bounds():
    with pytest.raises(ValidationError):
        EncoderSpec(name="h", kind="hashing", max_length=4)
    with pytest.raises(ValidationError):
        EncoderSpec(name="h", kind="hashing", max_length=10_000)


# ----------------------------------------------------------------- segmentation shape


def test_rules_need_model():
    with pytest.raises(ValidationError, match="rule segments need `model`"):
        SegmentationSpec(name="r", rules=[{"segment": "a", "when": "x > 1"}])


def test_rules_and_inputs_are_exclusive():
    with pytest.raises(ValidationError, match="either `rules` or `inputs` \\+ `cluster`, not both"):
        SegmentationSpec(
            name="r", model="m", rules=[{"segment": "a", "when": "x"}], inputs=[{"features": "f"}]
        )
    with pytest.raises(ValidationError, match="not both"):
        SegmentationSpec(
            name="r", model="m", rules=[{"segment": "a", "when": "x"}], cluster={"k": 3}
        )


def test_segmentation_needs_inputs_or_rules():
    with pytest.raises(ValidationError, match="needs `inputs`"):
        SegmentationSpec(name="empty")


def test_input_is_embedding_xor_features():
    with pytest.raises(ValidationError, match="either"):
        InputSpec()
    with pytest.raises(ValidationError, match="either"):
        InputSpec(features="f", embedding={"text": "t", "encoder": "e"})
    assert InputSpec(embedding={"text": "t", "encoder": "e"}).embedding.encoder == "e"
    with pytest.raises(ValidationError):
        InputSpec(features="f", weight=0)


def test_k_must_be_positive():
    with pytest.raises(ValidationError, match="k must be at least 1"):
        ClusterSpec(k=0)


# ----------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["rfm", "_x", "A1_b2"])
def test_valid_names(name):
    assert FeatureSetSpec(name=name, model="m", columns={"a": None}).name == name


@pytest.mark.parametrize("name", ["9lives", "has-dash", "has space", "", "dot.ted", "é"])
def test_invalid_names(name):
    with pytest.raises(ValidationError, match="is not a valid name"):
        EncoderSpec(name=name, kind="hashing")
    with pytest.raises(ValidationError, match="is not a valid name"):
        ProjectSpec(name=name)


# ----------------------------------------------------------------- validate_spec errors


def test_valid_file_attaches_file_and_line_to_nested_specs():
    text = (
        "features:\n"
        "  - name: rfm\n"
        "    model: m\n"
        "    columns: {a: }\n"
        "segmentations:\n"
        "  - name: b\n"
        "    inputs:\n"
        "      - {features: rfm}\n"
    )
    spec, errs = check(SegmentsFile, text)
    assert errs == []
    seg = spec.segmentations[0]
    assert (seg.file, seg.line) == ("segments/s.yml", 6)
    assert seg.inputs[0].line == 8
    assert spec.features[0].line == 2
    # the defaulted cluster is not in the file: it points at its segmentation
    assert seg.cluster.line == 6


def test_unknown_top_level_key_hint():
    (e,) = errors_of(SegmentsFile, "segmentations: []\nencoder: []\n")
    assert e.message == "unknown key 'encoder'"
    assert e.hint == "did you mean 'encoders'?"
    assert (e.path, e.line, e.col) == ("segments/s.yml", 2, 1)


def test_unknown_nested_key_did_you_mean():
    text = (
        "segmentations:\n"
        "  - name: b\n"
        "    inputs: [{features: rfm}]\n"
        "    cluster: {methd: kmeans, k: 3}\n"
    )
    (e,) = errors_of(SegmentsFile, text)
    assert e.message == "unknown key 'methd'"
    assert e.hint == "did you mean 'method'?"
    assert (e.line, e.col) == (4, 15)
    assert e.format() == "segments/s.yml:4:15: unknown key 'methd'\n  hint: did you mean 'method'?"


def test_unknown_key_in_project_entity():
    (e,) = errors_of(ProjectSpec, "name: x\nentity: {name: user, kee: id}\n", "segtool_project.yml")
    assert (e.message, e.hint, e.line, e.col) == ("unknown key 'kee'", "did you mean 'key'?", 2, 22)


def test_unknown_key_far_from_everything_lists_valid_keys():
    (e,) = errors_of(SegmentsFile, "zzzzzz: 1\n")
    assert e.hint == "valid: encoders, features, segmentations, texts"


def test_unknown_key_in_feature_column_did_you_mean():
    text = (
        "features:\n  - name: rfm\n    model: m\n    columns:\n      orders: {transfrom: log1p}\n"
    )
    (e,) = errors_of(SegmentsFile, text)
    assert (e.message, e.line, e.col) == ("unknown key 'transfrom'", 5, 16)
    assert e.hint == "did you mean 'transform'?"


def test_unknown_key_in_profile_target_did_you_mean():
    (e,) = errors_of(ProfilesSpec, "targets:\n  dev: {databse: x.duckdb}\n", "profiles.yml")
    assert (e.message, e.line) == ("unknown key 'databse'", 2)
    assert e.hint == "did you mean 'database'?"


def test_literal_error_names_the_field_and_line():
    text = (
        "segmentations:\n  - name: b\n    inputs: [{features: f}]\n    cluster: {method: dbscan}\n"
    )
    (e,) = errors_of(SegmentsFile, text)
    assert e.message.startswith(
        "segmentations.0.cluster.method: Input should be 'kmeans', 'minibatch_kmeans'"
    )
    assert "'hdbscan'" in e.message
    assert (e.line, e.col) == (4, 15)


def test_literal_error_in_feature_transform():
    text = "features:\n  - name: rfm\n    model: m\n    columns:\n      orders: {transform: log2}\n"
    (e,) = errors_of(SegmentsFile, text)
    assert e.message.startswith(
        "features.0.columns.orders.transform: Input should be 'none', 'log1p', 'clip' or 'rank'"
    )
    assert e.line == 5


def test_k_union_error_location_is_clean():
    text = "segmentations:\n  - name: b\n    inputs: [{features: f}]\n    cluster:\n      k: 0\n"
    (e,) = errors_of(SegmentsFile, text)
    assert e.message == "segmentations.0.cluster.k: k must be at least 1"
    assert (e.line, e.col) == (5, 7)


def test_missing_required_key_points_at_parent():
    (e,) = errors_of(SegmentsFile, "texts:\n  - name: t\n    model: m\n")
    assert e.message == "missing required key 'template'"
    assert (e.line, e.col) == (2, 5)


def test_model_validator_error_points_at_item():
    text = "encoders:\n  - name: ok\n    kind: hashing\n  - name: t\n    kind: transformers\n"
    (e,) = errors_of(SegmentsFile, text)
    assert (
        e.message
        == "encoders.1: encoder kind 'transformers' needs `model` (a hub id or a local path)"
    )
    assert e.line == 4


def test_several_errors_reported_together():
    text = (
        "encoders:\n"
        "  - name: 9bad\n"
        "    kind: hashing\n"
        "  - name: d\n"
        "    kind: hashing\n"
        "    device: gpu\n"
    )
    errs = errors_of(SegmentsFile, text)
    assert [(e.line, e.message.split(":")[0]) for e in errs] == [
        (2, "encoders.0.name"),
        (6, "encoders.1.device"),
    ]


def test_require_mapping():
    assert require_mapping(None, "a.yml") == []
    assert require_mapping({}, "a.yml") == []
    (e,) = require_mapping([1, 2], "a.yml")
    assert e.message == "expected a mapping at the top of the file, got list"
    assert (e.path, e.line) == ("a.yml", 1)


# ----------------------------------------------------------------- loader


@pytest.fixture
def tiny(tmp_path):
    return write_files(tmp_path / "proj", tiny_project_files())


def test_find_project_root_from_subfolder(tiny):
    assert find_project_root(tiny / "models") == tiny.resolve()
    assert find_project_root(tiny) == tiny.resolve()


def test_find_project_root_missing(tmp_path):
    with pytest.raises(ProjectError) as ei:
        find_project_root(tmp_path)
    assert "no segtool_project.yml in" in ei.value.message
    assert "segtool init" in ei.value.hint


def test_load_tiny_project(tiny):
    p = load_project(tiny / "segments")
    assert p.root == tiny.resolve()
    assert p.name == "tiny" and p.key == "user_id"
    assert p.target_name == "dev"
    assert p.target.database == "target/segtool.duckdb"
    assert p.database_path == tiny.resolve() / "target" / "segtool.duckdb"
    assert sorted(p.models) == ["stg_orders", "user_features"]
    assert p.models["user_features"].path == "models/user_features.sql"
    assert p.models["user_features"].props.description == "One row per user."
    assert p.models["stg_orders"].props is not None
    assert sorted(p.sources) == [("shop", "orders"), ("shop", "users")]
    assert list(p.templates) == ["story.j2"]
    assert list(p.features) == ["rfm"] and list(p.texts) == ["story"]
    assert list(p.encoders) == ["hash"]
    assert list(p.segmentations) == ["behaviour", "lifecycle"]
    assert p.segmentations["lifecycle"].file == "segments/segments.yml"
    assert p.vars == {"as_of": "2024-07-01"}
    assert p.errors == []


def test_vars_override_project_vars(tiny):
    p = load_project(tiny, vars={"as_of": "2025-01-01", "extra": 1})
    assert p.vars == {"as_of": "2025-01-01", "extra": 1}


def test_parse_vars_yaml_and_json():
    assert parse_vars(None) == {} and parse_vars("") == {}
    assert parse_vars('{"a": 1, "b": "x"}') == {"a": 1, "b": "x"}
    assert parse_vars("{as_of: '2024-02-01', n: 3}") == {"as_of": "2024-02-01", "n": 3}
    with pytest.raises(ProjectError, match="--vars must be a mapping"):
        parse_vars("[1, 2]")
    with pytest.raises(ProjectError) as ei:
        parse_vars("{a: 1")
    assert ei.value.path == "--vars"


def test_env_var(monkeypatch):
    secrets = Secrets()
    env_var = secrets.env_var
    monkeypatch.setenv("SEGTOOL_TEST_X", "val")
    assert env_var("SEGTOOL_TEST_X") == "val"
    assert env_var("SEGTOOL_TEST_X", "d") == "val"
    monkeypatch.delenv("SEGTOOL_TEST_X")
    assert env_var("SEGTOOL_TEST_X", "d") == "d"
    assert env_var("SEGTOOL_TEST_X", "") == ""
    with pytest.raises(ProjectError) as ei:
        env_var("SEGTOOL_TEST_X")
    assert ei.value.message == "environment variable 'SEGTOOL_TEST_X' is not set"
    assert "export SEGTOOL_TEST_X=" in ei.value.hint


PROFILES = """
targets:
  dev: {database: target/dev.duckdb, threads: 2}
  prod: {database: "{{ env_var('SEGTOOL_TEST_DB', 'prod.duckdb') }}", threads: 8, device: cuda}
"""


def test_profiles_targets_and_env_var(tiny, monkeypatch):
    write_files(tiny, {"profiles.yml": PROFILES})
    monkeypatch.delenv("SEGTOOL_TEST_DB", raising=False)
    p = load_project(tiny)
    assert p.target_name == "dev"
    assert p.database_path == tiny.resolve() / "target" / "dev.duckdb"
    p = load_project(tiny, target="prod")
    assert (p.target.database, p.target.threads, p.target.device) == ("prod.duckdb", 8, "cuda")
    monkeypatch.setenv("SEGTOOL_TEST_DB", "/data/x.duckdb")
    p = load_project(tiny, target="prod")
    assert str(p.database_path) == "/data/x.duckdb"


def test_unknown_target_gets_hint(tiny):
    write_files(tiny, {"profiles.yml": PROFILES})
    with pytest.raises(ProjectError) as ei:
        load_project(tiny, target="prd")
    assert ei.value.message == "target 'prd' is not in profiles.yml"
    assert ei.value.hint == "did you mean 'prod'?"


def test_unknown_target_without_profiles(tiny):
    with pytest.raises(ProjectError, match="target 'prod' is not defined"):
        load_project(tiny, target="prod")


def test_profiles_missing_env_var_is_reported_against_profiles(tiny, monkeypatch):
    monkeypatch.delenv("SEGTOOL_TEST_NOPE", raising=False)
    write_files(
        tiny,
        {"profiles.yml": "targets:\n  dev: {database: \"{{ env_var('SEGTOOL_TEST_NOPE') }}\"}\n"},
    )
    with pytest.raises(ProjectErrors) as ei:
        load_project(tiny)
    (e,) = ei.value.errors
    assert e.path == "profiles.yml"
    assert "SEGTOOL_TEST_NOPE" in e.message


def test_loader_collects_errors_from_several_files(tiny):
    write_files(
        tiny,
        {
            "models/sub/stg_orders.sql": "select 1",
            "segments/more.yml": "texts:\n  - name: story\n    model: user_features\n    template: story.j2\n",
            "models/bad.yml": "models:\n  - name: user_featurs\n",
        },
    )
    with pytest.raises(ProjectErrors) as ei:
        load_project(tiny)
    msgs = {(e.path, e.line): e for e in ei.value.errors}
    dup = msgs[("models/sub/stg_orders.sql", None)]
    assert (
        dup.message
        == "two models are named 'stg_orders': models/stg_orders.sql and models/sub/stg_orders.sql"
    )
    props = msgs[("models/bad.yml", 2)]
    assert props.message.startswith("properties for model 'user_featurs'")
    assert props.hint == "did you mean 'user_features'?"
    twice = msgs[("segments/segments.yml", 9)]
    assert twice.message == "texts name 'story' is used twice (also at segments/more.yml:2)"
    assert ei.value.format().endswith("3 errors")
    # strict=False returns the project and the errors
    assert len(load_project(tiny, strict=False).errors) == 3


def test_source_without_path_or_database(tiny):
    write_files(
        tiny, {"models/extra.yml": "sources:\n  - name: ext\n    tables:\n      - name: t\n"}
    )
    with pytest.raises(ProjectErrors) as ei:
        load_project(tiny)
    (e,) = ei.value.errors
    assert e.message.startswith("source table 'ext.t' needs `path`")
    assert (e.path, e.line) == ("models/extra.yml", 4)


def test_malformed_project_file_is_located(tiny):
    write_files(tiny, {"segments/broken.yml": "features:\n  - name: x\n   model: y\n"})
    p = load_project(tiny, strict=False)
    (e,) = p.errors
    assert e.path == "segments/broken.yml"
    assert e.line == 3
    assert e.message.startswith("malformed YAML")


def test_top_level_list_is_an_error(tiny):
    write_files(tiny, {"segments/list.yml": "- a\n- b\n"})
    (e,) = load_project(tiny, strict=False).errors
    assert (e.path, e.line) == ("segments/list.yml", 1)
    assert "expected a mapping" in e.message


@pytest.mark.parametrize("k_range", [(8, 3), (1, 3), (0, 0)])
def test_k_range_is_low_to_high_from_two(k_range):
    """[8, 3] validated and the run then said it needed more users than the
    smallest k tried; [1, 3] quietly began at 2."""
    from pydantic import ValidationError

    from segtool.project.specs import ClusterSpec

    with pytest.raises(
        ValidationError, match=r"k_range must be \[low, high\] with 2 <= low <= high"
    ):
        ClusterSpec(k="auto", k_range=k_range)
    assert ClusterSpec(k="auto", k_range=(3, 3)).k_range == (3, 3)
    assert ClusterSpec(k=5, k_range=k_range).k == 5  # read only with k: auto


def test_an_input_listed_twice_is_refused():
    """It validated, refitted and showed twice in `show` (`rfm 25% -> 25%`)."""
    from pydantic import ValidationError

    from segtool.project.specs import SegmentationSpec

    twice = [{"features": "rfm", "weight": 1.0}, {"features": "rfm", "weight": 0.5}]
    with pytest.raises(ValidationError, match="features 'rfm' is listed twice in `inputs`"):
        SegmentationSpec(name="s", inputs=twice)
    emb = {"embedding": {"text": "story", "encoder": "hash"}}
    with pytest.raises(ValidationError, match="listed twice"):
        SegmentationSpec(name="s", inputs=[emb, emb])
    SegmentationSpec(name="s", inputs=[twice[0], emb])
