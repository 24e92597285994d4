"""Stable segment ids across refits.

After a refit the new cluster labels (0..k-1, arbitrary order) are matched to
the previous segment ids by member overlap: a contingency table of new label x
old id over the users that had an old id, then a Hungarian assignment
(`scipy.optimize.linear_sum_assignment`) maximising the total overlap. A new
cluster matched to an old id (with at least one shared user) keeps that id;
the others get fresh ids from `next_id` upwards, in order of new label, so an
id that ever died is never handed out again. The noise label -1 always maps
to segment id -1.

Events:
- births: the fresh ids;
- deaths: previous ids (from `prev_id_pool`) that no new cluster took over;
- splits: an old id whose users went, at least 20% each, to two or more new
  clusters;
- merges: a new cluster that took at least 20% of each of two or more old ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

EVENT_SHARE = 0.2


@dataclass
class MatchResult:
    mapping: dict[int, int]  # new label -> segment id (always contains -1 -> -1)
    births: list[int] = field(default_factory=list)
    deaths: list[int] = field(default_factory=list)
    splits: list[dict] = field(default_factory=list)  # {"segment_id": old, "into": [ids]}
    merges: list[dict] = field(default_factory=list)  # {"segment_id": new, "from": [ids]}
    next_id: int = 0  # the next never-used id after this match

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Segment ids (int64) for an array of new labels."""
        labels = np.asarray(labels, dtype=np.int64)
        keys = np.array(sorted(self.mapping), dtype=np.int64)
        vals = np.array([self.mapping[k] for k in keys], dtype=np.int64)
        pos = np.searchsorted(keys, labels)
        pos = np.clip(pos, 0, len(keys) - 1)
        if not np.array_equal(keys[pos], labels):
            missing = sorted(set(labels.tolist()) - set(self.mapping))
            raise KeyError(f"labels not in the mapping: {missing[:5]}")
        return vals[pos]

    def to_dict(self) -> dict:
        return {
            "mapping": {str(k): v for k, v in self.mapping.items()},
            "births": self.births,
            "deaths": self.deaths,
            "splits": self.splits,
            "merges": self.merges,
            "next_id": self.next_id,
        }


def match_clusters(
    prev_ids: np.ndarray,
    new_labels: np.ndarray,
    prev_id_pool: Iterable[int],
    next_id: int,
) -> MatchResult:
    """Match new cluster labels to previous segment ids (see module docstring).

    prev_ids : previous segment id per user, aligned with new_labels; any
        negative value (no previous assignment, or previous noise) is ignored.
    new_labels : new cluster label per user; -1 is noise.
    prev_id_pool : the segment ids alive before this refit (deaths come from it).
    next_id : the first never-used id; raised if needed to exceed every id seen.
    """
    from scipy.optimize import linear_sum_assignment

    prev = np.asarray(prev_ids, dtype=np.int64).ravel()
    new = np.asarray(new_labels, dtype=np.int64).ravel()
    if prev.shape != new.shape:
        raise ValueError(f"prev_ids has {prev.size} entries but new_labels has {new.size}")
    pool = sorted({int(i) for i in prev_id_pool if int(i) >= 0})
    new_clusters = np.unique(new[new >= 0])
    counted = (prev >= 0) & (new >= 0)
    old_ids = np.unique(prev[prev >= 0])
    fresh = max([int(next_id), *(i + 1 for i in pool), *(int(i) + 1 for i in old_ids)])

    mapping: dict[int, int] = {-1: -1}
    splits: list[dict] = []
    merges: list[dict] = []
    matched_old: set[int] = set()
    if new_clusters.size and old_ids.size:
        ri = np.searchsorted(new_clusters, new[counted])
        ci = np.searchsorted(old_ids, prev[counted])
        table = np.zeros((new_clusters.size, old_ids.size), dtype=np.int64)
        np.add.at(table, (ri, ci), 1)
        rows, cols = linear_sum_assignment(table, maximize=True)
        for r, c in zip(rows, cols, strict=True):
            if table[r, c] > 0:
                mapping[int(new_clusters[r])] = int(old_ids[c])
                matched_old.add(int(old_ids[c]))
        # events use each old id's users that are still present (any new label)
        old_total = np.bincount(
            np.searchsorted(old_ids, prev[prev >= 0]), minlength=old_ids.size
        ).astype(np.float64)
        big = table >= EVENT_SHARE * old_total[None, :]
        big &= table > 0
        for c in range(old_ids.size):
            targets = np.flatnonzero(big[:, c])
            if targets.size >= 2:
                splits.append({"old_label": int(old_ids[c]), "into_labels": targets})
        for r in range(new_clusters.size):
            sources = np.flatnonzero(big[r, :])
            if sources.size >= 2:
                merges.append({"new_label": int(new_clusters[r]), "from": sources})
    births = []
    for lab in new_clusters:
        if int(lab) not in mapping:
            mapping[int(lab)] = fresh
            births.append(fresh)
            fresh += 1
    split_events = [
        {
            "segment_id": s["old_label"],
            "into": sorted(mapping[int(new_clusters[t])] for t in s["into_labels"]),
        }
        for s in splits
    ]
    merge_events = [
        {
            "segment_id": mapping[m["new_label"]],
            "from": sorted(int(old_ids[c]) for c in m["from"]),
        }
        for m in merges
    ]
    deaths = sorted(i for i in set(pool) | {int(i) for i in old_ids} if i not in matched_old)
    return MatchResult(
        mapping=mapping,
        births=births,
        deaths=deaths,
        splits=split_events,
        merges=merge_events,
        next_id=fresh,
    )
