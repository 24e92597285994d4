"""Moving a database's vectors and fits to today's encoder fingerprints.

A fingerprint names what decides an encoder's vectors. Twice it was found to
miss or over-count a file, and fixing it changed fingerprints of models whose
vectors did not change:

- state version 6: fingerprints cover tokenizer.json (transformers' fast
  tokenizer loads it whenever a model folder has one, but it was hashed only
  in folders without a vocab file: an edit to it alone changed the vectors
  and not the fingerprint, and stale vectors were served);
- state version 7: a static encoder's fingerprint leaves out the source path
  model2vec writes into the distilled config.json (byte-identical models at
  two paths had two fingerprints: a moved folder or another Hugging Face
  cache embedded everything again, and Ray nodes refused the driver's).

Without this module such an upgrade would embed every text again (hours at a
million users on a CPU) and refit every clustering over such an encoder.

A database of an older state version holds its vectors (`_segtool.encoders`)
and fits (`_segtool.fitted.fit_hash`) under the fingerprints its version
computed. The run that migrates it moves them, for the project's encoders,
to today's fingerprints, in its transaction and before it plans; read-only
commands on such a database fingerprint as it does (encoders/builder.py
`follow`), so a dry run says what the run will do. The one assumption: the
model files there at the upgrade are the ones the stored vectors were made
with. Encoders no longer in the project at the upgrade are not moved (their
vectors are made again if they come back).
"""

from __future__ import annotations

from segtool.errors import SegtoolError
from segtool.state import tables, vectors
from segtool.state.result import table_exists

# the last state version whose fingerprints differ from today's
LAST_LEGACY_FINGERPRINTS = 6


_WHY = {
    **dict.fromkeys(range(1, 6), "a fingerprint that covers tokenizer.json"),
    6: "a fingerprint without the path it was distilled from",
}


def legacy_version(con) -> int | None:
    """The database's state version where its fingerprints are not today's
    (a database no run of this segtool has migrated yet), else None."""
    from segtool.state.db import state_version

    v = state_version(con)
    return v if 0 < v <= LAST_LEGACY_FINGERPRINTS else None


def rekey(con, loaded, encoders, version: int) -> list[str]:
    """Move vectors and fits stored under the fingerprints of state `version`
    to today's, in the caller's transaction (before the database's version is
    raised). Returns notes for the user."""
    from segtool.compile.segments import fit_hash

    legacy: dict[str, str] = {}
    for name in loaded.encoders:
        old = encoders.legacy_fingerprint(name, version)
        if old is not None:
            legacy[name] = old
    if not legacy:
        return []
    notes = []
    if table_exists(con, tables.STATE, "encoders"):
        for name, old in legacy.items():
            new = encoders.fingerprint(name)
            if vectors.lookup(con, new) is None and vectors.lookup(con, old) is not None:
                con.execute(
                    f"UPDATE {vectors.REGISTRY} SET encoder_fp = ? WHERE encoder_fp = ?", [new, old]
                )
                notes.append(
                    f"encoder '{name}': its cached vectors are now keyed by "
                    f"{_WHY.get(version, 'its fingerprint as this segtool computes it')} "
                    "(once, after an upgrade: nothing is embedded again)"
                )
    if table_exists(con, tables.STATE, "fitted"):

        def before(enc: str) -> str:
            return legacy.get(enc) or encoders.fingerprint(enc)

        for seg in loaded.segmentations.values():
            if seg.is_rules or not any(
                i.embedding and i.embedding.encoder in legacy for i in seg.inputs
            ):
                continue
            try:
                now, then = (
                    fit_hash(loaded, encoders.fingerprint, seg),
                    fit_hash(loaded, before, seg),
                )
            except SegtoolError:  # another input's encoder cannot be built: the run says so
                continue
            con.execute(
                f"UPDATE {tables.FITTED} SET fit_hash = ? WHERE segmentation = ? AND fit_hash = ?",
                [now, seg.name, then],
            )
    return notes
