from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from segtool.errors import DataError
from segtool.ml.features import FeatureTransformer
from segtool.ml.serialize import roundtrip
from segtool.project.specs import FeatureColumnSpec


def spec(**kw) -> FeatureColumnSpec:
    return FeatureColumnSpec(**kw)


def test_standard_scale_and_signed_log1p_by_hand():
    df = pl.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, np.e - 1, -(np.e - 1), 0.0]})
    ft = FeatureTransformer({"a": spec(), "b": spec(transform="log1p")}, "standard").fit(df)
    out = ft.transform(df)
    assert out.dtype == np.float32
    a = np.array([1, 2, 3, 4.0])
    np.testing.assert_allclose(out[:, 0], (a - 2.5) / np.std(a), rtol=1e-6)
    # sign(x) * log1p(|x|): 0, 1, -1, 0 -> mean 0, std sqrt(0.5)
    np.testing.assert_allclose(out[:, 1], np.array([0, 1, -1, 0]) / np.sqrt(0.5), rtol=1e-6)
    assert ft.feature_names_ == ["a", "b"]


def test_standard_scale_of_huge_values_is_finite():
    """A finite DOUBLE of 1e300 overflowed np.std's squares: the column's
    spread became 1, its values stayed 1e300 and the run said the input had
    NaN/inf values for every user (the data had none)."""
    x = np.array([1e300, 1.0, 1.0, 1.0, 1e300])
    out = FeatureTransformer({"x": None}, "standard").fit_transform(pl.DataFrame({"x": x}))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:, 0], (x / 1e300 - 0.4) / np.std([1, 0, 0, 0, 1]), rtol=1e-5)


def test_robust_minmax_none_scales():
    x = [1.0, 2.0, 3.0, 4.0, 100.0]
    df = pl.DataFrame({"x": x})
    rob = FeatureTransformer({"x": None}, "robust").fit_transform(df)[:, 0]
    # median 3, IQR = 4 - 2 = 2
    np.testing.assert_allclose(rob, (np.array(x) - 3) / 2, rtol=1e-6)
    mm = FeatureTransformer({"x": None}, "minmax").fit_transform(df)[:, 0]
    np.testing.assert_allclose(mm, (np.array(x) - 1) / 99, rtol=1e-6)
    none = FeatureTransformer({"x": None}, "none").fit_transform(df)[:, 0]
    np.testing.assert_allclose(none, x)


def test_constant_column_does_not_divide_by_zero():
    out = FeatureTransformer({"x": None}, "standard").fit_transform(pl.DataFrame({"x": [5.0] * 4}))
    np.testing.assert_array_equal(out, 0.0)


def test_clip_to_fitted_quantiles():
    x = np.arange(101, dtype=float)  # quantiles 0.1 / 0.9 -> 10 / 90
    ft = FeatureTransformer({"x": spec(transform="clip", clip=(0.1, 0.9))}, "none")
    ft.fit(pl.DataFrame({"x": x}))
    out = ft.transform(pl.DataFrame({"x": [-5.0, 50.0, 1000.0]}))[:, 0]
    np.testing.assert_allclose(out, [10, 50, 90])


def test_rank_is_fitted_cdf_and_consistent_for_new_values():
    ft = FeatureTransformer({"x": spec(transform="rank")}, "none")
    ft.fit(pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0]}))
    out = ft.transform(pl.DataFrame({"x": [3.0, 2.5, -10.0, 99.0, 1.0, 5.0]}))[:, 0]
    np.testing.assert_allclose(out, [0.5, 0.375, 0.0, 1.0, 0.0, 1.0])
    # one new user alone maps exactly as in a batch
    alone = ft.transform(pl.DataFrame({"x": [2.5]}))[0, 0]
    assert alone == out[1]


def test_rank_ties_map_to_middle_of_their_range():
    ft = FeatureTransformer({"x": spec(transform="rank")}, "none")
    ft.fit(pl.DataFrame({"x": [0.0] * 50 + list(np.linspace(1, 2, 50))}))
    zero = ft.transform(pl.DataFrame({"x": [0.0]}))[0, 0]
    assert 0.2 < zero < 0.3  # ~ middle of [0, 0.49]


