"""The drivers' measures: 0 when a column says nothing about the segment,
1 when it decides it, and not fooled by chance or by a few huge values."""

import numpy as np
import pytest
from scipy.stats import kruskal

from segtool.ml.association import (
    cramers_v,
    cramers_v_of,
    rank_eta_squared,
    rank_eta_squared_of,
)

rng = np.random.default_rng(0)


def test_cramers_v_is_one_when_the_value_decides_the_segment():
    labels = np.repeat([0, 1, 2], 200)
    values = np.array(["a", "b", "c"])[labels]
    assert cramers_v_of(values, labels) == pytest.approx(1.0, abs=1e-3)


def test_cramers_v_is_near_zero_for_independent_columns_even_with_many_values():
    labels = rng.integers(0, 5, 300)
    # 200 distinct values over 300 users: the plain V would be ~0.5 by chance alone
    values = rng.choice([str(i) for i in range(200)], 300)
    t = np.zeros((5, 200))
    np.add.at(t, (labels, values.astype(int)), 1)
    n = t.sum()
    expected = np.outer(t.sum(1), t.sum(0)) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.nansum((t - expected) ** 2 / expected)
    plain = np.sqrt(chi2 / n / 4)
    assert plain > 0.4
    assert cramers_v_of(values, labels) < 0.1


def test_cramers_v_of_a_partial_association_and_degenerate_tables():
    labels = np.repeat([0, 1], 500)
    values = np.where(rng.random(1000) < 0.8, labels, 1 - labels).astype(str)
    assert 0.5 < cramers_v_of(values, labels) < 0.7  # phi of an 80/20 split is 0.6
    assert cramers_v(np.array([[10, 0], [0, 0]])) == 0.0  # one segment only
    assert cramers_v(np.array([[5], [7]])) == 0.0  # one value only
    assert cramers_v_of(np.array([None, "a", "b", None], dtype=object), [0, 0, 1, 1]) <= 1.0


def test_rank_eta_squared_is_kruskal_wallis_epsilon_squared():
    labels = rng.integers(0, 4, 2000)
    x = rng.normal(size=2000) + labels * 0.5
    h, _ = kruskal(*[x[labels == g] for g in range(4)])
    assert rank_eta_squared_of(x, labels) == pytest.approx(h / (2000 - 1), rel=1e-9)


def test_rank_eta_squared_ignores_scale_and_outliers():
    labels = np.repeat([0, 1], 500)
    x = rng.lognormal(size=1000) + labels
    a = rank_eta_squared_of(x, labels)
    assert rank_eta_squared_of(np.log(x), labels) == pytest.approx(a)  # monotone: same ranks
    # one user with a huge value: raw eta^2 would be driven by it; ranks are not
    spiked = x.copy()
    spiked[0] = 1e9
    assert abs(rank_eta_squared_of(spiked, labels) - a) < 0.01


def test_rank_eta_squared_edge_cases():
    assert rank_eta_squared_of(np.ones(50), np.repeat([0, 1], 25)) == 0.0  # constant
    assert rank_eta_squared_of(np.arange(50.0), np.zeros(50)) == 0.0  # one segment
    assert rank_eta_squared_of(np.arange(50.0), np.repeat([0, 1], 25)) == pytest.approx(
        0.75, abs=0.01
    )
    x = np.array([1.0, np.nan, 2.0, 3.0, np.nan, 4.0])
    assert 0 <= rank_eta_squared_of(x, np.array([0, 0, 0, 1, 1, 1])) <= 1
    assert rank_eta_squared(np.array([0.0]), np.array([0.0]), np.array([0.0])) == 0.0
