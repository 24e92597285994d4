"""kind: static: a model2vec model, or one distilled once per machine from a
transformer (a tiny random BERT built here), cached, verified, rebuilt when
corrupt, never left half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segtool.encoders import build_encoder
from segtool.encoders.static_backend import MANIFEST, StaticEncoder
from segtool.errors import EncoderError
from segtool.project.specs import EncoderSpec
from tests.fixtures import save_tiny_bert

pytest.importorskip("model2vec")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("src") / "bert")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def spec(model, **kw) -> EncoderSpec:
    return EncoderSpec(name="fast", kind="static", model=str(model), dim=16, **kw)


TEXTS = ["a loyal shopper buys running shoes", "coffee beans every monday", "", "x"]


def test_distilled_once_then_reused(bert, cache):
    enc = build_encoder(spec(bert), bert.parent)
    assert isinstance(enc, StaticEncoder) and enc.distilled and not enc.ready
    with pytest.raises(EncoderError, match="not distilled yet"):
        enc.fingerprint()
    said = []
    enc.prepare(said.append)
    assert said and "distilling static encoder 'fast'" in said[0]
    assert enc.ready and (enc.path / MANIFEST).is_file()
    assert enc.path.parent == cache / "static"
    v = enc.encode(TEXTS)
    assert v.shape == (4, 16) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v[[0, 1, 3]], axis=1), 1, atol=1e-3)
    fp = enc.fingerprint()
    # a second encoder (another project) finds the cached model: no distillation
    again = build_encoder(spec(bert), bert.parent)
    assert again.ready and again.path == enc.path and again.fingerprint() == fp
    assert np.array_equal(again.encode(TEXTS), v)
    # other distillation settings: another cache entry
    other = build_encoder(spec(bert).model_copy(update={"dim": 8}), bert.parent)
    assert other.path != enc.path and not other.ready


def test_fingerprint_covers_the_distilled_weights(bert, cache):
    enc = build_encoder(spec(bert), bert.parent)
    enc.prepare()
    fp = enc.fingerprint()
    weights = enc.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8  # the same file, other weights
    weights.write_bytes(bytes(data))
    changed = build_encoder(spec(bert), bert.parent)
    assert not changed.ready  # the manifest no longer matches
    changed.prepare()  # so it is distilled again
    assert changed.ready and changed.fingerprint() == fp


def test_a_missing_or_corrupt_cache_is_rebuilt(bert, cache):
    enc = build_encoder(spec(bert), bert.parent)
    enc.prepare()
    (enc.path / "model.safetensors").unlink()
    enc2 = build_encoder(spec(bert), bert.parent)
    assert not enc2.ready
    enc2.prepare()
    assert enc2.ready and enc2.encode(TEXTS).shape == (4, 16)


def test_a_killed_distillation_leaves_no_model(bert, cache, monkeypatch):
    enc = build_encoder(spec(bert), bert.parent)

    def killed(folder):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(enc, "_distill_into", killed)
    with pytest.raises(KeyboardInterrupt):
        enc.prepare()
    assert not enc.path.exists()
    assert not [p for p in enc.path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_a_model2vec_folder_is_used_as_is(bert, cache):
    enc = build_encoder(spec(bert), bert.parent)
    enc.prepare()
    direct = build_encoder(spec(enc.path), enc.path.parent)
    assert not direct.distilled and direct.ready and direct.path == enc.path
    assert direct.fingerprint() == enc.fingerprint()
    assert not (cache / "static" / "nothing").exists()


def test_missing_source_model_is_a_clear_error(tmp_path, cache):
    with pytest.raises(EncoderError, match="does not exist"):
        build_encoder(spec("./no_such_model"), tmp_path)


def test_a_cache_folder_that_cannot_be_written_is_a_clear_error(bert, tmp_path, monkeypatch):
    """SEGTOOL_CACHE under a file (or a read-only folder) ended the run with
    'internal error: NotADirectoryError' and no word of the cache."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / "afile" / "cache"))
    enc = build_encoder(spec(bert), bert.parent)
    with pytest.raises(EncoderError, match="cannot write its distilled model under") as e:
        enc.prepare()
    assert str(tmp_path / "afile" / "cache" / "static") in str(e.value)
    assert "SEGTOOL_CACHE" in e.value.hint


