"""Regime rules: the simple allocations the PPO policy has to beat, each in two versions, one on
the detectors' probabilities and one on a raw signal with no detector, so that a comparison
shows what the detectors add.

* **trend risk-off**: all cash when more than ``share`` of the listed assets are in a downtrend
  at the decision close, else equal weight over the listed assets. Detector: the asset's most
  probable trend class is the worst (first) one. Raw: its trailing momentum is below zero.
* **volatility targeting**: equal weight over the listed assets, each scaled by
  ``min(1, target / sigma_i)``, the rest in cash. Detector: ``sigma_i = sum_k P_ik v_k``, the
  expected volatility of the coming ``horizon_days`` given the vol class probabilities. Raw: the
  trailing volatility, as the inverse-volatility benchmark measures it.

Everything a rule learns (the target volatility, the class levels ``v_k``) is calibrated on the
training days only (:func:`calibrate`). The rules and their parameters are in
configs/allocation.yaml ``rules``, written before any of their out-of-sample figures; volatilities
are annualised with 365 days. A rule is a :data:`~regime_pipeline.core.allocation.strategies.Strategy`:
closes up to the decision day in, weights (N + 1,) out, cash last.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation.policy import AllocationData
from regime_pipeline.core.allocation.strategies import Strategy, settings as backtest_settings, trailing_volatility

VOL_PREFIX, TREND_PREFIX = ":vol_", ":trend_"


@dataclass(frozen=True)
class RuleSettings:
    """configs/allocation.yaml ``rules``."""

    share: float  # trend risk-off: fraction of listed assets in a downtrend above which all is cash
    horizon_days: int  # vol targeting: days ahead the detector's class levels measure
    target_quantile: float  # vol targeting: quantile of training trailing vols used as the target

    @classmethod
    def from_config(cls) -> RuleSettings:
        return _configured()


@cache
def _configured() -> RuleSettings:
    raw = load_yaml("allocation")["rules"]
    return RuleSettings(
        share=float(raw["trend_risk_off"]["share"]),
        horizon_days=int(raw["vol_target"]["horizon_days"]),
        target_quantile=float(raw["vol_target"]["target_quantile"]),
    )


@dataclass(frozen=True)
class Calibration:
    """What the rules learn from the training days ``train``.

    :ivar target_vol: annualised volatility the vol-targeting rules aim at
    :ivar vol_levels: (K,) annualised realized volatility of the next ``horizon_days`` after a
        training asset-day whose most probable vol class is k, per class k
    :ivar vol_classes: (K,) the vol class names, in probability-column order
    """

    train: tuple[dt.date, dt.date]
    target_vol: float
    vol_levels: tuple[float, ...]
    vol_classes: tuple[str, ...]
    asset_days: int  # training asset-days the target was measured on

    def as_dict(self) -> dict:
        return {"train": [d.isoformat() for d in self.train], "target_vol": self.target_vol,
                "vol_levels": dict(zip(self.vol_classes, self.vol_levels)), "asset_days": self.asset_days}


def _columns(data: AllocationData, prefix: str) -> np.ndarray:
    """(N, K) column indices of each asset's class probabilities of one kind, in class order."""
    per_asset = []
    for symbol in data.prices.symbols:
        per_asset.append([i for i, c in enumerate(data.prob_columns) if c.startswith(symbol + prefix)])
    if not per_asset[0] or len({len(c) for c in per_asset}) != 1:
        raise ValueError(f"probabilities need the same {prefix.strip(':_')} classes for every asset; columns {data.prob_columns}")
    return np.array(per_asset)


def _probabilities(data: AllocationData, prefix: str) -> np.ndarray:
    """(T, N, K) class probabilities of one kind; NaN where an asset has none that day."""
    return data.probs[:, _columns(data, prefix)]


def _annualised_trailing_vol(close: np.ndarray, window: int) -> np.ndarray:
    """(T, N) std (ddof 1) of the last `window` daily log returns ending at each day, annualised;
    NaN without a full window (:func:`strategies.trailing_volatility` on every day at once)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logret = pd.DataFrame(np.log(close)).diff()
    sigma = logret.rolling(window, min_periods=window).std(ddof=1).to_numpy()
    return sigma * math.sqrt(backtest_settings().periods_per_year)


def _forward_vol(close: np.ndarray, horizon: int) -> np.ndarray:
    """(T, N) realized volatility of days d+1..d+horizon, sqrt(mean r^2) of the daily log
    returns, annualised; NaN where the window leaves the data or has a missing price."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logret = np.diff(np.log(close), axis=0)  # row d: the return of day d + 1
    out = np.full(close.shape, np.nan)
    if logret.shape[0] >= horizon:
        windows = np.lib.stride_tricks.sliding_window_view(logret, horizon, axis=0)  # (T - h, N, h)
        out[: windows.shape[0]] = np.sqrt(np.mean(windows**2, axis=2) * backtest_settings().periods_per_year)
    return out


