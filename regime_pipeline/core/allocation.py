"""The allocation agent's inputs and its deployed form: prices and regime probabilities as
arrays, environments over a date range, and a trained actor as plain numpy that turns an
observation into target weights (for backtests and the weekly rebalance, without torch).

Observation layout: see :mod:`regime_pipeline.core.env`. Its probability block (P columns)
is, for each universe asset in order, that asset's vol and trend class probabilities, then
the market-wide cross probabilities once: ``P = N · (n_vol + n_trend) + n_cross``. A day
without probabilities for an asset (not listed, or too short a history for the detectors'
windows) has zeros there, and the observation's listed mask tells the policy which is which.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from regime_pipeline.core.env import AllocationEnv, RewardConfig
from regime_pipeline.core.portfolio import Result, simulate
from regime_pipeline.core.strategies import (
    Prices,
    Strategy,
    benchmark_results,
    decision_days,
    settings,
    wide_prices,
)

ASSET_PREFIXES = ("vol_", "trend_")
MARKET_PREFIX = "cross_"


@dataclass(frozen=True)
class AllocationData:
    """Everything the environment reads, on one gap-free daily calendar.

    :ivar prices: open/close (T, N) in USDT, NaN = not listed.
    :ivar probs: (T, P) regime probabilities known at each day's close, NaN = none that day.
    :ivar prob_columns: (P,) names, ``<symbol>:<column>`` per asset, then ``cross_<class>``.
    """

    prices: Prices
    probs: np.ndarray
    prob_columns: tuple[str, ...]

    def index(self, day: dt.date) -> int:
        """Row of `day` in the calendar."""
        hits = np.flatnonzero(self.prices.dates == day)
        if hits.size == 0:
            raise ValueError(f"{day} is outside the data ({self.prices.dates[0]}..{self.prices.dates[-1]})")
        return int(hits[0])


def allocation_data(bars: pd.DataFrame, probabilities: pd.DataFrame, end: dt.date | None = None) -> AllocationData:
    """Pivot `daily_bars` and `regime_probabilities` rows to arrays on the bars' calendar.

    :param bars: ``date, symbol, open, close, ...`` rows.
    :param probabilities: ``date, symbol, vol_<c>..., trend_<c>..., cross_<c>...`` rows (the
        cross columns repeat the date's market-wide values on every symbol's row).
    :param end: last day of the calendar; default the last bar.
    """
    prices = wide_prices(bars, end)
    calendar = pd.DatetimeIndex(pd.to_datetime(prices.dates))
    asset_columns = [c for c in probabilities.columns if c.startswith(ASSET_PREFIXES)]
    market_columns = [c for c in probabilities.columns if c.startswith(MARKET_PREFIX)]
    frame = probabilities.assign(date=pd.to_datetime(probabilities["date"]))
    blocks, names = [], []
    for symbol in prices.symbols:
        rows = frame.loc[frame["symbol"] == symbol].set_index("date")[asset_columns]
        blocks.append(rows.reindex(calendar).to_numpy(dtype="float64"))
        names += [f"{symbol}:{c}" for c in asset_columns]
    market = frame.groupby("date")[market_columns].first().reindex(calendar)
    blocks.append(market.to_numpy(dtype="float64"))
    names += market_columns
    return AllocationData(prices, np.concatenate(blocks, axis=1), tuple(names))


def _window(data: AllocationData, start: dt.date, end: dt.date) -> tuple[int, int, np.ndarray]:
    """(first row, last row, decision rows relative to the first) of a run over start..end."""
    days = decision_days(data.prices.dates, start, end, settings().rebalance_weekday)
    first, last = int(days[0]), data.index(end)
    return first, last, days - first


def make_env(
    data: AllocationData,
    start: dt.date,
    end: dt.date,
    *,
    episode_weeks: int | None = None,
    random_start: bool = False,
    reward: RewardConfig | None = None,
    action_scale: float = 1.0,
) -> AllocationEnv:
    """The environment over ``start..end`` (inclusive): the first decision is at the close of
    the day before `start`, the last step ends at the close of `end`. Nothing after `end` is
    given to it. Defaults give one deterministic episode over the whole window (evaluation)."""
    return _env(data, _window(data, start, end), episode_weeks=episode_weeks, random_start=random_start,
                reward=reward, action_scale=action_scale)


def _env(data: AllocationData, window: tuple[int, int, np.ndarray], **kwargs: Any) -> AllocationEnv:
    first, last, days = window
    rows = slice(first, last + 1)
    return AllocationEnv(data.prices.open[rows], data.prices.close[rows], data.probs[rows], days, settings().costs, **kwargs)


_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


@dataclass(frozen=True)
class AllocationPolicy:
    """A deterministic actor: standardise the observation with the training statistics, then
    an MLP to the action (the mean of the PPO policy's Gaussian).

    :ivar layers: ``[(W (out, in), b (out,)), ...]``, the last one linear (the action head).
    :ivar obs_mean, obs_var: (D,) observation statistics (VecNormalize's running mean/var).
    :ivar clip_obs: standardised observations are clipped to ±clip_obs.
    :ivar epsilon: added to the variance before the square root.
    :ivar activation: hidden-layer activation, ``tanh`` or ``relu``.
    :ivar action_scale: the environment's action multiplier it was trained with.
    """

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    obs_mean: np.ndarray
    obs_var: np.ndarray
    clip_obs: float
    epsilon: float
    activation: str = "tanh"
    action_scale: float = 1.0

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        z = (np.asarray(obs, dtype="float64") - self.obs_mean) / np.sqrt(self.obs_var + self.epsilon)
        return np.minimum(np.maximum(z, -self.clip_obs), self.clip_obs)

    def action(self, obs: np.ndarray) -> np.ndarray:
        """(D,) observation -> (N + 1,) action in [-1, 1]."""
        h = self.normalize(obs)
        act = _ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(self.layers):
            h = w @ h + b
            if i < len(self.layers) - 1:
                h = act(h)
        return np.minimum(np.maximum(h, -1.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in self.layers],
            "obs_mean": self.obs_mean.tolist(),
            "obs_var": self.obs_var.tolist(),
            "clip_obs": self.clip_obs,
            "epsilon": self.epsilon,
            "activation": self.activation,
            "action_scale": self.action_scale,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AllocationPolicy:
        layers = tuple(
            (np.asarray(layer["weight"], dtype="float64"), np.asarray(layer["bias"], dtype="float64"))
            for layer in raw["layers"]
        )
        return cls(
            layers=layers,
            obs_mean=np.asarray(raw["obs_mean"], dtype="float64"),
            obs_var=np.asarray(raw["obs_var"], dtype="float64"),
            clip_obs=float(raw["clip_obs"]),
            epsilon=float(raw["epsilon"]),
            activation=str(raw["activation"]),
            action_scale=float(raw["action_scale"]),
        )


def policy_targets(policy: AllocationPolicy, env: AllocationEnv) -> np.ndarray:
    """Run `policy` through one deterministic episode of `env` from its first decision to the
    end; return the (K, N + 1) target weights it chose."""
    obs, _ = env.reset(options={"start": 0})
    targets = []
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(policy.action(obs))
        targets.append(info["target"])
        done = terminated or truncated
    return np.stack(targets)


def backtest_policy(policy: AllocationPolicy, data: AllocationData, start: dt.date, end: dt.date) -> Result:
    """The policy's weekly run over ``start..end`` through :func:`portfolio.simulate`, the same
    accounting and costs as the benchmarks (:func:`strategies.run_strategy`): row 0 is the day
    before `start`."""
    first, last, days = window = _window(data, start, end)
    targets = policy_targets(policy, _env(data, window, episode_weeks=None, action_scale=policy.action_scale))
    rows = slice(first, last + 1)
    return simulate(
        data.prices.open[rows], data.prices.close[rows], targets, days, settings().costs,
        dates=data.prices.dates[rows], symbols=data.prices.symbols,
    )


def compare(
    data: AllocationData, policies: Mapping[str, AllocationPolicy], start: dt.date, end: dt.date,
    benchmarks: Mapping[str, Strategy] | None = None,
) -> dict[str, Result]:
    """Backtests of `policies` and of `benchmarks` (default: the four of
    :func:`strategies.benchmark_strategies`) over ``start..end``, all on the same prices,
    decision days, accounting and costs: ``{name: Result}``, policies first."""
    results = {name: backtest_policy(policy, data, start, end) for name, policy in policies.items()}
    results.update(benchmark_results(data.prices, start, end, None if benchmarks is None else dict(benchmarks)))
    return results


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype="float64")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
