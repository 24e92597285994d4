"""Values that must never be written down: what `env_var()` returned, and the
values of vars listed under `secret_vars:`.

segtool writes a lot for people to read (compiled SQL, target/run/*.sql, the
manifest, run_results.json, `_segtool.runs`); every such writer passes its text
through `Secrets.mask`, which replaces each secret value by `***`. Error
messages go through `mask_read` (the values read anywhere in this process).

Which variables a project may read at all is decided outside the project:
`SEGTOOL_*`, and the names listed in `SEGTOOL_ENV_VARS`. A pull request can
change every file of the project, and CI runs `segtool validate` on it: with
any name readable, `env_var('AWS_SECRET_ACCESS_KEY') | reverse` in a model
would print a CI secret in a bind error, past any masking."""

from __future__ import annotations

import os
from typing import Any

from segtool.errors import ProjectError

MASK = "***"
# shorter values are not masked: "1" or "dev" are not secrets, and masking
# them would garble every number in a compiled file
MIN_LENGTH = 4
PREFIX = "SEGTOOL_"
ALLOW = "SEGTOOL_ENV_VARS"  # more readable names, comma-separated, set where segtool runs

_READ: set[str] = set()  # every secret value of this process, for error messages


def readable(name: str) -> bool:
    """Whether a project may read environment variable `name`."""
    if name.startswith(PREFIX):
        return True
    return name in {n.strip() for n in os.environ.get(ALLOW, "").split(",")}


def env_digest(names) -> str | None:
    """One sha256 over the values of the environment variables `names` (those
    a project may read; an unset one counts as unset), or None without any.
    A text or predicate that reads one is rendered again when its value
    changes, as a SQL model is (its compiled SQL holds the value); the values
    themselves are written nowhere, since they may be secrets."""
    import hashlib
    import json

    values = sorted((n, os.environ.get(n)) for n in set(names) if readable(n))
    if not values:
        return None
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def env_digest_of(*texts: str) -> str | None:
    """env_digest of the variables `env_var('NAME', ...)` reads in the
    texts of templates or predicates (compile/reads.py)."""
    from segtool.compile.reads import reads_of

    return env_digest_read(reads_of(*texts).env_vars)


def env_digest_read(names) -> str | None:
    """env_digest of `names`, or of every variable a project may read when
    None (a name computed when rendering)."""
    return env_digest(names if names is not None else [n for n in os.environ if readable(n)])


def forget_read() -> None:
    """A new command starts (the CLI in one process runs one; tests run many)."""
    _READ.clear()


def mask_read(text: str) -> str:
    """`text` with every secret value read in this process masked."""
    return _mask(text, _READ)


def masked(exc):
    """A SegtoolError with the secrets in its message and hint masked, before
    it is formatted (as text, JSON or GitHub annotations)."""
    for e in [exc, *getattr(exc, "errors", ())]:  # ProjectErrors holds several
        e.message = mask_read(e.message)
        if e.hint:
            e.hint = mask_read(e.hint)
    return exc


def _mask(text: str, values: set[str]) -> str:
    # longest first, so a secret that contains another is masked whole
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


class Secrets:
    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: Any) -> None:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            if len(text) >= MIN_LENGTH:
                self.values.add(text)
                _READ.add(text)

    def mask(self, text: str) -> str:
        return _mask(text, self.values)

    def mask_obj(self, obj: Any) -> Any:
        """A JSON-like value with every secret string masked."""
        if not self.values:
            return obj
        if isinstance(obj, str):
            return self.mask(obj)
        if isinstance(obj, dict):
            return {self.mask_obj(k): self.mask_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.mask_obj(v) for v in obj]
        if isinstance(obj, (int, float)) and not isinstance(obj, bool) and str(obj) in self.values:
            return MASK
        return obj

    def env_var(self, name: str, default: Any = None) -> str:
        """The Jinja `env_var(name, default)`: the value is remembered as a secret."""
        if not readable(name):
            raise ProjectError(
                f"env_var('{name}'): a project reads only {PREFIX}* variables and those listed in {ALLOW}",
                hint=f"rename it {PREFIX}{name}, or `export {ALLOW}={name}` where segtool runs "
                "(not in a project file: a pull request could change it)",
            )
        if name in os.environ:
            value = os.environ[name]
        elif default is not None:
            value = default
            return value  # a default written in the project is not a secret
        else:
            raise ProjectError(
                f"environment variable '{name}' is not set",
                hint=f"export {name}=... or give a default: env_var('{name}', 'value')",
            )
        self.add(value)
        return value
