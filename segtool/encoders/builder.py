"""The one place every command gets its encoders and their fingerprints.

`run`, `run --dry-run`, `diff`, `clean --cache`, `assign`, `test` and the
report all ask an `Encoders` built from the project, so a vector cached by one
command is found by every other. The device comes from `--device`, else the
target's `device:`, else the encoder's own `device:`; it decides where vectors
are computed, never which cache they land in (the fingerprint leaves it out,
see encoders/_fingerprint.py), so `clean --cache` after `run --device cpu` on a
GPU host keeps what that run embedded.
"""

from __future__ import annotations

from segtool.errors import EncoderError, SegtoolError


class Encoders:
    def __init__(self, loaded, *, device: str | None = None, threads: int | None = None):
        self.loaded = loaded
        self.device = device or loaded.target.device
        self.threads = threads
        self._built: dict[str, object] = {}
        self._fingerprints: dict[str, str] = {}
        # the state version of a database whose fingerprints are not today's
        # (follow()): fingerprints as it holds them; None: today's
        self.legacy: int | None = None

    def spec(self, name: str):
        return self.loaded.encoders[name]

    def device_for(self, name: str) -> str:
        return self.device or self.spec(name).device

    def get(self, name: str):
        """The encoder NAME: model files resolved now, weights loaded on first encode."""
        if name not in self._built:
            from segtool.encoders import build_encoder

            spec = self.spec(name)
            if spec.trust_remote_code and spec.kind != "hashing":
                # every command's encoders come from here (validate and the
                # run's preflight say so first): a model's own code runs only
                # where the environment names the model
                from segtool.project.reach import remote_code_refused

                refused = remote_code_refused(spec.model)
                if refused:
                    raise EncoderError(
                        f"encoder '{name}': {refused[0]}",
                        hint=refused[1],
                        path=spec.file,
                        line=spec.line,
                    )
            self._built[name] = build_encoder(
                spec,
                self.loaded.root,
                device_override=self.device,
                threads=self.threads,
            )
        return self._built[name]

    def fingerprint(self, name: str) -> str:
        """What decides NAME's vectors (files and settings): no model load, no torch."""
        if name not in self._fingerprints:
            enc = self.get(name)
            legacy = getattr(enc, "legacy_fingerprint", None) if self.legacy else None
            self._fingerprints[name] = legacy(self.legacy) if legacy else enc.fingerprint()
        return self._fingerprints[name]

    def legacy_fingerprint(self, name: str, version: int) -> str | None:
        """NAME's fingerprint as a database of state `version` holds it, where
        it differs from today's (state/rekey.py); None where it does not or
        cannot be computed."""
        legacy = getattr(self.get(name), "legacy_fingerprint", None)
        if legacy is None:
            return None
        try:
            old, new = legacy(version), self.get(name).fingerprint()
        except (EncoderError, SegtoolError):
            return None
        return old if old != new else None

    def follow(self, con) -> Encoders:
        """Fingerprint as the database `con` keys its vectors and fits: a
        database no run of this version has migrated yet holds them under the
        fingerprints of its state version. The read-only commands (dry run,
        diff, show, assign, test, docs) read it so, and say what the run will
        do; the run moves it to today's fingerprints once (state/rekey.py)."""
        from segtool.state.rekey import legacy_version

        legacy = legacy_version(con)
        if legacy != self.legacy:
            self.legacy = legacy
            self._fingerprints.clear()
        return self

    def prepare(self, name: str, say=None) -> None:
        """One-time work before an encoder can fingerprint and encode (a static
        encoder distils its model): the run does it before writing anything."""
        enc = self.get(name)
        prepare = getattr(enc, "prepare", None)
        if prepare is not None:
            prepare(say)
            self._fingerprints.pop(name, None)

    def try_fingerprint(self, name: str) -> tuple[str | None, str | None]:
        """(fingerprint, None), or (None, why it cannot be computed)."""
        try:
            return self.fingerprint(name), None
        except (EncoderError, SegtoolError) as exc:
            return None, exc.message
