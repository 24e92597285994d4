"""Every table segtool owns, by name, in one place.

main.<model>                  SQL models (views and tables)
segments.<seg>                current assignment of a segmentation
segments.<seg>_history        every (user, segment) spell, by run
_segtool.meta                 state version, project name
_segtool.runs                 one row per run: status, args, summary
_segtool.nodes                each node's hashes at its last completed step
_segtool.texts__<text>        rendered texts (key, row_hash, text_hash, text, ...)
_segtool.inputs__<seg>        each user's input hash at their last assignment
_segtool.encoders             encoder fingerprint -> its vector table (state/vectors.py)
_segtool.vectors__<fp16>      cached vectors of one encoder fingerprint
_segtool.fitted               fitted models (params JSON + npz arrays)
_segtool.segment_catalog      segment ids, labels, profiles, births and deaths
_segtool.segment_events       births, deaths, splits, merges per refit
"""

from __future__ import annotations


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


STATE = "_segtool"
RESULTS = "segments"
MODELS = "main"

RUNS = f"{STATE}.runs"
NODES = f"{STATE}.nodes"
FITTED = f"{STATE}.fitted"
CATALOG = f"{STATE}.segment_catalog"
EVENTS = f"{STATE}.segment_events"
ENCODERS = f"{STATE}.encoders"


def model(name: str) -> str:
    return f"{quote(MODELS)}.{quote(name)}"


def texts_name(text: str) -> str:
    return f"texts__{text}"


def texts(text: str) -> str:
    return f"{STATE}.{quote(texts_name(text))}"


def inputs_name(seg: str) -> str:
    return f"inputs__{seg}"


def inputs(seg: str) -> str:
    return f"{STATE}.{quote(inputs_name(seg))}"


def segments(seg: str) -> str:
    return f"{RESULTS}.{quote(seg)}"


def empty_in_catalog(seg: str) -> str:
    """A condition on the catalog (as `c`) for the live segments of `seg`
    that no user is in, e.g. a rule that matches nobody; binds one parameter,
    the segmentation's name."""
    return (
        "c.segmentation = ? AND c.died_run IS NULL AND c.segment_id >= 0 AND NOT EXISTS "
        f"(SELECT 1 FROM {segments(seg)} s WHERE s.segment_id = c.segment_id)"
    )


def history_name(seg: str) -> str:
    return f"{seg}_history"


def history(seg: str) -> str:
    return f"{RESULTS}.{quote(history_name(seg))}"


def work_table(kind: str, name: str, part: str = "") -> str:
    """A temporary table a plan leaves a step's work set in (the users to
    render, the texts to embed, the users to assign), read by the stage."""
    return quote(f"__segtool_{kind}_{name}" + (f"_{part}" if part else ""))
