"""Survivorship bias, measured: the same strategies backtested on two universes (the fixed
survivors and the point-in-time one) over the same days, with one accounting, and the difference
of each strategy's CAGR with a paired moving-block bootstrap interval.

A universe's run is its own prices, members, probabilities and policies (each from a pipeline run
in that mode); the comparison reads nothing else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from regime_pipeline.core.allocation import performance
from regime_pipeline.core.allocation.policy import AllocationData, AllocationPolicy, backtest_policy, mean_sd
from regime_pipeline.core.allocation.strategies import backtest_benchmarks, benchmark_results

PPO_MEAN = "ppo_seeds_mean"


@dataclass(frozen=True)
class UniverseRun:
    """One universe's inputs to the comparison.

    :ivar name: e.g. ``fixed``, ``point_in_time``
    :ivar data: its prices (with members) and regime probabilities
    :ivar vol_forecasts: its `vol_forecasts` rows (the forecast inverse-vol benchmark)
    :ivar policies: its PPO policies by seed
    """

    name: str
    data: AllocationData
    vol_forecasts: pd.DataFrame
    policies: Mapping[str, AllocationPolicy] = field(default_factory=dict)


def daily_returns(run: UniverseRun, start: dt.date, end: dt.date) -> dict[str, np.ndarray]:
    """Daily net returns (n days of ``start..end``) of every benchmark and PPO seed of `run`, and
    of the seeds' mean (``ppo_seeds_mean``: an equal split of capital over the seeds' books,
    reweighted daily)."""
    strategies = backtest_benchmarks(run.data.prices, run.vol_forecasts)
    out = {name: r.period_returns for name, r in benchmark_results(run.data.prices, start, end, strategies).items()}
    seeds = {f"ppo_seed_{s}": backtest_policy(p, run.data, start, end).period_returns for s, p in run.policies.items()}
    out.update(seeds)
    if seeds:
        out[PPO_MEAN] = np.mean(np.stack(list(seeds.values())), axis=0)
    return out


def paired_block_interval(
    a: np.ndarray, b: np.ndarray, block_days: int = 30, resamples: int = 1000, seed: int = 7, level: float = 0.90,
) -> tuple[float, float]:
    """Interval of CAGR(a) - CAGR(b) for two daily return series of the same days, by a moving-block
    bootstrap that draws the same days for both (blocks of `block_days` consecutive days, with
    replacement, until the length is reached)."""
    n = a.size
    if b.size != n:
        raise ValueError(f"paired series must have the same days, got {a.size} and {b.size}")
    rng = np.random.default_rng(seed)
    blocks = int(np.ceil(n / block_days))
    offsets = np.arange(block_days)
    diffs = np.empty(resamples)
    for i in range(resamples):
        starts = rng.integers(0, n - block_days + 1, size=blocks)
        idx = (starts[:, None] + offsets[None, :]).reshape(-1)[:n]
        diffs[i] = performance.cagr(a[idx]) - performance.cagr(b[idx])
    tail = (1.0 - level) / 2.0
    return float(np.quantile(diffs, tail)), float(np.quantile(diffs, 1.0 - tail))


def comparison_table(
    first: UniverseRun, second: UniverseRun, periods: Mapping[str, tuple[dt.date, dt.date]],
    block_days: int = 30, resamples: int = 1000, seed: int = 7,
) -> pd.DataFrame:
    """Per period and strategy: total return, CAGR, Sortino and max drawdown on each universe, and
    CAGR(first) - CAGR(second) with its 90% paired block-bootstrap interval. PPO seeds are
    summarised as mean ± sd over seeds (``ppo_seeds``), the seeds' mean book carries the interval."""
    rows = []
    for period, (start, end) in periods.items():
        a, b = daily_returns(first, start, end), daily_returns(second, start, end)
        for name in [n for n in a if n in b and not n.startswith("ppo_seed_")]:
            low, high = paired_block_interval(a[name], b[name], block_days, resamples, seed)
            row = {"period": period, "strategy": name}
            for label, series in ((first.name, a[name]), (second.name, b[name])):
                row.update({f"{label}_total_return": performance.total_return(series),
                            f"{label}_cagr": performance.cagr(series),
                            f"{label}_sortino": performance.sortino(series),
                            f"{label}_max_drawdown": performance.max_drawdown(series)})
            row.update({"cagr_difference": performance.cagr(a[name]) - performance.cagr(b[name]),
                        "cagr_difference_low": low, "cagr_difference_high": high})
            rows.append(row)
        seed_rows = {}
        for label, series in ((first.name, a), (second.name, b)):
            seeds = [v for k, v in series.items() if k.startswith("ppo_seed_")]
            if seeds:
                for metric, fn in (("total_return", performance.total_return), ("cagr", performance.cagr),
                                   ("sortino", performance.sortino), ("max_drawdown", performance.max_drawdown)):
                    m, sd = mean_sd([fn(s) for s in seeds])
                    seed_rows[f"{label}_{metric}"] = f"{m:+.4f} ± {sd:.4f} (n={len(seeds)})"
        if seed_rows:
            rows.append({"period": period, "strategy": "ppo_seeds", **seed_rows})
    return pd.DataFrame(rows)
