"""Values that must never be written down: what `env_var()` returned, and the
values of vars listed under `secret_vars:`.

segtool writes a lot for people to read (compiled SQL, target/run/*.sql, the
manifest, run_results.json, `_segtool.runs`); every such writer passes its text
through `Secrets.mask`, which replaces each secret value by `***`."""

from __future__ import annotations

import os
from typing import Any

from segtool.errors import ProjectError

MASK = "***"
# shorter values are not masked: "1" or "dev" are not secrets, and masking
# them would garble every number in a compiled file
MIN_LENGTH = 4


class Secrets:
    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: Any) -> None:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            if len(text) >= MIN_LENGTH:
                self.values.add(text)

    def mask(self, text: str) -> str:
        # longest first, so a secret that contains another is masked whole
        for value in sorted(self.values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text

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
