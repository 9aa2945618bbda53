"""The ladder of baselines a walk-forward detector is scored against, and the lift with its interval.

For one origin, kind and target, every rung predicts the days of Y from what is known at the
close of d, fitted on the origin's fit window only:

* ``majority``: the fit window's class frequencies (the most frequent class);
* ``persistence``: the last target value fully observed at d -- for a forward target of
  horizon h the target of d - h (its horizon ends on d); for the cross same-day label, the
  label of d itself (a threshold on day d's correlation); for an HMM or jump-model label, which
  is never fully known at d (Viterbi looks ahead), the causal state of d - 1. Its probabilities
  are the fit window's frequencies of the target given the persisted class;
* ``hmm_filter``: the origin HMM's causal forward filter P(state_d | x_..d) (a 1-state-per-class
  identity for the HMM's own same-day labels; otherwise mapped to the target's classes through
  the fit window's filter-weighted class frequencies). For cross, a 3-state HMM on the day's
  mean pairwise correlation;
* ``jump_online``: the jump model's online state (jump targets only), mapped like persistence;
* ``logistic``: multinomial logistic regression on the same day's features of the group
  (vol features in logs), standardised with fit statistics, class-balanced;
* ``tree``: a depth-3 decision tree on the same features, class-balanced.

Scores (accuracy, balanced accuracy, macro-F1, log loss, per-class recall) are computed on the
same rows for every rung: the days of Y where every rung and the target exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from regime_pipeline.core.features import daily as F
from regime_pipeline.core.regimes import labels as regimes
from regime_pipeline.core.regimes.metrics import classification_report

BASELINES = ("majority", "persistence", "hmm_filter", "jump_online", "logistic", "tree")
EPS = 1e-15


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log probability of the true class (nats); probabilities clipped at 1e-15.

    :param y: ``(n,)`` class indices; :param proba: ``(n, K)`` rows summing to 1
    """
    p = np.clip(proba[np.arange(len(y)), y], EPS, 1.0)
    return float(-np.log(p).mean())


def balanced_accuracy_from_counts(cm: np.ndarray) -> np.ndarray:
    """Balanced accuracy of confusion matrices ``(..., K, K)`` (rows true): the mean recall over
    the classes with support, as :func:`classification_report` defines it."""
    support = cm.sum(axis=-1)
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    recall = np.divide(diag, support, out=np.zeros(diag.shape, float), where=support > 0)
    return recall.sum(axis=-1) / np.maximum((support > 0).sum(axis=-1), 1)


def block_bootstrap_lift(days: np.ndarray, y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_classes: int,
                         block_days: int, resamples: int, seed: int, level: float) -> tuple[float, float]:
    """Interval of BA(a) - BA(b) by a moving-block bootstrap over days (all rows of a drawn day
    kept together; blocks of `block_days` consecutive days of the sample, drawn with replacement
    until the sample's length is reached).

    :param days: ``(n,)`` the day of each row (any sortable); :return: (low, high) at `level`
    """
    order = np.unique(days)
    index = np.searchsorted(order, days)
    n_days = len(order)
    counts = np.zeros((2, n_days, n_classes, n_classes), dtype=np.int64)
    np.add.at(counts[0], (index, y, pred_a), 1)
    np.add.at(counts[1], (index, y, pred_b), 1)
    cumulative = np.concatenate([np.zeros((2, 1, n_classes, n_classes), np.int64), counts.cumsum(axis=1)], axis=1)
    block = max(1, min(block_days, n_days))
    n_blocks = int(np.ceil(n_days / block))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_days - block + 1, size=(resamples, n_blocks))
    sums = (cumulative[:, starts + block] - cumulative[:, starts]).sum(axis=2)  # (2, resamples, K, K)
    lift = balanced_accuracy_from_counts(sums[0]) - balanced_accuracy_from_counts(sums[1])
    tail = (1 - level) / 2
    return float(np.quantile(lift, tail)), float(np.quantile(lift, 1 - tail))


# ------------------------------------------------------------------------------ inputs of one kind


