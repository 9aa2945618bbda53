"""SHAP ranking and correlation collapse on a synthetic set with known useful, copied and noise features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from regime_pipeline.core.features import selection
from regime_pipeline.core.features.selection import (
    Selection,
    _shap_per_class,
    collapse_correlated,
    select_features,
    shap_importance,
)


def make_data(n: int = 1500, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """y (3 classes) depends on a and b; c is a near-copy of a; d is noise."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = rng.normal(size=n)
    c = a + 0.1 * rng.normal(size=n)
    d = rng.normal(size=n)
    y = np.digitize(a + b, [-0.7, 0.7])
    return pd.DataFrame({"d": d, "c": c, "b": b, "a": a}), y


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def result(data) -> Selection:
    X, y = data
    return select_features(X, y, threshold=0.85, random_state=0)


def test_useful_features_outrank_noise(result, data):
    X, _ = data
    imp = result.importance
    assert X.corr().loc["a", "c"] > 0.95
    assert imp.name == "mean_abs_shap"
    assert list(imp.index) == sorted(X.columns, key=lambda f: -imp[f])
    assert imp["a"] > imp["d"] and imp["b"] > imp["d"]
    assert imp.index[-1] == "d"
    assert (imp >= 0).all()


def test_near_copy_is_collapsed_into_the_more_important_twin(result):
    imp = result.importance
    winner, loser = ("a", "c") if imp["a"] >= imp["c"] else ("c", "a")
    assert result.dropped == {loser: winner}
    assert set(result.selected) == {winner, "b", "d"}
    assert result.selected[-1] == "d"
    assert result.selected == [f for f in imp.index if f in result.selected]
    assert list(result.corr.index) == list(imp.index) == list(result.corr.columns)


def test_same_seed_is_deterministic(result, data):
    X, y = data
    again = select_features(X, y, threshold=0.85, random_state=0)
    pd.testing.assert_series_equal(again.importance, result.importance, check_exact=True)
    assert again.selected == result.selected and again.dropped == result.dropped


def test_explainer_subsample_is_seeded(data, monkeypatch):
    X, y = data
    monkeypatch.setattr(selection, "MAX_EXPLAIN_ROWS", 300)
    first = shap_importance(X, y, random_state=3)
    second = shap_importance(X, y, random_state=3)
    pd.testing.assert_series_equal(first, second, check_exact=True)
    assert first["d"] < min(first["a"] + first["c"], first["b"])


def test_binary_labels():
    X, y = make_data(n=600)
    imp = shap_importance(X, (y == 2).astype(int), random_state=0)
    assert imp.index[-1] == "d"
    assert np.isfinite(imp).all()


# --------------------------------------------------------------- collapse semantics


def _frame(seed: int = 0, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame(
        {
            "x": x,
            "x_neg": -x + 0.2 * rng.normal(size=n),  # strongly *negatively* correlated with x
            "y": rng.normal(size=n),
        }
    )


def test_threshold_equal_is_kept_strictly_greater_collapses():
    X = _frame()
    importance = pd.Series({"x": 3.0, "x_neg": 2.0, "y": 1.0})
    r = abs(X.corr().loc["x", "x_neg"])
    assert 0.9 < r < 1.0

    selected, dropped = collapse_correlated(importance, X, threshold=r)
    assert selected == ["x", "x_neg", "y"] and dropped == {}

    just_below = float(np.nextafter(r, 0.0))
    selected, dropped = collapse_correlated(importance, X, threshold=just_below)
    assert selected == ["x", "y"] and dropped == {"x_neg": "x"}


def test_negative_correlation_counts_by_absolute_value():
    X = _frame()
    assert X.corr().loc["x", "x_neg"] < -0.9
    selected, dropped = collapse_correlated(pd.Series({"x_neg": 5.0, "x": 4.0, "y": 1.0}), X, threshold=0.85)
    assert selected == ["x_neg", "y"] and dropped == {"x": "x_neg"}


def test_unsorted_importance_is_walked_in_importance_order():
    X = _frame()
    selected, dropped = collapse_correlated(pd.Series({"y": 1.0, "x": 2.0, "x_neg": 3.0}), X)
    assert selected == ["x_neg", "y"] and dropped == {"x": "x_neg"}


def test_dropped_maps_to_most_correlated_kept_feature():
    rng = np.random.default_rng(0)
    n = 500
    u, v = rng.normal(size=n), rng.normal(size=n)
    X = pd.DataFrame({"u": u, "v": v, "mix": 0.45 * u + 0.9 * v + 0.05 * rng.normal(size=n)})
    corr = X.corr().abs()
    assert corr.loc["mix", "v"] > corr.loc["mix", "u"]
    importance = pd.Series({"u": 3.0, "v": 2.0, "mix": 1.0})
    selected, dropped = collapse_correlated(importance, X, threshold=0.3)
    assert selected == ["u", "v"] and dropped == {"mix": "v"}


def test_constant_column_is_never_collapsed():
    X = _frame().assign(const=1.0)
    selected, dropped = collapse_correlated(pd.Series({"x": 2.0, "const": 1.0}), X, threshold=0.0)
    assert selected == ["x", "const"] and dropped == {}


def test_bad_arguments():
    X = _frame()
    with pytest.raises(ValueError, match="no column"):
        collapse_correlated(pd.Series({"x": 1.0, "zzz": 0.5}), X)
    with pytest.raises(ValueError, match="threshold"):
        collapse_correlated(pd.Series({"x": 1.0}), X, threshold=1.5)
    with pytest.raises(ValueError, match="two"):
        shap_importance(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="labels"):
        shap_importance(X, np.zeros(3))


def test_shap_output_shapes_are_normalised():
    rng = np.random.default_rng(0)
    per_class = [rng.normal(size=(5, 4)) for _ in range(3)]
    stacked = np.stack(per_class, axis=0)
    as_list = _shap_per_class(per_class, n_features=4)
    as_3d = _shap_per_class(np.stack(per_class, axis=2), n_features=4)  # (rows, features, classes)
    assert np.array_equal(as_list, stacked) and np.array_equal(as_3d, stacked)
    assert _shap_per_class(per_class[0], n_features=4).shape == (1, 5, 4)
    with pytest.raises(ValueError):
        _shap_per_class(rng.normal(size=(5, 3)), n_features=4)
