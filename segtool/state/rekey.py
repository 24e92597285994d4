"""State version 6: encoder fingerprints cover tokenizer.json.

transformers' fast tokenizer loads tokenizer.json whenever a model folder has
one, but the fingerprint hashed it only in folders without a vocab file: an
edit to it alone changed the vectors and not the fingerprint, and stale
vectors were served. Counting it changes the fingerprint of every folder with
both (all-MiniLM-L6-v2 included). Without this module an upgrade would embed
every text again (hours at a million users on a CPU) and refit every
clustering over such an encoder.

A database of state version 1-5 holds its vectors (`_segtool.encoders`) and
fits (`_segtool.fitted.fit_hash`) under the fingerprints before. The run that
migrates it to version 6 moves them, for the project's encoders, to today's
fingerprints, in its transaction and before it plans; read-only commands on
such a database fingerprint as it does (encoders/builder.py `follow`), so a
dry run says what the run will do. The one assumption: the tokenizer.json
there at the upgrade is the one the stored vectors were made with. Encoders no
longer in the project at the upgrade are not moved (their vectors are made
again if they come back).
"""

from __future__ import annotations

from segtool.errors import SegtoolError
from segtool.state import tables, vectors
from segtool.state.result import table_exists

# the first state version whose fingerprints cover tokenizer.json
TOKENIZER_IN_FINGERPRINT = 6


def keyed_by_legacy_fingerprints(con) -> bool:
    from segtool.state.db import state_version

    return 0 < state_version(con) < TOKENIZER_IN_FINGERPRINT


def rekey(con, loaded, encoders) -> list[str]:
    """Move vectors and fits stored under legacy fingerprints to today's, in
    the caller's transaction (before the database's version is raised to 6).
    Returns notes for the user."""
    from segtool.compile.segments import fit_hash

    legacy: dict[str, str] = {}
    for name in loaded.encoders:
        old = encoders.legacy_fingerprint(name)
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
                    f"encoder '{name}': its cached vectors are now keyed by a fingerprint that "
                    "covers tokenizer.json (once, after an upgrade: nothing is embedded again)"
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