@dataclass
class KindInputs:
    """Everything the ladder of one kind needs, on the kind's rows (asset-days, or dates for cross).

    :param keys: ``date[, symbol]`` of every row, any day up to the end of Y
    :param X: ``(n, n_features)`` the same day's features for the logistic regression and tree
    :param filter_proba: ``(n, n_states)`` the HMM's causal filter, NaN where undefined
    :param jump_online: ``(n,)`` the jump model's online state index, -1 where undefined
    """

    kind: str
    keys: pd.DataFrame
    X: np.ndarray
    filter_proba: np.ndarray
    jump_online: np.ndarray


def same_day_matrix(kind: str, vol: pd.DataFrame, trend: pd.DataFrame, cross: pd.DataFrame) -> pd.DataFrame:
    """``date[, symbol]`` and the kind's same-day features (vol ones in logs; cross without n_assets)."""
    if kind == "vol":
        return vol[["date", "symbol"]].assign(**{c: np.log(vol[c].to_numpy(float)) for c in F.VOL_COLUMNS})
    if kind == "trend":
        return trend[["date", "symbol", *F.TREND_COLUMNS]]
    return cross[["date", *[c for c in F.CROSS_COLUMNS if c != "n_assets"]]]


def kind_inputs(kind: str, data: Any) -> KindInputs:
    """Build :class:`KindInputs` from a :class:`~regime_pipeline.core.regimes.walk_forward.OriginData`."""
    from regime_pipeline.core.regimes.walk_forward import observation_sequences

    matrix = same_day_matrix(kind, data.vol, data.trend, data.cross)
    frame = {"vol": data.vol, "trend": data.trend, "cross": data.cross}[kind]
    X_obs, lengths, obs_keys = observation_sequences(frame, kind)
    hmm = data.labelers.hmm[kind]
    filtered = pd.DataFrame(hmm.filter_proba(X_obs, lengths), columns=[f"s{i}" for i in range(hmm.n_states)])
    filtered = pd.concat([obs_keys.reset_index(drop=True), filtered], axis=1)
    if kind == "cross":
        filtered = filtered.drop(columns="symbol")
    on = ["date"] if kind == "cross" else ["date", "symbol"]
    joined = matrix.merge(filtered, on=on, how="left")
    jump = np.full(len(joined), -1, dtype=np.int64)
    if kind in data.labelers.jump:
        online = obs_keys.assign(_state=data.labelers.jump[kind].predict_online(X_obs, lengths))
        jump = joined[on].merge(online, on=on, how="left")["_state"].fillna(-1).to_numpy(np.int64)
    feature_columns = [c for c in matrix.columns if c not in on]
    return KindInputs(kind, joined[on].reset_index(drop=True), joined[feature_columns].to_numpy(float),
                      joined[[f"s{i}" for i in range(hmm.n_states)]].to_numpy(float), jump)


# ------------------------------------------------------------------------------ the ladder


