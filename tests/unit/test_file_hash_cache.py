"""Large model files are hashed once per machine, and again when they change."""

import hashlib
import os

from segtool.encoders import _cache, _fingerprint


def test_large_file_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTOOL_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * (_cache.PERSIST_MIN_BYTES + 10))
    real = hashlib.sha256(weights.read_bytes()).hexdigest()

    assert _fingerprint.file_sha256(weights) == real
    st = weights.stat()
    assert _cache.remembered_hash(str(weights.resolve()), st.st_size, st.st_mtime_ns) == real

    # a new process (empty in-memory cache) trusts the machine cache: prove it by
    # planting a different digest for the same (path, size, mtime)
    monkeypatch.setattr(_fingerprint, "_file_hash_cache", {})
    _cache.remember_hash(str(weights.resolve()), st.st_size, st.st_mtime_ns, "planted")
    assert _fingerprint.file_sha256(weights) == "planted"

    # rewritten in place: new mtime, hashed again
    monkeypatch.setattr(_fingerprint, "_file_hash_cache", {})
    weights.write_bytes(b"b" * (_cache.PERSIST_MIN_BYTES + 10))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert _fingerprint.file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_small_files_and_an_unwritable_cache_are_fine(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("SEGTOOL_CACHE", str(blocker / "cache"))  # cannot be created
    big = tmp_path / "big.bin"
    big.write_bytes(b"c" * (_cache.PERSIST_MIN_BYTES + 1))
    assert _fingerprint.file_sha256(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    small = tmp_path / "config.json"
    small.write_text("{}")
    _fingerprint.file_sha256(small)
    assert not (blocker / "cache").exists()