def test_categorical_one_hot_unseen_is_zero_and_not_scaled():
    df = pl.DataFrame({"c": ["b", "a", "b", None, "c"], "x": [1.0, 2, 3, 4, 5]})
    ft = FeatureTransformer(
        {"c": spec(type="categorical", impute="zero"), "x": None}, "standard"
    ).fit(df)
    # most frequent first, ties by value
    assert ft.feature_names_ == ["c=b", "c=a", "c=c", "x"]
    out = ft.transform(pl.DataFrame({"c": ["a", "zzz", None], "x": [3.0, 3.0, 3.0]}))
    np.testing.assert_array_equal(out[:, :3], [[0, 1, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(out[:, 3], 0.0, atol=1e-7)


def test_categorical_caps_at_50_plus_other():
    vals = [f"v{i:03d}" for i in range(60) for _ in range(60 - i)]  # v000 most frequent
    ft = FeatureTransformer({"c": spec(type="categorical")}, "none").fit(pl.DataFrame({"c": vals}))
    assert len(ft.feature_names_) == 51 and ft.feature_names_[-1] == "c=__other__"
    out = ft.transform(pl.DataFrame({"c": ["v000", "v055", "never-seen"]}))
    assert out[0, 0] == 1 and out[0].sum() == 1
    assert out[1, 50] == 1 and out[2, 50] == 1


def test_nan_error_names_column_and_example_keys():
    df = pl.DataFrame({"revenue": [1.0, None, float("nan"), float("inf"), 2.0, None, None, None]})
    keys = np.array([f"u{i}" for i in range(8)])
    ft = FeatureTransformer({"revenue": None}, "standard")
    with pytest.raises(DataError) as ei:
        ft.fit(df, keys)
    msg = ei.value.message
    assert "revenue" in msg and "6" in msg
    assert "u1, u2, u3, u5, u6" in msg and "u7" not in msg  # at most 5 examples
    assert "impute" in ei.value.hint
    # also at transform time, with row numbers when no keys are given
    ok = FeatureTransformer({"revenue": None}, "standard").fit(
        pl.DataFrame({"revenue": [1.0, 2.0]})
    )
    with pytest.raises(DataError, match="rows 1"):
        ok.transform(pl.DataFrame({"revenue": [1.0, None]}))


def test_null_categorical_errors_by_default():
    with pytest.raises(DataError, match="'c'.*NULL"):
        FeatureTransformer({"c": spec(type="categorical")}, "none").fit(
            pl.DataFrame({"c": ["a", None]}), np.array([10, 11])
        )


@pytest.mark.parametrize("impute,fill", [("zero", 0.0), ("mean", 4.0), ("median", 2.0)])
def test_impute(impute, fill):
    df = pl.DataFrame({"x": [1.0, 2.0, 9.0, None, float("nan")]})
    ft = FeatureTransformer({"x": spec(impute=impute)}, "none").fit(df)
    out = ft.transform(df)[:, 0]
    np.testing.assert_allclose(out, [1, 2, 9, fill, fill])
    # new users use the fit-time value
    assert ft.transform(pl.DataFrame({"x": [None]}))[0, 0] == pytest.approx(fill)


def test_missing_and_non_numeric_columns():
    ft = FeatureTransformer({"x": None}, "none")
    with pytest.raises(DataError, match="'x' is missing"):
        ft.fit(pl.DataFrame({"y": [1.0]}))
    with pytest.raises(DataError, match="not numeric"):
        ft.fit(pl.DataFrame({"x": ["a"]}))
    with pytest.raises(DataError, match="empty"):
        ft.fit(pl.DataFrame({"x": []}, schema={"x": pl.Float64}))


def test_state_dict_roundtrip_identical_transform():
    rng = np.random.default_rng(0)
    n = 500
    df = pl.DataFrame(
        {
            "a": rng.lognormal(size=n),
            "b": rng.normal(size=n),
            "c": rng.normal(size=n),
            "d": rng.integers(0, 10, n).astype(float),
            "cat": rng.choice(["x", "y", "z"], n),
        }
    ).with_columns(pl.when(pl.col("b") > 1.5).then(None).otherwise(pl.col("b")).alias("b"))
    cols = {
        "a": spec(transform="log1p"),
        "b": spec(transform="clip", impute="median"),
        "c": spec(transform="rank"),
        "d": spec(),
        "cat": spec(type="categorical"),
    }
    for scale in ("standard", "robust", "minmax", "none"):
        ft = FeatureTransformer(cols, scale).fit(df)
        ft2 = roundtrip(ft)
        np.testing.assert_array_equal(ft.transform(df), ft2.transform(df))
        assert ft2.feature_names_ == ft.feature_names_
