"""tokenizer.json in an encoder's fingerprint (state version 6), and the
upgrade of a database whose vectors and fits were keyed without it.

transformers' fast tokenizer loads tokenizer.json whenever a folder has one;
the fingerprint hashed it only in folders without vocab.txt, so an edit to it
alone changed the vectors and not the fingerprint: the stale ones were used."""

from __future__ import annotations

import json
import shutil

import pytest

from segtool.encoders import _fingerprint
from tests.fixtures import save_tiny_bert


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(params=["transformers", "sentence-transformers"])
def tproject(project, bert, request):
    """The tiny project with its encoder `hash` a transformer over a local
    tiny BERT (vocab.txt and tokenizer.json, as all-MiniLM-L6-v2 has)."""
    shutil.copytree(bert, project.root / "local_model")
    project.edit(
        "segments/segments.yml",
        "  - name: hash\n    kind: hashing\n    dim: 256",
        f"  - name: hash\n    kind: {request.param}\n    model: ./local_model",
    )
    return project


def _edit_tokenizer(project) -> None:
    """Swap two words' ids in tokenizer.json: vocab.txt stays as it was."""
    path = project.root / "local_model" / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    vocab["shopper"], vocab["coffee"] = vocab["coffee"], vocab["shopper"]
    path.write_text(json.dumps(tok))


def _actions(project, *args) -> dict[str, str]:
    plan = json.loads(project.cli("run", "--dry-run", "--format", "json", *args).stdout)
    return {s["unique_id"]: s["action"] for s in plan["steps"]}


def _results(project) -> dict[str, dict]:
    out = json.loads((project.root / "target/run_results.json").read_text())
    return {r["unique_id"]: r for r in out["results"]}


def test_an_edit_of_tokenizer_json_alone_embeds_again(tproject):
    tproject.cli("run")
    _edit_tokenizer(tproject)
    assert _actions(tproject)["embedding.story.hash"] != "skip"
    tproject.cli("run")
    embedded = _results(tproject)["embedding.story.hash"]
    assert embedded["action"] in ("create", "incremental") and embedded["detail"]["embedded"] > 0


def _as_before_v6(monkeypatch) -> None:
    """segtool before state version 6: fingerprints without tokenizer.json
    beside vocab.txt, databases written at version 5."""
    real = _fingerprint.model_content_hash

    def legacy(folder, *, sentence_transformers=False, legacy=False):
        return real(folder, sentence_transformers=sentence_transformers, legacy=True)

    for module in ("transformers_backend", "st_backend", "static_backend"):
        monkeypatch.setattr(f"segtool.encoders.{module}.model_content_hash", legacy)
    monkeypatch.setattr("segtool.state.db.STATE_VERSION", 5)


def test_a_database_keyed_before_tokenizer_json_counted_is_moved_not_embedded_again(
    tproject, monkeypatch
):
    with monkeypatch.context() as old:
        _as_before_v6(old)
        tproject.cli("run")
    assert tproject.sql("SELECT value FROM _segtool.meta WHERE key = 'state_version'") == [("5",)]
    (legacy_fp,) = tproject.sql("SELECT encoder_fp FROM _segtool.encoders")[0]
    vectors = tproject.n_vectors()
    assert vectors > 0

    # the read-only commands read it as it is: the dry run says nothing is to do,
    # clean --cache keeps every vector
    assert set(_actions(tproject).values()) == {"skip"}
    assert "removed 0 unused vectors" in tproject.cli("clean", "--cache").stdout
    assert tproject.n_vectors() == vectors

    out = tproject.cli("run").stdout
    assert "encoder 'hash': its cached vectors are now keyed by a fingerprint that covers" in out
    results = _results(tproject)
    assert {r["action"] for r in results.values()} == {"skip"}, results
    assert tproject.n_vectors() == vectors
    assert tproject.sql("SELECT value FROM _segtool.meta WHERE key = 'state_version'") == [("7",)]
    (new_fp,) = tproject.sql("SELECT encoder_fp FROM _segtool.encoders")[0]
    assert new_fp != legacy_fp
    assert set(_actions(tproject).values()) == {"skip"}

    # from now on tokenizer.json counts: an edit embeds again
    _edit_tokenizer(tproject)
    tproject.cli("run")
    assert _results(tproject)["embedding.story.hash"]["detail"]["embedded"] > 0


# ----------------------------------------------------------------------------- state version 7


@pytest.fixture
def sproject(project, bert, tmp_path, monkeypatch):
    """The tiny project with its encoder `hash` a static encoder distilled
    from a local tiny BERT (into a cache of its own)."""
    pytest.importorskip("model2vec")
    monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / "segtool_cache"))
    shutil.copytree(bert, project.root / "local_model")
    project.edit(
        "segments/segments.yml",
        "  - name: hash\n    kind: hashing\n    dim: 256",
        "  - name: hash\n    kind: static\n    model: ./local_model\n    dim: 16",
    )
    return project


def test_a_database_keyed_by_static_fingerprints_with_the_source_path_is_moved(
    sproject, monkeypatch
):
    """State version 7 leaves model2vec's tokenizer_name (the source's absolute
    path) out of a static encoder's fingerprint; a version-6 database keeps its
    vectors and fits through the upgrade."""
    from segtool.encoders.static_backend import StaticEncoder

    real = StaticEncoder._fingerprint_payload
    with monkeypatch.context() as old:
        old.setattr(
            StaticEncoder, "_fingerprint_payload", lambda self, legacy=False: real(self, True)
        )
        old.setattr("segtool.state.db.STATE_VERSION", 6)
        sproject.cli("run")
    assert sproject.sql("SELECT value FROM _segtool.meta WHERE key = 'state_version'") == [("6",)]
    (legacy_fp,) = sproject.sql("SELECT encoder_fp FROM _segtool.encoders")[0]
    vectors = sproject.n_vectors()
    assert vectors > 0
    assert set(_actions(sproject).values()) == {"skip"}
    assert "removed 0 unused vectors" in sproject.cli("clean", "--cache").stdout

    out = sproject.cli("run").stdout
    assert (
        "encoder 'hash': its cached vectors are now keyed by a fingerprint without the path" in out
    )
    assert {r["action"] for r in _results(sproject).values()} == {"skip"}
    assert sproject.n_vectors() == vectors
    assert sproject.sql("SELECT value FROM _segtool.meta WHERE key = 'state_version'") == [("7",)]
    (new_fp,) = sproject.sql("SELECT encoder_fp FROM _segtool.encoders")[0]
    assert new_fp != legacy_fp
    assert set(_actions(sproject).values()) == {"skip"}


def test_the_same_model_at_another_path_is_the_same_static_encoder(sproject, tmp_path, monkeypatch):
    """model2vec writes the source path into the distilled config.json: the
    same files in another folder (another Hugging Face cache, a Ray node, a
    moved folder) and a fresh cache embedded every text again and refitted."""
    sproject.cli("run")
    shutil.move(sproject.root / "local_model", sproject.root / "moved_model")
    sproject.edit("segments/segments.yml", "model: ./local_model", "model: ./moved_model")
    monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / "another_cache"))
    sproject.cli("run")  # distils again, from the new path
    assert {r["action"] for r in _results(sproject).values()} == {"skip"}
