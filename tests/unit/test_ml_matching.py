from __future__ import annotations

import numpy as np

from segtool.ml.matching import match_clusters


def test_permuted_labels_map_back_to_same_ids():
    rng = np.random.default_rng(0)
    prev = rng.choice([3, 7, 11, 12], size=400)
    perm = {3: 2, 7: 0, 11: 3, 12: 1}
    new = np.array([perm[p] for p in prev])
    r = match_clusters(prev, new, {3, 7, 11, 12}, next_id=13)
    assert r.mapping == {-1: -1, 2: 3, 0: 7, 3: 11, 1: 12}
    np.testing.assert_array_equal(r.apply(new), prev)
    assert r.births == [] and r.deaths == [] and r.splits == [] and r.merges == []
    assert r.next_id == 13


def test_noisy_overlap_still_matches_by_majority():
    rng = np.random.default_rng(1)
    prev = rng.choice([0, 1, 2], size=600)
    new = (prev + 1) % 3
    flip = rng.random(600) < 0.15
    new[flip] = rng.integers(0, 3, flip.sum())
    r = match_clusters(prev, new, [0, 1, 2], next_id=3)
    assert r.mapping == {-1: -1, 1: 0, 2: 1, 0: 2}


def test_new_cluster_gets_fresh_id_never_a_dead_one():
    prev = np.array([0] * 50 + [1] * 50 + [-2] * 30)  # -2: users without a previous id
    new = np.array([5] * 50 + [6] * 50 + [7] * 30)
    # id 4 existed once and died: next_id is past it and must not be reused
    r = match_clusters(prev, new, {0, 1}, next_id=5)
    assert r.mapping[5] == 0 and r.mapping[6] == 1
    assert r.mapping[7] == 5 and r.births == [5] and r.next_id == 6


def test_death_when_old_cluster_disappears():
    prev = np.array([0] * 50 + [1] * 50 + [2] * 10)
    new = np.array([0] * 50 + [1] * 60)
    r = match_clusters(prev, new, {0, 1, 2, 9}, next_id=10)  # 9: alive but no users left
    assert r.mapping == {-1: -1, 0: 0, 1: 1}
    assert r.deaths == [2, 9]


def test_split_and_merge_reported():
    # old 10 splits into new 0 and new 1 (half each); old 20 and old 30 merge into new 2
    prev = np.array([10] * 100 + [20] * 60 + [30] * 40)
    new = np.array([0] * 50 + [1] * 50 + [2] * 100)
    r = match_clusters(prev, new, {10, 20, 30}, next_id=31)
    assert r.mapping[0] == 10  # tie broken deterministically
    assert r.mapping[2] == 20  # largest overlap
    assert r.mapping[1] == 31 and r.births == [31]
    assert r.deaths == [30]
    assert r.splits == [{"segment_id": 10, "into": [10, 31]}]
    assert r.merges == [{"segment_id": 20, "from": [20, 30]}]


def test_small_leaks_are_not_events():
    prev = np.array([0] * 100 + [1] * 100)
    new = np.array([0] * 90 + [1] * 10 + [1] * 100)  # 10% of old 0 moves: not a split
    r = match_clusters(prev, new, {0, 1}, next_id=2)
    assert r.splits == [] and r.merges == []


def test_noise_stays_minus_one():
    prev = np.array([0, 0, 0, 1, 1, -1, -1])
    new = np.array([-1, 1, 1, 0, 0, -1, 0])
    r = match_clusters(prev, new, {0, 1}, next_id=2)
    assert r.mapping[-1] == -1
    np.testing.assert_array_equal(r.apply(new), [-1, 0, 0, 1, 1, -1, 1])


def test_first_fit_all_births():
    new = np.array([0, 1, 2, 1, -1])
    r = match_clusters(np.full(5, -2), new, set(), next_id=0)
    assert r.mapping == {-1: -1, 0: 0, 1: 1, 2: 2}
    assert r.births == [0, 1, 2] and r.next_id == 3
    assert r.to_dict()["mapping"] == {"-1": -1, "0": 0, "1": 1, "2": 2}