def _codes(values: pd.Series, classes: Sequence[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return values.map(lookup).fillna(-1).to_numpy(np.int64)


def _frequencies(y: np.ndarray, k: int, smoothing: float) -> np.ndarray:
    counts = np.bincount(y, minlength=k).astype(float) + smoothing
    return counts / counts.sum()


def _conditional(given: np.ndarray, y: np.ndarray, k_given: int, k: int, smoothing: float) -> np.ndarray:
    """``(k_given, k)`` P(y | given) with Laplace smoothing; `given` may be soft ``(n, k_given)``."""
    weights = given if given.ndim == 2 else np.eye(k_given)[given]
    table = weights.T @ np.eye(k)[y] + smoothing
    return table / table.sum(axis=1, keepdims=True)


@dataclass
class Rung:
    """A rung's predictions on the scored rows: class indices and probabilities ``(n, K)``."""

    name: str
    pred: np.ndarray
    proba: np.ndarray


def persisted_codes(kind: str, target: str, horizon: int, keys: pd.DataFrame, y_all: np.ndarray,
                    inputs: KindInputs, classes: Sequence[str]) -> np.ndarray:
    """The class persistence predicts for every row (-1 where it has nothing)."""
    on = ["date"] if kind == "cross" else ["date", "symbol"]
    if target == "forward" or (target == "same_day" and kind == "cross"):
        # The last target fully observed at d: that of d - h (h = 0: the day's own threshold label).
        past = keys.assign(_y=y_all, date=keys["date"] + pd.Timedelta(days=horizon).to_pytimedelta())
        return keys.merge(past, on=on, how="left")["_y"].fillna(-1).to_numpy(np.int64)
    # A Viterbi or jump-model label is not known at d: carry the causal state of d - 1.
    if target == "jump":
        state = inputs.jump_online
    else:
        proba = inputs.filter_proba
        state = np.where(np.isnan(proba).any(axis=1), -1, np.nan_to_num(proba).argmax(axis=1))
    causal = inputs.keys.assign(_s=state, date=inputs.keys["date"] + pd.Timedelta(days=1).to_pytimedelta())
    return keys.merge(causal, on=on, how="left")["_s"].fillna(-1).to_numpy(np.int64)


def run_ladder(kind: str, target: str, horizon: int, inputs: KindInputs, targets: pd.DataFrame,
               classes: Sequence[str], fit: tuple, predict: tuple, detector: pd.DataFrame | None,
               config: Mapping[str, Any]) -> dict[str, Any]:
    """Fit every baseline on the fit window, predict the days of Y, score them beside the detector.

    :param targets: ``date[, symbol], <kind>_regime`` over any days (the origin's targets)
    :param fit, predict: ``(first, last)`` days of the fit window and of Y
    :param detector: ``date[, symbol], <kind>_<class>...`` probabilities for Y, or None
    :return: ``{"rows": [per-rung scores], "scored": n, "confusion": {rung: K x K}, ...}``
    """
    on = ["date"] if kind == "cross" else ["date", "symbol"]
    column = f"{kind}_regime"
    k = len(classes)
    base = config["baselines"]
    smoothing = float(base["smoothing"])
    table = targets.drop_duplicates(on)[[*on, column]] if kind == "cross" else targets[[*on, column]]
    frame = inputs.keys.merge(table, on=on, how="left")
    y_all = _codes(frame[column], classes)
    persisted = persisted_codes(kind, target, horizon, inputs.keys, y_all, inputs, classes)
    dates = inputs.keys["date"]
    finite = np.isfinite(inputs.X).all(axis=1) & np.isfinite(inputs.filter_proba).all(axis=1)
    in_fit = (dates >= fit[0]).to_numpy() & (dates <= fit[1]).to_numpy() & (y_all >= 0) & finite
    fit_y = y_all[in_fit]
    n_states = inputs.filter_proba.shape[1]
    identity = target == "same_day" and kind != "cross"

    rows_ok = (dates >= predict[0]).to_numpy() & (dates <= predict[1]).to_numpy() & (y_all >= 0) & finite
    rows_ok &= persisted >= 0
    if target == "jump":
        rows_ok &= inputs.jump_online >= 0
    det_proba = None
    if detector is not None:
        det_cols = [f"{kind}_{c}" for c in classes]
        det = detector.drop_duplicates(on)[[*on, *det_cols]] if kind == "cross" else detector[[*on, *det_cols]]
        aligned = inputs.keys.merge(det, on=on, how="left")[det_cols].to_numpy(float)
        rows_ok &= np.isfinite(aligned).all(axis=1)
        det_proba = aligned
    if not rows_ok.any():
        return {"rows": [], "scored": 0, "confusion": {}}
    y = y_all[rows_ok]
    mean, std = inputs.X[in_fit].mean(axis=0), inputs.X[in_fit].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    Z_fit, Z = (inputs.X[in_fit] - mean) / std, (inputs.X[rows_ok] - mean) / std

    rungs: list[Rung] = []
    freq = _frequencies(fit_y, k, smoothing)
    rungs.append(Rung("majority", np.full(len(y), int(freq.argmax())), np.tile(freq, (len(y), 1))))
    fit_persisted = persisted[in_fit]
    ok = fit_persisted >= 0
    # Persisted values are class indices, or filter / jump states, which are the classes' indices.
    table_p = _conditional(fit_persisted[ok], fit_y[ok], max(k, n_states), k, smoothing)
    pred_p = persisted[rows_ok]
    rungs.append(Rung("persistence", pred_p, table_p[pred_p]))
    filt = inputs.filter_proba
    if identity:
        proba_f = filt[rows_ok]
    else:
        mapping = _conditional(filt[in_fit], fit_y, n_states, k, smoothing)
        proba_f = filt[rows_ok] @ mapping
    rungs.append(Rung("hmm_filter", proba_f.argmax(axis=1), proba_f))
    if target == "jump":
        online = inputs.jump_online
        fit_ok = online[in_fit] >= 0
        table_j = _conditional(online[in_fit][fit_ok], fit_y[fit_ok], n_states, k, smoothing)
        pred_j = online[rows_ok]
        rungs.append(Rung("jump_online", pred_j, table_j[pred_j]))
    present = np.unique(fit_y)
    for name, model in (
        ("logistic", LogisticRegression(C=float(base["logistic_c"]), class_weight=base["class_weight"], max_iter=2000)),
        ("tree", DecisionTreeClassifier(max_depth=int(base["tree_max_depth"]), class_weight=base["class_weight"],
                                        random_state=0)),
    ):
        if len(present) < 2:
            proba = np.zeros((len(y), k))
            proba[:, present[0]] = 1.0
        else:
            model.fit(Z_fit, fit_y)
            proba = np.zeros((len(y), k))
            proba[:, model.classes_] = model.predict_proba(Z)
        rungs.append(Rung(name, proba.argmax(axis=1), proba))
    if det_proba is not None:
        proba_d = det_proba[rows_ok]
        rungs.append(Rung("detector", proba_d.argmax(axis=1), proba_d))

    rows, confusion = [], {}
    for rung in rungs:
        report = classification_report(y, rung.pred, list(classes))
        confusion[rung.name] = report["confusion_matrix"]
        rows.append({
            "model": rung.name, "n": report["n"], "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"], "macro_f1": report["macro_f1"],
            "log_loss": log_loss(y, rung.proba),
            "recall": {c: v["recall"] for c, v in report["per_class"].items()},
        })
    result = {"rows": rows, "scored": int(len(y)), "confusion": confusion, "days": int(pd.Series(dates[rows_ok]).nunique())}
    baselines = [r for r in rows if r["model"] != "detector"]
    best = max(baselines, key=lambda r: r["balanced_accuracy"])
    result["best_baseline"] = best["model"]
    if det_proba is not None:
        det_row = rows[-1]
        b = config["bootstrap"]
        best_pred = next(r.pred for r in rungs if r.name == best["model"])
        low, high = block_bootstrap_lift(dates[rows_ok].to_numpy(), y, rungs[-1].pred, best_pred, k,
                                         int(b["block_days"]), int(b["resamples"]), int(b["seed"]), float(b["level"]))
        det_row.update(best_baseline=best["model"], lift=det_row["balanced_accuracy"] - best["balanced_accuracy"],
                       lift_low=low, lift_high=high)
    return result


def mean_durations(kind: str, data: Any, inputs: KindInputs, classes: Sequence[str], predict: tuple) -> dict[str, float]:
    """Mean run length (days) of each labeler's states over the days of Y, per asset sequence."""
    from regime_pipeline.core.regimes.jump import mean_duration

    on = ["date"] if kind == "cross" else ["date", "symbol"]
    keys = inputs.keys
    rows = ((keys["date"] >= predict[0]) & (keys["date"] <= predict[1])).to_numpy()
    sub = keys.loc[rows].reset_index(drop=True)
    order = sub.sort_values(on[::-1], kind="stable").index.to_numpy()
    sub = sub.iloc[order].reset_index(drop=True)
    group = sub["symbol"] if kind != "cross" else pd.Series("market", index=sub.index)
    lengths = group.groupby(group, sort=False).size().tolist()
    out = {}
    filt = inputs.filter_proba[rows][order]
    out["hmm_filter"] = mean_duration(np.nan_to_num(filt).argmax(axis=1), lengths)
    for name in ("same_day", "forward", "jump"):
        target = data.targets[name]
        if f"{kind}_regime" not in target.columns:
            continue
        table = target.drop_duplicates(on)[[*on, f"{kind}_regime"]] if kind == "cross" else target[[*on, f"{kind}_regime"]]
        labels = sub.merge(table, on=on, how="left")[f"{kind}_regime"].fillna("?").to_numpy()
        out[name if name != "same_day" else "hmm_viterbi"] = mean_duration(labels, lengths)
    if kind in data.labelers.jump:
        out["jump_online"] = mean_duration(inputs.jump_online[rows][order], lengths)
    return out


def regime_names(kind: str) -> list[str]:
    return list(regimes.settings()[kind]["names"])
