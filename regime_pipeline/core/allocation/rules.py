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
from regime_pipeline.core.allocation.strategies import settings as backtest_settings

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


def trend_risk_off_rows(downtrend: np.ndarray, listed: np.ndarray, share: float) -> np.ndarray:
    """:func:`trend_risk_off` for K decisions at once: (K, N) masks in, (K, N + 1) weights out."""
    k, n = listed.shape
    m = listed.sum(axis=1)
    cash = (m == 0) | ((downtrend & listed).sum(axis=1) > share * m)
    w = np.zeros((k, n + 1))
    w[:, :n] = np.where(listed & ~cash[:, None], 1.0 / np.maximum(m, 1)[:, None], 0.0)
    w[:, n] = cash
    return w


def trend_risk_off(downtrend: np.ndarray, listed: np.ndarray, share: float) -> np.ndarray:
    """All cash when more than `share` of the `listed` assets (N,) are in a `downtrend` (N,),
    else equal weight over them; all cash when none is listed."""
    return trend_risk_off_rows(downtrend[None], listed[None], share)[0]


def vol_target_rows(sigma: np.ndarray, listed: np.ndarray, target: float) -> np.ndarray:
    """:func:`vol_target` for K decisions at once: (K, N) in, (K, N + 1) weights out."""
    k, n = listed.shape
    m = listed.sum(axis=1)
    known = np.isfinite(sigma) & (sigma > 0)
    scale = np.minimum(1.0, np.divide(target, sigma, out=np.ones_like(sigma), where=known))
    w = np.zeros((k, n + 1))
    w[:, :n] = np.where(listed, scale / np.maximum(m, 1)[:, None], 0.0)
    w[:, n] = np.maximum(0.0, 1.0 - w[:, :n].sum(axis=1))
    return w


def vol_target(sigma: np.ndarray, listed: np.ndarray, target: float) -> np.ndarray:
    """Equal weight over the `listed` assets, each scaled by ``min(1, target / sigma_i)``; an
    asset without a finite positive `sigma` (N,) is not scaled; the rest in cash (all cash when
    none is listed)."""
    return vol_target_rows(sigma[None], listed[None], target)[0]


class DailyRule:
    """A rule on precomputed per-day signals (rows known at each day's close, so causal): a
    :data:`~regime_pipeline.core.allocation.strategies.Strategy` for one decision (the day found
    from the closes it is handed, which must be `data`'s), and :meth:`targets` for many decisions
    at once (what ``run_strategy`` uses)."""

    def __init__(self, data: AllocationData, rows, name: str) -> None:
        self._close = data.prices.close
        # Who a decision may weigh: the universe's members (every listed asset without one) that
        # can be traded at the next open, as Prices.eligible_days says.
        self._listed = data.prices.eligible_days()
        self._rows = rows  # (day indices (K,), listed (K, N)) -> (K, N + 1) weights
        self.name = name

    def targets(self, close: np.ndarray, days: np.ndarray) -> np.ndarray:
        """(K, N + 1) weights at the closes of `days`, row indices into `close` (the data's)."""
        if close is not self._close and not np.array_equal(close, self._close, equal_nan=True):
            raise ValueError(f"{self.name}: the closes do not match the data it was built with")
        return self._rows(days, self._listed[days])

    def __call__(self, close: np.ndarray) -> np.ndarray:
        d = close.shape[0] - 1
        ok = d < self._close.shape[0] and close.shape[1] == self._close.shape[1]
        if ok:
            a, b = close[-1], self._close[d]
            # A close the strategy may not see (Prices.seen_at hides it) is NaN.
            ok = bool(((a == b) | np.isnan(a)).all())
        if not ok:
            raise ValueError(f"{self.name}: the closes do not match the data it was built with")
        return self._rows(np.array([d]), self._listed[[d]])[0]


def rule_strategies(data: AllocationData, calibration: Calibration, config: RuleSettings | None = None) -> dict[str, DailyRule]:
    """The four rules on `data` (prices and probabilities on one calendar), with the training
    `calibration`: ``{trend_risk_off_detector, trend_risk_off_momentum, vol_target_detector,
    vol_target_trailing}``. Each reads nothing after its decision day."""
    config = RuleSettings.from_config() if config is None else config
    bt = backtest_settings()
    close = data.prices.close
    trend = _probabilities(data, TREND_PREFIX)  # (T, N, K)
    worst = np.isfinite(trend).all(axis=2) & (np.argmax(np.nan_to_num(trend, nan=-1.0), axis=2) == 0)
    vol = _probabilities(data, VOL_PREFIX)
    expected_vol = np.where(np.isfinite(vol).all(axis=2), np.nan_to_num(vol) @ np.asarray(calibration.vol_levels), np.nan)
    lookback = bt.momentum_lookback_days
    momentum = np.full(close.shape, np.nan)
    momentum[lookback:] = close[lookback:] / close[:-lookback] - 1.0
    momentum_down = np.isfinite(momentum) & (momentum < 0)
    trailing = _annualised_trailing_vol(close, bt.inverse_vol_window_days)
    target = calibration.target_vol

    return {
        "trend_risk_off_detector": DailyRule(
            data, lambda d, listed: trend_risk_off_rows(worst[d], listed, config.share), "trend_risk_off_detector"),
        "trend_risk_off_momentum": DailyRule(
            data, lambda d, listed: trend_risk_off_rows(momentum_down[d], listed, config.share), "trend_risk_off_momentum"),
        "vol_target_detector": DailyRule(
            data, lambda d, listed: vol_target_rows(expected_vol[d], listed, target), "vol_target_detector"),
        "vol_target_trailing": DailyRule(
            data, lambda d, listed: vol_target_rows(trailing[d], listed, target), "vol_target_trailing"),
    }
