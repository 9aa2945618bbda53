"""Feature selection for the regime models: rank features by SHAP, then drop near-duplicates.

Two steps, each usable on its own:

1. :func:`shap_importance` fits a gradient-boosted tree classifier (LightGBM) that predicts
   the regime labels from the features, and ranks the features by mean |SHAP value|.
   LightGBM is used rather than a scikit-learn ensemble because shap's ``TreeExplainer``
   reads its trees natively (exact, fast path-dependent SHAP for multi-class models), while
   scikit-learn's ``HistGradientBoostingClassifier`` is not supported for multi-class
   output, and a random forest is slower to fit and explain at the same accuracy.
2. :func:`collapse_correlated` walks the ranking from the top and drops any feature whose
   absolute Pearson correlation with an already kept feature exceeds a threshold, so of two
   near-copies only the more useful one survives.

:func:`select_features` runs both and returns a :class:`Selection`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Rows given to the SHAP explainer. Mean |SHAP| converges quickly in the sample size and
# TreeExplainer costs O(rows x trees x leaves x depth), so explaining every row of a long
# multi-asset history adds minutes for no change in the ranking.
MAX_EXPLAIN_ROWS = 5_000

# Modest, deterministic booster: shallow trees, few rounds. The point is a ranking, not the
# best classifier; `deterministic` + `force_row_wise` + one thread make the fit bit-for-bit
# reproducible for a given `random_state`.
_LGBM_PARAMS = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_child_samples": 20,
    "subsample": 0.8,
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
    "n_jobs": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_features`.

    :param selected: kept features, most important first
    :param importance: mean |SHAP| per feature, all input features, sorted descending
    :param corr: signed Pearson correlation ``(n_features, n_features)``, in importance order
    :param dropped: ``{dropped feature: kept feature that absorbed it}``
    """

    selected: list[str]
    importance: pd.Series
    corr: pd.DataFrame
    dropped: dict[str, str] = field(default_factory=dict)


def shap_importance(X: pd.DataFrame, y: np.ndarray, *, random_state: int = 0) -> pd.Series:
    """Mean |SHAP value| per feature of a LightGBM classifier predicting `y` from `X`.

    :param X: ``(n_samples, n_features)`` features; NaNs are allowed (LightGBM routes them)
    :param y: ``(n_samples,)`` class labels, at least two distinct values
    :param random_state: seeds the booster's row/column subsampling and the explainer's
        row subsample
    :return: Series indexed by feature name, named ``"mean_abs_shap"``, sorted descending
        (ties keep the column order of `X`). For a multi-class model the per-class mean
        |SHAP| values are averaged over classes, so the scale is comparable to a binary model.

    The model is fitted on every row; SHAP values are computed on at most
    :data:`MAX_EXPLAIN_ROWS` rows drawn without replacement with `random_state`.
    """
    import lightgbm as lgb  # heavy imports, only paid by the code that ranks features

    with warnings.catch_warnings():
        # shap's plotting module trips matplotlib deprecation warnings at import; not ours.
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import shap

    X = _check_frame(X)
    y = np.asarray(y).reshape(-1)
    if len(y) != len(X):
        raise ValueError(f"y has {len(y)} labels, X has {len(X)} rows")
    if pd.isna(y).any():
        raise ValueError("y has missing labels")
    n_classes = len(np.unique(y))
    if n_classes < 2:
        raise ValueError(f"y has {n_classes} distinct label(s): need at least two to rank features")

    model = lgb.LGBMClassifier(**_LGBM_PARAMS, random_state=random_state)
    model.fit(X, y)

    rows = X
    if len(X) > MAX_EXPLAIN_ROWS:
        rng = np.random.default_rng(random_state)
        pick = np.sort(rng.choice(len(X), size=MAX_EXPLAIN_ROWS, replace=False))
        rows = X.iloc[pick]
    explainer = shap.TreeExplainer(model)
    with warnings.catch_warnings():
        # shap warns on every binary LightGBM model that its output format once changed.
        warnings.filterwarnings("ignore", message=".*LightGBM binary classifier.*")
        values = explainer.shap_values(rows)
    per_class = _shap_per_class(values, n_features=X.shape[1])  # (n_classes', n_rows, n_features)
    importance = np.abs(per_class).mean(axis=1).mean(axis=0)
    series = pd.Series(importance, index=X.columns, name="mean_abs_shap", dtype=np.float64)
    return series.sort_values(ascending=False, kind="stable")


