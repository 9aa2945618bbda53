"""Performance metrics of a strategy, defined once, on daily net-of-cost simple returns.

Every backtest, benchmark, RL evaluation and report calls these functions; nobody re-derives a
Sharpe ratio elsewhere. Conventions (checked against ``empyrical-reloaded`` with
``annualization=365`` in the tests):

* input ``r``: 1-D array of daily *simple* returns after costs, ``r[t] = V[t] / V[t-1] - 1``;
  no NaN allowed (raise);
* ``A = periods_per_year`` = 365 (configs/backtest.yaml): crypto trades every calendar day, so
  the equities' 252 would understate annualised figures (sqrt(252/365) ≈ 0.83 on Sharpe);
* risk-free rate and target return are zero;
* the equity curve starts at 1.0 *before* the first return: ``E = [1, cumprod(1 + r)]``.

Definitions:

* ``total_return = E[-1] - 1``
* ``cagr = E[-1] ** (A / n) - 1`` (n = number of returns)
* ``annual_volatility = std(r, ddof=1) * sqrt(A)``
* ``sharpe = mean(r) / std(r, ddof=1) * sqrt(A)``
* ``sortino = mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(A)`` -- the downside deviation is
  averaged over ALL days (positive days count as 0), not over the negative days only
* ``max_drawdown = min(E / cummax(E) - 1)``, the running peak INCLUDING the start value 1.0,
  a number in [-1, 0] (-0.35 = a 35% fall from a peak)
* ``calmar = cagr / |max_drawdown|``

Sortino misranks losing strategies: with a negative mean, a larger downside deviation moves it
toward zero, so the more volatile of two losers scores better (a rule that lost 28% with a 32%
drawdown scored -1.51, equal weight losing 31% with a 47% drawdown -0.31). :func:`summary` flags
it (``sortino_mean_negative``); reports put total return, max drawdown and Calmar beside it.

Edge cases (chosen to match empyrical, so the independent check holds everywhere):

* empty input: every metric is nan (total_return too);
* fewer than 2 returns or ``std == 0`` (e.g. all-cash): sharpe and annual_volatility -> nan for
  n < 2; for std == 0, annual_volatility is 0 and sharpe is nan (a ratio with no risk is
  undefined, not infinitely good);
* no negative day: downside deviation is 0, so sortino = +inf if mean > 0, nan if mean == 0;
* no drawdown (max_drawdown == 0): calmar is nan;
* a return of -100% makes the equity 0: cagr is -1, max_drawdown is -1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from regime_pipeline.configs import load_yaml


def periods_per_year() -> int:
    """Daily returns per year, from configs/backtest.yaml (365)."""
    return int(load_yaml("backtest")["periods_per_year"])


PERIODS_PER_YEAR = 365  # default argument value; the tests assert it equals the yaml


def _returns(r: np.ndarray | list[float]) -> np.ndarray:
    arr = np.asarray(r, dtype="float64")
    if arr.ndim != 1:
        raise ValueError(f"returns must be 1-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        i = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"returns must be finite; r[{i}] = {arr[i]}")
    if (arr < -1).any():
        raise ValueError("a simple return below -100% is impossible for a long-only portfolio")
    return arr


def equity_curve(r: np.ndarray | list[float]) -> np.ndarray:
    """Equity (n + 1,): the start value 1.0 followed by the value after each return."""
    arr = _returns(r)
    return np.concatenate([[1.0], np.cumprod(1.0 + arr)])


def total_return(r: np.ndarray | list[float]) -> float:
    """Compounded return over the whole series (0.25 = +25%); nan if empty."""
    arr = _returns(r)
    return float(np.prod(1.0 + arr) - 1.0) if arr.size else math.nan


def cagr(r: np.ndarray | list[float], periods: int = PERIODS_PER_YEAR) -> float:
    """Compound annual growth rate: ``E_end ** (periods / n) - 1``; nan if empty."""
    arr = _returns(r)
    if arr.size == 0:
        return math.nan
    end = float(np.prod(1.0 + arr))
    return end ** (periods / arr.size) - 1.0


def annual_volatility(r: np.ndarray | list[float], periods: int = PERIODS_PER_YEAR) -> float:
    """``std(r, ddof=1) * sqrt(periods)``; nan for fewer than 2 returns."""
    arr = _returns(r)
    if arr.size < 2:
        return math.nan
    return float(np.std(arr, ddof=1) * math.sqrt(periods))


def sharpe(r: np.ndarray | list[float], periods: int = PERIODS_PER_YEAR) -> float:
    """``mean(r) / std(r, ddof=1) * sqrt(periods)``; nan for n < 2 or zero std."""
    arr = _returns(r)
    if arr.size < 2:
        return math.nan
    std = float(np.std(arr, ddof=1))
    if std == 0.0:
        return math.nan
    return float(arr.mean() / std * math.sqrt(periods))


def sortino(r: np.ndarray | list[float], periods: int = PERIODS_PER_YEAR) -> float:
    """``mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(periods)``, downside over ALL days.

    No negative day: +inf when mean > 0, nan when mean == 0. Empty: nan.
    """
    arr = _returns(r)
    if arr.size == 0:
        return math.nan
    mean = float(arr.mean())
    downside = math.sqrt(float(np.mean(np.minimum(arr, 0.0) ** 2)))
    if downside == 0.0:
        return math.inf if mean > 0 else math.nan
    return mean / downside * math.sqrt(periods)


def max_drawdown(r: np.ndarray | list[float]) -> float:
    """Worst fall from a running peak of the equity curve (start 1.0 included), in [-1, 0]."""
    arr = _returns(r)
    if arr.size == 0:
        return math.nan
    equity = equity_curve(arr)
    peak = np.maximum.accumulate(equity)
    return float(np.min(equity / peak - 1.0))


def calmar(r: np.ndarray | list[float], periods: int = PERIODS_PER_YEAR) -> float:
    """``cagr / |max_drawdown|``; nan when there is no drawdown or no data."""
    mdd = max_drawdown(r)
    if not mdd < 0:
        return math.nan
    return cagr(r, periods) / abs(mdd)


def summary(
    returns: np.ndarray | list[float],
    turnover: np.ndarray | list[float] | None = None,
    periods: int = PERIODS_PER_YEAR,
) -> dict[str, Any]:
    """All metrics as plain floats, ready for JSON or Dagster metadata.

    :param returns: daily net returns (n,)
    :param turnover: optional turnover per rebalance (k,) as from ``portfolio.simulate``;
        adds ``n_rebalances``, ``mean_turnover`` and ``annual_turnover`` (total turnover per
        ``periods`` days).
    """
    arr = _returns(returns)
    out: dict[str, Any] = {
        "n_days": int(arr.size),
        "total_return": total_return(arr),
        "cagr": cagr(arr, periods),
        "annual_volatility": annual_volatility(arr, periods),
        "sharpe": sharpe(arr, periods),
        "sortino": sortino(arr, periods),
        "max_drawdown": max_drawdown(arr),
        "calmar": calmar(arr, periods),
        # Sortino cannot rank strategies whose mean daily return is negative (module docstring).
        "sortino_mean_negative": bool(arr.size and arr.mean() < 0),
    }
    if turnover is not None:
        t = np.asarray(turnover, dtype="float64")
        out["n_rebalances"] = int(t.size)
        out["mean_turnover"] = float(t.mean()) if t.size else math.nan
        out["annual_turnover"] = float(t.sum() * periods / arr.size) if arr.size else math.nan
    return out
