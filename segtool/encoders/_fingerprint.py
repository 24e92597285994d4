"""Encoder fingerprints: what decides the vectors, and nothing else.

In: kind, the model's identity (a content hash of the files that change the output),
pooling, normalize, max_length, the resolved dtype, backend, quantize, dim (hashing).
Out: batch_size, device, thread counts, where the files live.

The model's identity hashes the files that are actually loaded, wherever they came from
(a local folder, the HF cache, a pip package): the same weights give the same fingerprint
on every machine, and a retrained model with the same name does not reuse stale vectors.
File hashes are cached per process by (path, mtime, size), and those of large files per
machine too (_cache.py), so a run does not re-read the weights it hashed last time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FINGERPRINT_VERSION = 1

# Files whose content changes the vectors (besides the weights). JSON ones are hashed
# canonically, without bookkeeping keys, so a re-save by another library version matches.
_JSON_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json")
_VOCAB_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_VOLATILE_KEYS = {"transformers_version", "torch_dtype", "dtype", "architectures", "name_or_path"}
_ST_MODULES = "modules.json"
_ST_CONFIG = "config_sentence_transformers.json"

_file_hash_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, cached by (path, mtime_ns, size): in this
    process, and on this machine for files of 1 MB and more."""
    from segtool.encoders import _cache

    st = path.stat()
    resolved = str(path.resolve())
    key = (resolved, st.st_mtime_ns, st.st_size)
    digest = _file_hash_cache.get(key)
    if digest is None:
        large = st.st_size >= _cache.PERSIST_MIN_BYTES
        if large:
            digest = _cache.remembered_hash(resolved, st.st_size, st.st_mtime_ns)
        if digest is None:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
            digest = h.hexdigest()
            if large:
                _cache.remember_hash(resolved, st.st_size, st.st_mtime_ns, digest)
        _file_hash_cache[key] = digest
    return digest


def _canonical_json_file(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return file_sha256(path)

    def clean(obj):
        if isinstance(obj, dict):
            return {
                k: clean(v)
                for k, v in obj.items()
                if not k.startswith("_") and k not in _VOLATILE_KEYS
            }
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    text = json.dumps(clean(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would load, in its order of preference."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                shards = sorted(
                    set(json.loads((folder / index).read_text())["weight_map"].values())
                )
            except (OSError, ValueError, KeyError, TypeError):
                shards = []
            return [folder / s for s in shards if (folder / s).is_file()]
    return []


def model_content_hash(
    folder: Path, *, sentence_transformers: bool = False, legacy: bool = False
) -> str:
    """sha256 over the files of a model folder that decide its output.

    For sentence-transformers models, also the module list and each module's
    config and weights (pooling, dense, normalize), and the default prompt.

    tokenizer.json counts whenever it is there: transformers' fast tokenizer
    loads it in preference to vocab.txt, so an edit to it alone (normalizer,
    added tokens) changed the vectors and not the fingerprint. `legacy`: the
    hash as state versions before 6 computed it (tokenizer.json only in a
    folder without a vocab file); state/rekey.py moves what a database holds
    under those to the new hashes once.
    """
    folder = Path(folder)
    parts: list[tuple[str, str]] = []

    def add_folder(sub: Path, prefix: str) -> None:
        for w in _weight_files(sub):
            parts.append((prefix + w.name, file_sha256(w)))
        for name in _JSON_FILES:
            if (sub / name).is_file():
                parts.append((prefix + name, _canonical_json_file(sub / name)))
        vocab = [sub / n for n in _VOCAB_FILES if (sub / n).is_file()]
        if (sub / "tokenizer.json").is_file() and not (legacy and vocab):
            vocab.append(sub / "tokenizer.json")
        for v in vocab:
            parts.append((prefix + v.name, file_sha256(v)))

    add_folder(folder, "")
    if sentence_transformers and (folder / _ST_MODULES).is_file():
        parts.append((_ST_MODULES, _canonical_json_file(folder / _ST_MODULES)))
        try:
            modules = json.loads((folder / _ST_MODULES).read_text())
        except (OSError, ValueError):
            modules = []
        for mod in modules if isinstance(modules, list) else []:
            sub = str(mod.get("path", "")) if isinstance(mod, dict) else ""
            if sub and (folder / sub).is_dir():
                for f in sorted((folder / sub).iterdir()):
                    if f.is_file() and f.suffix in {".json", ".safetensors", ".bin"}:
                        digest = _canonical_json_file(f) if f.suffix == ".json" else file_sha256(f)
                        parts.append((f"{sub}/{f.name}", digest))
        for name in ("sentence_bert_config.json",):
            if (folder / name).is_file():
                parts.append((name, _canonical_json_file(folder / name)))
        prompt = _default_prompt(folder / _ST_CONFIG)
        if prompt is not None:
            parts.append(
                (f"{_ST_CONFIG}:default_prompt", hashlib.sha256(prompt.encode()).hexdigest())
            )
    h = hashlib.sha256()
    for name, digest in sorted(parts):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def _default_prompt(path: Path) -> str | None:
    """The prompt sentence-transformers puts before every text it encodes
    (`default_prompt_name` in config_sentence_transformers.json), or None.
    Only a prompt in use is part of the identity: the rest of that file
    (library versions, prompts not used by default) does not change vectors,
    and a model without one keeps the fingerprint it had before this part."""
    try:
        conf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(conf, dict):
        return None
    name, prompts = conf.get("default_prompt_name"), conf.get("prompts")
    if not name or not isinstance(prompts, dict):
        return None
    prompt = prompts.get(name)
    return prompt if isinstance(prompt, str) and prompt else None


def fingerprint(payload: dict) -> str:
    """sha256 hex of a canonical JSON document."""
    doc = {"fingerprint_version": FINGERPRINT_VERSION, **payload}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def clear_cache() -> None:
    _file_hash_cache.clear()


__all__ = ["file_sha256", "fingerprint", "model_content_hash", "clear_cache"]