def calibrate(data: AllocationData, start: dt.date, end: dt.date, config: RuleSettings | None = None) -> Calibration:
    """Learn the vol-targeting rules' target and class levels from the days ``start..end`` only.

    The target is the `target_quantile` of the assets' trailing volatility over the training
    asset-days; ``v_k`` the mean realized volatility of the `horizon_days` after each training
    asset-day whose most probable vol class is k, counting only days whose horizon ends by `end`.
    """
    config = RuleSettings.from_config() if config is None else config
    first, last = data.index(start), data.index(end)
    close = data.prices.close[: last + 1]  # nothing after the training window
    trailing = _annualised_trailing_vol(close, backtest_settings().inverse_vol_window_days)[first:]
    observed = trailing[np.isfinite(trailing)]
    if observed.size == 0:
        raise ValueError(f"no asset has a full trailing-volatility window between {start} and {end}")
    forward = _forward_vol(close, config.horizon_days)[first:]
    proba = _probabilities(data, VOL_PREFIX)[first : last + 1]
    known = np.isfinite(proba).all(axis=2) & np.isfinite(forward)
    classes = tuple(c.split(VOL_PREFIX, 1)[1] for c in np.array(data.prob_columns)[_columns(data, VOL_PREFIX)[0]])
    overall = float(forward[known].mean()) if known.any() else math.nan
    top = np.argmax(np.nan_to_num(proba, nan=-1.0), axis=2)
    levels = tuple(float(forward[known & (top == k)].mean()) if (known & (top == k)).any() else overall
                   for k in range(len(classes)))
    return Calibration((start, end), float(np.quantile(observed, config.target_quantile)), levels, classes, int(observed.size))


def _cash(n: int) -> np.ndarray:
    w = np.zeros(n + 1)
    w[n] = 1.0
    return w


def trend_risk_off(downtrend: np.ndarray, listed: np.ndarray, share: float) -> np.ndarray:
    """All cash when more than `share` of the `listed` assets (N,) are in a `downtrend` (N,),
    else equal weight over them; all cash when none is listed."""
    n = listed.shape[0]
    m = int(listed.sum())
    if m == 0 or int((downtrend & listed).sum()) > share * m:
        return _cash(n)
    w = np.zeros(n + 1)
    w[:n][listed] = 1.0 / m
    return w


def vol_target(sigma: np.ndarray, listed: np.ndarray, target: float) -> np.ndarray:
    """Equal weight over the `listed` assets, each scaled by ``min(1, target / sigma_i)``; an
    asset without a finite positive `sigma` (N,) is not scaled; the rest in cash."""
    n = listed.shape[0]
    m = int(listed.sum())
    if m == 0:
        return _cash(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(np.isfinite(sigma) & (sigma > 0), np.minimum(1.0, target / sigma), 1.0)
    w = np.zeros(n + 1)
    w[:n] = np.where(listed, scale / m, 0.0)
    w[n] = max(0.0, 1.0 - float(w[:n].sum()))
    return w


def _on_calendar(data: AllocationData, per_day, name: str) -> Strategy:
    """A strategy reading row d of precomputed, causal per-day arrays, d found from the closes it
    is handed (which must be `data`'s)."""
    close_all = data.prices.close

    def strategy(close: np.ndarray) -> np.ndarray:
        d = close.shape[0] - 1
        if d >= close_all.shape[0] or not np.array_equal(close[-1], close_all[d], equal_nan=True):
            raise ValueError(f"{name}: the closes do not match the data it was built with")
        return per_day(d, np.isfinite(close[-1]))

    return strategy


def rule_strategies(data: AllocationData, calibration: Calibration, config: RuleSettings | None = None) -> dict[str, Strategy]:
    """The four rules on `data` (prices and probabilities on one calendar), with the training
    `calibration`: ``{trend_risk_off_detector, trend_risk_off_momentum, vol_target_detector,
    vol_target_trailing}``. Each reads nothing after its decision day."""
    config = RuleSettings.from_config() if config is None else config
    bt = backtest_settings()
    trend = _probabilities(data, TREND_PREFIX)  # (T, N, K)
    has_trend = np.isfinite(trend).all(axis=2)
    worst = has_trend & (np.argmax(np.nan_to_num(trend, nan=-1.0), axis=2) == 0)
    vol = _probabilities(data, VOL_PREFIX)
    expected_vol = np.where(np.isfinite(vol).all(axis=2), np.nan_to_num(vol) @ np.asarray(calibration.vol_levels), np.nan)

    def momentum_down(close: np.ndarray) -> np.ndarray:
        lookback = bt.momentum_lookback_days
        if close.shape[0] < lookback + 1:
            return np.zeros(close.shape[1], dtype=bool)
        with np.errstate(invalid="ignore"):
            momentum = close[-1] / close[-1 - lookback] - 1.0
        return np.isfinite(momentum) & (momentum < 0)

    def trailing(close: np.ndarray) -> np.ndarray:
        return trailing_volatility(close, bt.inverse_vol_window_days) * math.sqrt(bt.periods_per_year)

    return {
        "trend_risk_off_detector": _on_calendar(
            data, lambda d, listed: trend_risk_off(worst[d], listed, config.share), "trend_risk_off_detector"),
        "trend_risk_off_momentum": lambda close: trend_risk_off(momentum_down(close), np.isfinite(close[-1]), config.share),
        "vol_target_detector": _on_calendar(
            data, lambda d, listed: vol_target(expected_vol[d], listed, calibration.target_vol), "vol_target_detector"),
        "vol_target_trailing": lambda close: vol_target(trailing(close), np.isfinite(close[-1]), calibration.target_vol),
    }
