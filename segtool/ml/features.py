"""Feature sets: per-column transforms, imputation, one-hot and scaling.

`FeatureTransformer` turns the columns of a one-row-per-user model (a polars
DataFrame) into a float32 matrix, fitted once on the fit population and then
applied unchanged to new users, so a user gets the same vector whether scored
at fit time or later.

Per numeric column, in this order:

1. missing values (NULL, NaN, +/-inf) -> `impute`: `error` (default) raises a
   DataError naming the column and up to 5 example keys; `zero` fills 0;
   `mean` / `median` fill the fit population's mean / median of the finite
   values (computed on raw values, before the transform).
2. `transform`:
   - `none`: the value as is.
   - `log1p`: sign(x) * log1p(|x|). Plain log1p is undefined for x <= -1; the
     signed form equals log1p for x >= 0 and mirrors it for negatives (refunds,
     negative balances), so it never produces NaN.
   - `clip`: clipped to the fit population's quantiles `clip` (default 1% and
     99%).
   - `rank`: the fit population's empirical CDF, stored as up to 1001
     quantiles and linearly interpolated, giving a value in [0, 1]; tied values
     get the middle of their quantile range; values outside the fit range map
     to the ends. New users therefore map consistently with the fit population.
3. `scale` (fitted on the transformed fit population): `standard` (mean 0,
   std 1), `robust` (median 0, IQR 1), `minmax` ([0, 1] on the fit
   population) or `none`. A constant column gets scale 1 (no division by 0).

Categorical columns become one-hot columns for the categories seen at fit:
the 50 most frequent (ties broken by value), plus `<col>=__other__` when there
were more than 50 (then every other value, seen or unseen, goes to `other`).
Without an `other` column an unseen value is all zeros. One-hot columns are
left as 0/1 and not scaled, so a category's weight does not depend on its
frequency. NULL in a categorical column follows `impute`: `error` raises,
`zero` gives all zeros, `mean` / `median` use the most frequent category.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from segtool.errors import DataError
from segtool.project.specs import FeatureColumnSpec
from segtool.words import counted

from ._util import example_keys

MAX_CATEGORIES = 50
OTHER = "__other__"
RANK_GRID = 1001
_FORMAT_VERSION = 1


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class FeatureTransformer:
    """Fit-once transformer for one feature set (see the module docstring).

    Parameters
    ----------
    columns : dict of column name -> FeatureColumnSpec (None means defaults).
    scale : "standard" | "robust" | "minmax" | "none".

    Fitted attributes: `feature_names_` (output column names), `n_features_out_`,
    `categories_` (per categorical column), `impute_values_`, `center_`,
    `scale_`, `clip_bounds_`, `rank_quantiles_`.
    """

    def __init__(self, columns: Mapping[str, FeatureColumnSpec | None], scale: str = "standard"):
        self.columns = columns
        self.scale = scale

    # ------------------------------------------------------------------ helpers

    def _specs(self) -> dict[str, FeatureColumnSpec]:
        return {k: (v if v is not None else FeatureColumnSpec()) for k, v in self.columns.items()}

    @staticmethod
    def _frame(df: Any) -> pl.DataFrame:
        if isinstance(df, pl.DataFrame):
            return df
        return pl.DataFrame(df)

    @staticmethod
    def _column(df: pl.DataFrame, name: str) -> pl.Series:
        if name not in df.columns:
            raise DataError(
                f"feature column '{name}' is missing from the input",
                hint="columns available: " + ", ".join(df.columns[:30]),
            )
        return df.get_column(name)

    @staticmethod
    def _numeric(s: pl.Series) -> np.ndarray:
        if not (s.dtype.is_numeric() or s.dtype == pl.Boolean or s.dtype == pl.Null):
            raise DataError(
                f"feature column '{s.name}' is not numeric (type {s.dtype})",
                hint="mark it `type: categorical`, or convert it to a number in SQL",
            )
        return s.cast(pl.Float64).to_numpy().astype(np.float64, copy=True)

    def _check_missing(self, name, spec, bad: np.ndarray, keys, what="NaN/inf/NULL"):
        if bad.any() and spec.impute == "error":
            raise DataError(
                f"feature column '{name}' has {counted(int(bad.sum()), what + ' value')} "
                f"({example_keys(keys, bad)})",
                hint="fix the model, or set `impute: zero|mean|median` on the column",
            )

    def _check_rows(self, df: pl.DataFrame, keys) -> None:
        if keys is not None and len(keys) != df.height:
            raise ValueError(f"keys has {len(keys)} entries but the frame has {df.height} rows")

    # ------------------------------------------------------------------ fit

    def fit(self, df: pl.DataFrame, keys: np.ndarray | None = None) -> FeatureTransformer:
        df = self._frame(df)
        self._check_rows(df, keys)
        if df.height == 0:
            raise DataError(
                "cannot fit features on an empty population (0 users)",
                hint="check the input model and the segmentation's population predicate",
            )
        if self.scale not in ("standard", "robust", "minmax", "none"):
            raise ValueError(f"unknown scale '{self.scale}'")
        specs = self._specs()
        names: list[str] = []
        self.numeric_columns_: list[str] = []
        self.categories_: dict[str, list[str]] = {}
        self.has_other_: dict[str, bool] = {}
        self.impute_values_: dict[str, float | str | None] = {}
        self.clip_bounds_: dict[str, tuple[float, float]] = {}
        self.rank_quantiles_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        centers, scales = [], []
        for name, spec in specs.items():
            s = self._column(df, name)
            if spec.type == "categorical":
                names.extend(self._fit_categorical(name, spec, s, keys))
                continue
            x = self._numeric(s)
            bad = ~np.isfinite(x)
            self._check_missing(name, spec, bad, keys)
            fill = 0.0
            if spec.impute in ("mean", "median") and bad.any():
                good = x[~bad]
                if good.size == 0:
                    raise DataError(
                        f"feature column '{name}' has no finite values to take the {spec.impute} of",
                        hint="use `impute: zero` or fix the model",
                    )
                fill = float(np.mean(good) if spec.impute == "mean" else np.median(good))
            self.impute_values_[name] = fill if spec.impute != "error" else None
            x[bad] = fill
            if spec.transform == "clip":
                lo, hi = (float(v) for v in np.quantile(x, list(spec.clip)))
                self.clip_bounds_[name] = (lo, hi)
            elif spec.transform == "rank":
                self.rank_quantiles_[name] = _fit_rank(x)
            t = self._apply_transform(name, spec, x)
            c, sc = _fit_scale(t, self.scale)
            centers.append(c)
            scales.append(sc)
            self.numeric_columns_.append(name)
            names.append(name)
        self.center_ = np.asarray(centers, dtype=np.float64)
        self.scale_ = np.asarray(scales, dtype=np.float64)
        self.feature_names_ = names
        self.n_features_out_ = len(names)
        return self

    def _fit_categorical(self, name, spec, s: pl.Series, keys) -> list[str]:
        s = s.cast(pl.Utf8)
        null = s.is_null().to_numpy()
        self._check_missing(name, spec, null, keys, what="NULL")
        vc = s.drop_nulls().value_counts()
        vals = vc.get_column(vc.columns[0]).to_list()
        counts = vc.get_column("count").to_list()
        order = sorted(zip(vals, counts, strict=True), key=lambda t: (-t[1], t[0]))
        cats = [v for v, _ in order[:MAX_CATEGORIES]]
        self.categories_[name] = cats
        self.has_other_[name] = len(order) > MAX_CATEGORIES
        if spec.impute in ("mean", "median") and order:
            self.impute_values_[name] = order[0][0]  # most frequent category
        else:
            self.impute_values_[name] = None
        out = [f"{name}={c}" for c in cats]
        if self.has_other_[name]:
            out.append(f"{name}={OTHER}")
        return out

    def _apply_transform(self, name: str, spec: FeatureColumnSpec, x: np.ndarray) -> np.ndarray:
        if spec.transform == "log1p":
            return signed_log1p(x)
        if spec.transform == "clip":
            lo, hi = self.clip_bounds_[name]
            return np.clip(x, lo, hi)
        if spec.transform == "rank":
            q, p = self.rank_quantiles_[name]
            return np.interp(x, q, p)
        return x

    # ------------------------------------------------------------------ transform

    def transform(self, df: pl.DataFrame, keys: np.ndarray | None = None) -> np.ndarray:
        """The (n_rows, n_features_out_) float32 matrix for `df` with the fitted parameters."""
        if not hasattr(self, "feature_names_"):
            raise RuntimeError("FeatureTransformer is not fitted; call fit() first")
        df = self._frame(df)
        self._check_rows(df, keys)
        n = df.height
        out = np.zeros((n, self.n_features_out_), dtype=np.float32)
        specs = self._specs()
        col = 0
        num_i = 0
        for name, spec in specs.items():
            s = self._column(df, name)
            if spec.type == "categorical":
                col = self._transform_categorical(name, spec, s, keys, out, col)
                continue
            x = self._numeric(s)
            bad = ~np.isfinite(x)
            self._check_missing(name, spec, bad, keys)
            x[bad] = self.impute_values_[name] or 0.0
            t = self._apply_transform(name, spec, x)
            out[:, col] = (t - self.center_[num_i]) / self.scale_[num_i]
            num_i += 1
            col += 1
        return out

    def _transform_categorical(self, name, spec, s: pl.Series, keys, out, col) -> int:
        s = s.cast(pl.Utf8)
        null = s.is_null().to_numpy()
        self._check_missing(name, spec, null, keys, what="NULL")
        cats = self.categories_[name]
        fill = self.impute_values_.get(name)
        if fill is not None and null.any():
            s = s.fill_null(fill)
            null = s.is_null().to_numpy()
        other = len(cats) if self.has_other_[name] else -1
        code = s.replace_strict(
            cats, list(range(len(cats))), default=other, return_dtype=pl.Int64
        ).to_numpy()
        code = np.where(null, -1, code)
        rows = np.flatnonzero(code >= 0)
        out[rows, col + code[rows]] = 1.0
        return col + len(cats) + (1 if self.has_other_[name] else 0)

    def fit_transform(self, df: pl.DataFrame, keys: np.ndarray | None = None) -> np.ndarray:
        return self.fit(df, keys).transform(df, keys)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able params, arrays). Arrays: `center`, `scale` (one per numeric
        column, in `numeric_columns` order), `rank_q_<i>` / `rank_p_<i>` (the
        stored CDF of the i-th numeric column, when its transform is rank)."""
        if not hasattr(self, "feature_names_"):
            raise RuntimeError("FeatureTransformer is not fitted")
        specs = self._specs()
        arrays: dict[str, np.ndarray] = {"center": self.center_, "scale": self.scale_}
        for i, name in enumerate(self.numeric_columns_):
            if name in self.rank_quantiles_:
                q, p = self.rank_quantiles_[name]
                arrays[f"rank_q_{i}"] = q
                arrays[f"rank_p_{i}"] = p
        params = {
            "type": "FeatureTransformer",
            "version": _FORMAT_VERSION,
            "columns": {k: v.model_dump(mode="json") for k, v in specs.items()},
            "scale": self.scale,
            "feature_names": list(self.feature_names_),
            "numeric_columns": list(self.numeric_columns_),
            "categories": {k: list(v) for k, v in self.categories_.items()},
            "has_other": dict(self.has_other_),
            "impute_values": dict(self.impute_values_),
            "clip_bounds": {k: [lo, hi] for k, (lo, hi) in self.clip_bounds_.items()},
        }
        return params, arrays

    @classmethod
    def from_state_dict(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> FeatureTransformer:
        if params.get("type") != "FeatureTransformer" or params.get("version") != _FORMAT_VERSION:
            raise ValueError("not a FeatureTransformer state (or an unsupported version)")
        cols = {k: FeatureColumnSpec(**v) for k, v in params["columns"].items()}
        self = cls(cols, params["scale"])
        self.feature_names_ = list(params["feature_names"])
        self.n_features_out_ = len(self.feature_names_)
        self.numeric_columns_ = list(params["numeric_columns"])
        self.categories_ = {k: list(v) for k, v in params["categories"].items()}
        self.has_other_ = {k: bool(v) for k, v in params["has_other"].items()}
        self.impute_values_ = dict(params["impute_values"])
        self.clip_bounds_ = {k: (float(a), float(b)) for k, (a, b) in params["clip_bounds"].items()}
        self.center_ = np.asarray(arrays["center"], dtype=np.float64)
        self.scale_ = np.asarray(arrays["scale"], dtype=np.float64)
        self.rank_quantiles_ = {}
        for i, name in enumerate(self.numeric_columns_):
            if f"rank_q_{i}" in arrays:
                self.rank_quantiles_[name] = (
                    np.asarray(arrays[f"rank_q_{i}"], dtype=np.float64),
                    np.asarray(arrays[f"rank_p_{i}"], dtype=np.float64),
                )
        return self


def _fit_rank(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Up to RANK_GRID quantiles of x and their cumulative probabilities, with
    duplicate quantile values collapsed to the mean of their probabilities (so
    a tied value maps to the middle of its range and interp's x stays increasing)."""
    grid = min(RANK_GRID, x.size)
    p = np.linspace(0.0, 1.0, grid) if grid > 1 else np.array([0.5])
    q = np.quantile(x, p) if grid > 1 else x[:1].astype(np.float64)
    u, inv = np.unique(q, return_inverse=True)
    pu = np.bincount(inv, weights=p) / np.bincount(inv)
    return u.astype(np.float64), pu.astype(np.float64)


def _fit_scale(t: np.ndarray, scale: str) -> tuple[float, float]:
    if scale == "standard":
        m = float(np.max(np.abs(t))) if t.size else 0.0
        if 1e150 < m < np.inf:  # the squares in std overflow: scale first (1e300 was 'inf')
            c, s = float(np.mean(t / m)) * m, float(np.std(t / m)) * m
        else:
            c, s = float(np.mean(t)), float(np.std(t))
    elif scale == "robust":
        q25, c, q75 = (float(v) for v in np.quantile(t, [0.25, 0.5, 0.75]))
        s = q75 - q25
    elif scale == "minmax":
        c = float(np.min(t))
        s = float(np.max(t)) - c
    else:
        c, s = 0.0, 1.0
    if not np.isfinite(s) or s <= 1e-12:
        s = 1.0
    return c, s