def test_a_dtype_in_the_source_config_does_not_change_the_distillation(bert, tmp_path, monkeypatch):
    """The distill key leaves a config's dtype out (a loading setting), but
    model2vec distilled in it: a source whose config said bfloat16 gave other
    weights under the same key, so a machine's vectors depended on which
    distillation its cache happened to hold."""
    import shutil

    bf16 = tmp_path / "bert_bf16"
    shutil.copytree(bert, bf16)
    cfg = json.loads((bf16 / "config.json").read_text())
    cfg["dtype"] = cfg["torch_dtype"] = "bfloat16"
    (bf16 / "config.json").write_text(json.dumps(cfg))
    weights = {}
    for name, src in (("f32", bert), ("bf16", bf16)):
        monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / f"cache_{name}"))
        enc = build_encoder(spec(src), src.parent)
        enc.prepare()
        weights[name] = json.loads((enc.path / MANIFEST).read_text())["files"]["model.safetensors"]
    assert weights["f32"] == weights["bf16"]


def test_own_pooling_agrees_with_model2vec_without_importing_it(bert, cache):
    """segtool averages the token vectors itself (static_backend._pool); the
    vectors are model2vec's own to ~3e-4, and encoding imports neither
    model2vec nor torch (a fresh process)."""
    import json
    import subprocess
    import sys

    from model2vec import StaticModel

    enc = build_encoder(spec(bert), bert.parent)
    enc.prepare()
    texts = [t for t in TEXTS if t] + ["shoes shoes running " * 20]
    ours = enc.encode(texts)
    theirs = StaticModel.from_pretrained(str(enc.path), normalize=True).encode(
        texts, max_length=int(enc.spec.max_length)
    )
    assert np.allclose(ours, theirs, atol=1e-3)
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from segtool.encoders import build_encoder\n"
        "from segtool.project.specs import EncoderSpec\n"
        f"e = build_encoder(EncoderSpec(name='f', kind='static', model={str(enc.path)!r}), Path('.'))\n"
        "v = e.encode(['coffee beans every monday'])\n"
        "print(json.dumps({'v': v[0].tolist(), 'mods': [m for m in ('model2vec', 'torch') if m in sys.modules],\n"
        "                  'undeclared': [m for m in e.imports if m not in sys.modules]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["mods"] == []
    assert (
        got["undeclared"] == []
    )  # Encoder.imports (prefetched while rendering) is what encode uses
    assert np.allclose(got["v"], ours[1], atol=1e-6)


def _tokenizers(bert):
    """The tiny BERT's tokenizer, and MiniLM's (a real 30k vocabulary) when
    the package that ships it is installed."""
    from tokenizers import Tokenizer

    from segtool.encoders._resolve import find_in_package

    paths = [bert / "tokenizer.json"]
    minilm = find_in_package("sentence-transformers/all-MiniLM-L6-v2")
    if minilm is not None:
        paths.append(minilm.path / "tokenizer.json")
    found = [Tokenizer.from_file(str(p)) for p in paths]
    for tok in found:
        tok.no_padding()  # as StaticEncoder._load reads a plain static model
    return found


def test_token_ids_skip_the_normaliser_only_where_it_changes_nothing(bert):
    """TokenIds lowercases printable ASCII itself and tokenises it without
    BERT's normaliser: the ids must be the full tokenizer's, byte for byte,
    for every kind of text (added tokens, accents, CJK, controls)."""
    from segtool.encoders.static_backend import TokenIds

    texts = [
        "Buys mostly Running (3), Coffee (2) and Books (1). Recently bought: Trail Shoes.",
        "12 orders, $1,234 spent (about $103 per order), the last in May 2024.",
        "UPPER lower MiXeD ##s don't stop-and-go 'quoted' \"double\" a/b c\\d",
        "",
        "   ",
        "[MASK] and [mask] and [CLS]x[SEP] [PAD][UNK]",
        "Café crème, naïve résumé",  # accents: stripped by the normaliser
        "CJK 中文字 mixed",
        "tab\there, line\nbreak, bell\x07, nul\x00, del\x7f",
        "zero\u200bwidth and nbsp\u00a0here",
    ]
    for tok in _tokenizers(bert):
        ids = TokenIds(tok)
        assert ids.plain is not None  # BERT's normaliser: the fast path is on
        easy_at, _, rest_at = ids._split(texts)
        assert 0 in easy_at and 5 in rest_at  # [MASK] needs the full path
        expected = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
        assert ids(texts) == expected
        assert ids(texts[:3]) == expected[:3] and ids([texts[6]]) == [expected[6]]
        # a padding tokenizer pads each batch to its longest text: no split batches
        padded = type(tok).from_str(tok.to_str())
        padded.enable_padding()
        assert TokenIds(padded).plain is None
        # an added token matched on normalised text ("café" for "cafe") needs
        # the normaliser: the full path, and the full path's ids
        from tokenizers import AddedToken

        accented = type(tok).from_str(tok.to_str())
        accented.add_tokens([AddedToken("café", normalized=True)])
        ids = TokenIds(accented)
        assert ids.plain is None
        cafe = ["I like cafe", "Café crème"]
        assert ids(cafe) == [
            e.ids for e in accented.encode_batch_fast(cafe, add_special_tokens=False)
        ]


