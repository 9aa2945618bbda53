"""Confidence intervals for strategy comparisons: a stationary block bootstrap (Politis & Romano
1994) of the differences in Sharpe ratio and CAGR between strategies run over the same days.

Daily returns are serially dependent (volatility clusters, trends persist), so resampling single
days would understate the uncertainty. The stationary bootstrap resamples blocks of consecutive
days whose lengths are geometric with mean ``mean_block`` (a new block starts at each day with
probability ``1 / mean_block``, at a uniformly drawn day, wrapping around the end). The resampled
series is stationary, unlike with fixed blocks.

Comparisons are paired: every strategy is resampled on the *same* days in a given replicate, so
the interval of a difference reflects how the two differ, not the market's swings they share.
Intervals are two-sided percentile intervals; the estimate is the difference on the original
series. Settings: configs/allocation.yaml ``bootstrap``.

The differences:

* Sharpe: ``sharpe(a) - sharpe(b)``;
* CAGR: ``(1 + cagr(a)) / (1 + cagr(b)) - 1``, how much faster a compounded than b per year
  (the CAGR of the ratio of their equity curves). The plain ``cagr(a) - cagr(b)`` scales with
  the market's level: a resampled boom year in which both strategies make +800% puts a gap of
  hundreds of points between two near-identical strategies, and its interval says more about
  the market than about them (on 2024, [-181%, +5%] for two strategies whose Sharpe ratios
  differed by 0.00 [-0.09, +0.08]).

Shapes: a replicate matrix is (B, n): B resamples of n days.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation import performance

METRICS = ("sharpe", "cagr")
_CHUNK = 500  # replicates drawn at once: memory is a few CHUNK x n arrays, whatever the count


@dataclass(frozen=True)
class BootstrapSettings:
    """configs/allocation.yaml ``bootstrap``."""

    mean_block_days: float
    resamples: int
    confidence: float
    seed: int

    @classmethod
    def from_config(cls) -> BootstrapSettings:
        return _configured()


@cache
def _configured() -> BootstrapSettings:
    raw = load_yaml("allocation")["bootstrap"]
    return BootstrapSettings(float(raw["mean_block_days"]), int(raw["resamples"]), float(raw["confidence"]), int(raw["seed"]))


def stationary_indices(n: int, mean_block: float, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) day indices of stationary-bootstrap resamples of a series of n days.

    Each row starts a block at a uniform day; every later position starts a new block with
    probability ``1 / mean_block`` and otherwise continues with the next day (after the last
    day comes the first). ``mean_block = 1`` is the ordinary i.i.d. bootstrap.
    """
    if n < 1:
        raise ValueError("cannot resample an empty series")
    if mean_block < 1:
        raise ValueError(f"mean block length must be >= 1 day, got {mean_block}")
    starts = rng.integers(0, n, size=(resamples, n))
    new_block = rng.random((resamples, n)) < 1.0 / mean_block
    new_block[:, 0] = True
    positions = np.arange(n)
    # For each position, where its block began: the last position <= it that started a block.
    began = np.maximum.accumulate(np.where(new_block, positions, 0), axis=1)
    first_day = np.take_along_axis(starts, began, axis=1)
    return (first_day + (positions - began)) % n


def resampled_metrics(returns: np.ndarray, indices: np.ndarray, periods: int = performance.PERIODS_PER_YEAR) -> dict[str, np.ndarray]:
    """Sharpe ratio and annual log growth ``log(1 + CAGR)`` of each resample: ``{"sharpe": (B,),
    "log_growth": (B,)}``, as :mod:`performance` defines them (NaN Sharpe for a resample with
    zero volatility).

    :param returns: (n,) daily net simple returns
    :param indices: (B, n) resampled day indices, e.g. from :func:`stationary_indices`
    """
    r = np.asarray(returns, dtype="float64")
    sample = r[indices]
    n = indices.shape[1]
    mean = sample.mean(axis=1)
    std = sample.std(axis=1, ddof=1) if n > 1 else np.full(indices.shape[0], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = np.where(std > 0, mean / std * math.sqrt(periods), np.nan)
    return {"sharpe": sharpe, "log_growth": np.log1p(sample).sum(axis=1) * periods / n}


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Two-sided percentile interval of the finite `samples`; NaN when more than half are NaN
    (e.g. a strategy that held only cash has no Sharpe ratio)."""
    finite = samples[np.isfinite(samples)]
    if finite.size * 2 < samples.size or finite.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def _difference(metric: str, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """Sharpe: a - b; CAGR from annual log growths: exp(a - b) - 1 (see the module docstring)."""
    return a - b if metric == "sharpe" else np.expm1(a - b)


def _point(metric: str, r: np.ndarray, periods: int) -> float:
    if metric == "sharpe":
        return performance.sharpe(r, periods)
    return float(np.log1p(r).sum() * periods / r.size)


def compare(
    returns: Mapping[str, np.ndarray],
    references: Sequence[str],
    settings: BootstrapSettings | None = None,
    periods: int = performance.PERIODS_PER_YEAR,
) -> pd.DataFrame:
    """Differences of every strategy to each reference in Sharpe ratio and CAGR, with intervals.

    :param returns: ``{strategy: (n,) daily net returns}``, all over the same n days
    :param references: names in `returns` to compare against (e.g. equal weight, BTC)
    :returns: one row per (strategy, reference) with the reference itself left out:
        ``strategy, reference, <metric>_diff, <metric>_low, <metric>_high`` for sharpe and cagr
        (the CAGR difference as a fraction: 0.05 = compounding 5% a year faster than the
        reference), ``n_days``, ``resamples``, ``mean_block_days``. Seeded: the same inputs and
        settings give the same intervals.
    """
    settings = BootstrapSettings.from_config() if settings is None else settings
    series = {name: np.asarray(r, dtype="float64") for name, r in returns.items()}
    lengths = {r.size for r in series.values()}
    if len(lengths) != 1:
        raise ValueError(f"strategies must cover the same days; lengths {sorted(lengths)}")
    missing = [r for r in references if r not in series]
    if missing:
        raise ValueError(f"reference(s) {missing} not among the strategies {list(series)}")
    n = lengths.pop()
    rng = np.random.default_rng(settings.seed)
    replicated: dict[str, dict[str, list[np.ndarray]]] = {name: {"sharpe": [], "log_growth": []} for name in series}
    for done in range(0, settings.resamples, _CHUNK):
        indices = stationary_indices(n, settings.mean_block_days, min(_CHUNK, settings.resamples - done), rng)
        for name, r in series.items():
            for metric, values in resampled_metrics(r, indices, periods).items():
                replicated[name][metric].append(values)
    metrics = {name: {m: np.concatenate(v) for m, v in per.items()} for name, per in replicated.items()}
    rows = []
    for reference in references:
        for name, r in series.items():
            if name == reference:
                continue
            row: dict[str, object] = {"strategy": name, "reference": reference}
            for metric in METRICS:
                key = "sharpe" if metric == "sharpe" else "log_growth"
                diff = _difference(metric, metrics[name][key], metrics[reference][key])
                low, high = percentile_interval(diff, settings.confidence)
                row[f"{metric}_diff"] = float(_difference(metric, _point(metric, r, periods), _point(metric, series[reference], periods)))
                row[f"{metric}_low"], row[f"{metric}_high"] = low, high
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.assign(n_days=n, resamples=settings.resamples, mean_block_days=settings.mean_block_days)