def collapse_correlated(
    importance: pd.Series, X: pd.DataFrame, threshold: float = 0.85
) -> tuple[list[str], dict[str, str]]:
    """Greedy de-duplication of features by importance.

    Walk the features from most to least important (ties: the order of `importance`). A
    feature is kept unless its absolute Pearson correlation with some already kept feature
    is strictly greater than `threshold`; then it is dropped and mapped to the kept feature
    it is most correlated with (in absolute value). A correlation exactly equal to the
    threshold does not collapse. An undefined correlation (a constant column) counts as 0.

    :param importance: Series indexed by feature name; every name must be a column of `X`
    :param X: ``(n_samples, n_features)`` the data the correlations are computed on
    :param threshold: in ``[0, 1]``
    :return: ``(selected features in importance order, {dropped: kept})``
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    order = _importance_order(importance)
    missing = [f for f in order if f not in X.columns]
    if missing:
        raise ValueError(f"features with an importance but no column in X: {missing}")
    abs_corr = _pearson(X, order).abs().fillna(0.0)

    selected: list[str] = []
    dropped: dict[str, str] = {}
    for feature in order:
        if selected:
            with_kept = abs_corr.loc[feature, selected]
            # idxmax returns the first maximum: on a tie the more important kept feature wins.
            closest = with_kept.idxmax()
            if with_kept[closest] > threshold:
                dropped[feature] = closest
                continue
        selected.append(feature)
    return selected, dropped


def select_features(
    X: pd.DataFrame, y: np.ndarray, *, threshold: float = 0.85, random_state: int = 0
) -> Selection:
    """Rank `X`'s features by SHAP importance for predicting `y`, then collapse correlated ones.

    :param X: ``(n_samples, n_features)``; :param y: ``(n_samples,)`` labels
    """
    importance = shap_importance(X, y, random_state=random_state)
    selected, dropped = collapse_correlated(importance, X, threshold=threshold)
    corr = _pearson(X, list(importance.index))
    return Selection(selected=selected, importance=importance, corr=corr, dropped=dropped)


def _check_frame(X: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X must be a pandas DataFrame with named columns, got {type(X).__name__}")
    if X.shape[1] == 0 or len(X) == 0:
        raise ValueError(f"X is empty (shape {X.shape})")
    if not X.columns.is_unique:
        raise ValueError(f"X has duplicate column names: {X.columns[X.columns.duplicated()].tolist()}")
    return X


def _importance_order(importance: pd.Series) -> list[str]:
    """Feature names from most to least important; ties keep the Series' order."""
    if not importance.index.is_unique:
        raise ValueError("importance has duplicate feature names")
    return list(importance.sort_values(ascending=False, kind="stable").index)


def _pearson(X: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Signed pairwise Pearson correlation of `columns` (pairwise-complete rows)."""
    return X[columns].astype(np.float64).corr(method="pearson")


def _shap_per_class(values: object, n_features: int) -> np.ndarray:
    """Normalise shap's output to ``(n_outputs, n_rows, n_features)``.

    Depending on the shap version and the model, ``shap_values`` returns a list with one
    ``(n_rows, n_features)`` array per class (shap < 0.45), a ``(n_rows, n_features,
    n_classes)`` array (shap >= 0.45, multi-class), or a single ``(n_rows, n_features)``
    array (binary LightGBM: the log-odds of the positive class, whose negative is the other
    class's, so one output carries the whole |SHAP|).
    """
    if isinstance(values, list):
        arr = np.stack([np.asarray(v, dtype=np.float64) for v in values], axis=0)
    else:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim == 2:
            arr = arr[None, :, :]
        elif arr.ndim == 3:
            arr = np.moveaxis(arr, 2, 0)
        else:
            raise ValueError(f"unexpected SHAP value shape {arr.shape}")
    if arr.ndim != 3 or arr.shape[2] != n_features:
        raise ValueError(f"unexpected SHAP value shape {arr.shape} for {n_features} features")
    return arr