def test_token_ids_by_word_are_the_tokenizers_ids(bert, monkeypatch):
    """Plain texts are tokenised word by word, each word once (TokenIds._by_word):
    every text's ids, cut to any limit, must be the tokenizer's own, in
    batches that mix plain and other texts, with words it has seen and words
    it has not, texts longer than the tokenizer's truncation, and a word
    memory that is cleared when it fills up."""
    from segtool.encoders.static_backend import TokenIds

    words = ["running", "shoes", "(3),", "coffee", "$1,234", "x" * 150, "don't", "a/b", "##s"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 30)))) for _ in range(200)]
    texts += ["", "  leading  and   trailing  ", "Café crème", "[MASK] shoes", "word " * 600]
    for tok in _tokenizers(bert):
        tok = type(tok).from_str(tok.to_str())
        tok.enable_truncation(512)
        ids = TokenIds(tok)
        assert ids.by_word and ids.truncate == 512
        expected = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
        assert max(map(len, expected)) == 512  # the long text was cut by the tokenizer
        monkeypatch.setattr(TokenIds, "MAX_WORDS", 5)  # forgets its words between calls
        for batch in (texts[:50], texts, texts[::-1]):
            want = [e.ids for e in tok.encode_batch_fast(batch, add_special_tokens=False)]
            assert ids(batch) == want
            for limit in (512, 7, 1):
                flat, rows = ids.ids_and_rows(batch, limit)
                got = [flat[rows == i].tolist() for i in range(len(batch))]
                assert got == [w[:limit] for w in want]
        # a full word memory is cleared at the next call: then it holds that call's words
        assert ids(["Brand new words"]) == [
            tok.encode("brand new words", add_special_tokens=False).ids
        ]
        assert set(ids._word_index) == {"brand", "new", "words"}
        # a tokenizer that truncates from the left keeps each text's end: not word by word
        left = type(tok).from_str(tok.to_str())
        left.enable_truncation(512, direction="left")
        assert not TokenIds(left).by_word
        assert TokenIds(left)(texts) == [
            e.ids for e in left.encode_batch_fast(texts, add_special_tokens=False)
        ]


def test_a_corrupt_cache_that_kept_its_size_and_mtime_is_distilled_again(bert, cache):
    """`ready` trusts content hashes remembered by (path, size, mtime): bytes
    flipped in place with the mtime put back were encoded with, as is."""
    import os

    enc = build_encoder(spec(bert), bert.parent)
    enc.prepare()
    good = enc.encode(TEXTS)
    f = enc.path / "model.safetensors"
    st = f.stat()
    data = bytearray(f.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    enc2 = build_encoder(spec(bert), bert.parent)
    assert enc2.ready  # what the remembered hash says
    np.testing.assert_allclose(enc2.encode(TEXTS), good, atol=1e-6)
    assert f.read_bytes() != bytes(data)  # distilled again


def test_a_distillation_under_the_key_before_tokenizer_json_counted_is_moved_not_redone(
    bert, cache, tmp_path
):
    """The distillation key covers the source's tokenizer.json (state v6): a
    model distilled under the old key is moved to the new one (minutes of
    distillation saved), and an edit of tokenizer.json later distils again."""
    import shutil

    from segtool.encoders.static_backend import distill_key

    src = shutil.copytree(bert, tmp_path / "src")
    enc = build_encoder(spec(src), src.parent)
    enc.prepare()
    fp = enc.fingerprint()
    legacy = enc.path.parent / distill_key(src, 16, legacy=True)
    assert legacy != enc.path
    enc.path.rename(legacy)  # as segtool before state v6 left it

    moved = build_encoder(spec(src), src.parent)
    assert moved.ready and moved.fingerprint() == fp and not legacy.exists()

    tok = json.loads((src / "tokenizer.json").read_text())
    tok["model"]["vocab"]["shopper"], tok["model"]["vocab"]["coffee"] = (
        tok["model"]["vocab"]["coffee"],
        tok["model"]["vocab"]["shopper"],
    )
    (src / "tokenizer.json").write_text(json.dumps(tok))
    edited = build_encoder(spec(src), src.parent)
    assert edited.path != moved.path and not edited.ready
