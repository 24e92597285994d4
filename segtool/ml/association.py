"""How strongly segments go with a column: the effect sizes behind "drivers".

Both measures are 0 when the column tells nothing about the segment and 1
when it decides it, whatever the number of users or segments:

* categorical columns: **Cramér's V**, bias-corrected (Bergsma 2013), from
  the segment x value contingency table. The plain V of a column with many
  values over few users is inflated by chance; the corrected one is ~0 there.
* numeric (and date) columns: **rank η²**, the correlation ratio of the
  ranks (ties get their average rank): the share of the ranks' variance that
  lies between segments. It equals Kruskal-Wallis H / (n - 1) (the ε² effect
  size), so a few huge values (revenue) cannot dominate it the way they
  dominate η² of the raw values.

The inputs are counts and rank sums that SQL computes (see
execute/segment/drivers.py), so a million users never leave DuckDB.
"""

from __future__ import annotations

import numpy as np

CRAMERS_V = "cramers_v"
RANK_ETA2 = "rank_eta2"
MEASURES = {
    CRAMERS_V: "Cramér's V (bias-corrected)",
    RANK_ETA2: "rank η² (Kruskal-Wallis ε²)",
}


def cramers_v(table: np.ndarray) -> float:
    """Bias-corrected Cramér's V of a contingency table (rows: segments,
    columns: values). Rows or columns without observations are ignored;
    fewer than two of either gives 0."""
    t = np.asarray(table, dtype=np.float64)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    r, c = t.shape
    n = t.sum()
    if r < 2 or c < 2 or n < 2:
        return 0.0
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / n
    chi2 = float(((t - expected) ** 2 / expected).sum())
    phi2 = chi2 / n
    # Bergsma (2013): remove the expected chance inflation of phi^2 and of the
    # table's apparent size
    phi2c = max(0.0, phi2 - (r - 1) * (c - 1) / (n - 1))
    rc = r - (r - 1) ** 2 / (n - 1)
    cc = c - (c - 1) ** 2 / (n - 1)
    denom = min(rc - 1, cc - 1)
    if denom <= 0:
        return 0.0
    return float(min(1.0, np.sqrt(phi2c / denom)))


def rank_eta_squared(n: np.ndarray, rank_sum: np.ndarray, rank_sq_sum: np.ndarray) -> float:
    """η² of the ranks from per-segment counts, sums of ranks and sums of
    squared ranks (average ranks for ties, over all segments together)."""
    n = np.asarray(n, dtype=np.float64)
    s = np.asarray(rank_sum, dtype=np.float64)
    q = np.asarray(rank_sq_sum, dtype=np.float64)
    total_n = n.sum()
    if total_n < 2 or (n > 0).sum() < 2:
        return 0.0
    mean = s.sum() / total_n
    ss_total = q.sum() - total_n * mean**2
    if ss_total <= 1e-9 * max(1.0, q.sum()):
        return 0.0  # a constant column
    nz = n > 0
    ss_between = float((s[nz] ** 2 / n[nz]).sum() - total_n * mean**2)
    return float(min(1.0, max(0.0, ss_between / ss_total)))


def rank_eta_squared_of(values: np.ndarray, labels: np.ndarray) -> float:
    """The same, from raw values (for tests and small inputs)."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels)
    keep = ~np.isnan(values)
    ranks = rankdata(values[keep])
    labs = labels[keep]
    groups = np.unique(labs)
    n = np.array([(labs == g).sum() for g in groups])
    s = np.array([ranks[labs == g].sum() for g in groups])
    q = np.array([(ranks[labs == g] ** 2).sum() for g in groups])
    return rank_eta_squared(n, s, q)


def cramers_v_of(values, labels) -> float:
    """Cramér's V from raw values (for tests and small inputs)."""
    values = np.asarray(values, dtype=object)
    labels = np.asarray(labels)
    keep = np.array([v is not None for v in values])
    vals, labs = values[keep].astype(str), labels[keep]
    rows, ri = np.unique(labs, return_inverse=True)
    cols, ci = np.unique(vals, return_inverse=True)
    table = np.zeros((len(rows), len(cols)))
    np.add.at(table, (ri, ci), 1)
    return cramers_v(table)
