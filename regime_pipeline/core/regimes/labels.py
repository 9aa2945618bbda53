"""Regime labels from features: pooled HMMs for the vol and trend regimes, thresholds for cross.

The labels are the detectors' training targets. Viterbi decoding sees a whole split at
once (hindsight), which is right for a target and wrong for anything that acts on day d.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from regime_pipeline.configs import Split, load_yaml
from regime_pipeline.core.regimes.hmm import RegimeHMM

KINDS = ("vol", "trend")


def settings() -> dict[str, Any]:
    return load_yaml("regimes")


def observations(features: pd.DataFrame, kind: str, config: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The HMM's observation columns for `kind`; ``log_<feature>`` is the natural log of a feature.

    :return: frame indexed like `features` with ``date, symbol`` and one column per observation
    """
    config = config or settings()
    out = features[["date", "symbol"]].copy()
    for name in config[kind]["observations"]:
        if name.startswith("log_"):
            values = features[name.removeprefix("log_")].to_numpy(float)
            if (values <= 0).any():
                bad = features.loc[values <= 0, ["date", "symbol"]].iloc[0]
                raise ValueError(f"{name}: {name.removeprefix('log_')} <= 0 on {bad['date']} for {bad['symbol']}")
            out[name] = np.log(values)
        else:
            out[name] = features[name].to_numpy(float)
    return out


def sequences(obs: pd.DataFrame) -> tuple[np.ndarray, list[int], pd.DataFrame]:
    """Stack observations into one matrix of per-asset runs of consecutive days.

    :return: ``(X, lengths, keys)``: X of shape (n_samples, n_obs); `lengths` of each run (an
        asset, split again wherever a day is missing); `keys` the ``date, symbol`` of each row
    """
    ordered = obs.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
    dates = pd.to_datetime(ordered["date"])
    new_run = (ordered["symbol"] != ordered["symbol"].shift()) | (dates.diff() != pd.Timedelta(days=1))
    run_id = new_run.cumsum().to_numpy()
    lengths = np.bincount(run_id)[1:].tolist()
    X = ordered.drop(columns=["date", "symbol"]).to_numpy(float)
    return X, lengths, ordered[["date", "symbol"]]


def in_window(frame: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Rows with ``start <= date <= end``."""
    dates = frame["date"]
    return frame.loc[(dates >= start) & (dates <= end)].reset_index(drop=True)


def fit_hmm(features: pd.DataFrame, kind: str, train: Split, config: Mapping[str, Any] | None = None) -> RegimeHMM:
    """Fit the `kind` HMM on the train days of `features`, pooled across assets."""
    config = config or settings()
    hmm = config["hmm"]
    X, lengths, _ = sequences(observations(in_window(features, train.start, train.end), kind, config))
    if len(X) == 0:
        raise ValueError(f"no {kind} features in train {train.start}..{train.end}: materialize them first")
    model = RegimeHMM(
        config[kind]["names"],
        covariance_type=hmm["covariance_type"],
        n_restarts=hmm["n_restarts"],
        n_iter=hmm["n_iter"],
        min_occupancy=hmm["min_occupancy"],
        random_state=hmm["random_state"],
    )
    return model.fit(X, lengths)


def decode(model: RegimeHMM, features: pd.DataFrame, kind: str, config: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Viterbi labels of every (date, symbol) in `features`: columns ``date, symbol, <kind>_regime``."""
    X, lengths, keys = sequences(observations(features, kind, config))
    labels = model.predict(X, lengths) if len(X) else np.array([], dtype=int)
    names = np.asarray(model.state_names, dtype=object)
    return keys.assign(**{f"{kind}_regime": names[labels]})


def cross_regimes(cross: pd.DataFrame, config: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Market-wide regime by thresholds: columns ``date, cross_regime``."""
    c = (config or settings())["cross"]
    divergent, normal, convergent = c["names"]
    value = cross[c["feature"]].to_numpy(float)
    label = np.where(value < c["divergent_below"], divergent, np.where(value > c["convergent_above"], convergent, normal))
    return pd.DataFrame({"date": cross["date"].to_numpy(), "cross_regime": label})


def class_counts(labels: pd.DataFrame, config: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Days per class for each regime kind, every class listed (zero when absent).

    :return: columns ``kind, regime, days, share``; cross counts are per date, the others per
        asset-day
    """
    config = config or settings()
    rows = []
    for kind in (*KINDS, "cross"):
        column = f"{kind}_regime"
        values = labels.drop_duplicates("date")[column] if kind == "cross" else labels[column]
        values = values.dropna()
        counts = values.value_counts()
        for name in config[kind]["names"]:
            n = int(counts.get(name, 0))
            rows.append((kind, name, n, n / len(values) if len(values) else 0.0))
    return pd.DataFrame(rows, columns=["kind", "regime", "days", "share"])


@dataclass(frozen=True)
class RegimeModels:
    """The fitted vol and trend HMMs, stored as one JSON artifact."""

    vol: RegimeHMM
    trend: RegimeHMM

    def to_dict(self) -> dict[str, Any]:
        return {"vol": self.vol.to_dict(), "trend": self.trend.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegimeModels:
        return cls(vol=RegimeHMM.from_dict(data["vol"]), trend=RegimeHMM.from_dict(data["trend"]))

    def __getitem__(self, kind: str) -> RegimeHMM:
        return getattr(self, kind)


def label_window(
    models: RegimeModels,
    vol_features: pd.DataFrame,
    trend_features: pd.DataFrame,
    cross_features: pd.DataFrame,
    config: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Labels of every (date, symbol) that has both vol and trend features.

    :return: columns ``date, symbol, vol_regime, trend_regime, cross_regime`` (cross is the
        date's market-wide regime; missing when the date has no cross features)
    """
    vol = decode(models.vol, vol_features, "vol", config)
    trend = decode(models.trend, trend_features, "trend", config)
    labels = vol.merge(trend, on=["date", "symbol"], how="inner")
    labels = labels.merge(cross_regimes(cross_features, config), on="date", how="left")
    return labels.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)
