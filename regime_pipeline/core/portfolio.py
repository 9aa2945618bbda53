"""Portfolio accounting shared by every backtest, the RL environment and the paper broker.

Model (long-only, N assets quoted in USDT plus USDT cash):

* a weight vector has N + 1 entries, assets first and **cash last**; every entry is >= 0 and
  they sum to 1. An asset with no price (not listed yet: NaN) must have weight 0.
* day t has an open and a close price per asset; ``V_close[t]`` is the portfolio value at the
  close of day t.
* a decision taken at the CLOSE of day d (knowing prices up to and including close d) is
  traded at the OPEN of day d + 1. Between trades the *units* held are constant, so the
  weights drift with prices.
* row 0 is the anchor day: the capital 1.0 is all cash at its close (``equity[0] = 1``,
  ``returns[0] = 0``). Its close is the first moment a decision can be taken, so the first
  possible trade is at the open of day 1. Metrics of a run use ``returns[1:]``
  (:attr:`Result.period_returns`).
* the return of a trade day d + 1 chains the overnight gap with the old holdings, the cost,
  and the day with the new holdings::

      V_open  = cash + units_old · open[d+1]                  (close d -> open d+1, old weights)
      cost    = rate · turnover · V_open                      (rate = (fee + slippage) per side)
      units   = w_target[:N] · (V_open - cost) / open[d+1]    (targets hold AFTER the cost)
      V_close = cash_new + units · close[d+1]                 (open d+1 -> close d+1, new weights)
      r[d+1]  = V_close / V_close[d] - 1

  so a trade is charged once, inside the day it happens. The cost is taken pro rata from the
  whole portfolio (not from the cash line only): the weights right after the trade are exactly
  the target.
* turnover = Σ_assets |w_target - w_drifted| at the trade's open, cash EXCLUDED. Every asset
  trade is one USDT-quoted order, so this is the traded notional over equity with each order
  counted once and NOT halved: cash -> 100% BTC is 1.0 (one buy), 100% BTC -> 100% ETH is
  2.0 (a sell and a buy), each paying the per-side fee + slippage.

The loop runs over rebalances only (weekly: a few hundred over the whole history); the days
between two trades are computed with array operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from regime_pipeline.configs import load_yaml
from regime_pipeline.core import performance

# Slack for "sum to 1" and ">= 0": targets come out of float arithmetic.
WEIGHT_TOL = 1e-9


@dataclass(frozen=True)
class Costs:
    """Trading costs per side, in basis points of traded notional."""

    fee_bps: float
    slippage_bps: float

    @property
    def rate(self) -> float:
        """Cost per unit of turnover, as a fraction (10 + 5 bps -> 0.0015)."""
        return (self.fee_bps + self.slippage_bps) / 1e4

    @classmethod
    def from_config(cls) -> Costs:
        raw = load_yaml("backtest")["costs"]
        return cls(fee_bps=float(raw["fee_bps"]), slippage_bps=float(raw["slippage_bps"]))


@dataclass(frozen=True)
class Result:
    """Outcome of :func:`simulate` over T days (row 0 = the anchor day).

    :ivar returns: (T,) daily net-of-cost simple returns, close to close; ``returns[0] = 0``.
    :ivar equity: (T,) portfolio value at each close, ``equity[0] = 1.0``.
    :ivar equity_open: (T,) value at each open after that open's trade and its cost (the value
        before the trade where there is none); ``equity_open[0] = 1.0``.
    :ivar weights: (T, N + 1) weights held at each close (drifted), cash last.
    :ivar rebalance_days: (K,) index of the day whose OPEN each trade happened at (decision + 1).
    :ivar targets: (K, N + 1) the target weights traded.
    :ivar turnover: (K,) Σ_assets |target - drifted| per trade (see module docstring).
    :ivar costs: (K,) cost paid per trade, in units of equity (the start capital is 1.0).
    :ivar dates: (T,) the day of each row, if given to :func:`simulate`.
    :ivar symbols: the N asset symbols, if given.
    """

    returns: np.ndarray
    equity: np.ndarray
    equity_open: np.ndarray
    weights: np.ndarray
    rebalance_days: np.ndarray
    targets: np.ndarray
    turnover: np.ndarray
    costs: np.ndarray
    dates: np.ndarray | None = None
    symbols: tuple[str, ...] | None = None

    @property
    def period_returns(self) -> np.ndarray:
        """(T - 1,) the returns of the evaluated days, the anchor row left out."""
        return self.returns[1:]

    def summary(self, periods: int | None = None) -> dict[str, Any]:
        """:func:`performance.summary` of :attr:`period_returns` with this run's turnover."""
        periods = performance.periods_per_year() if periods is None else periods
        return performance.summary(self.period_returns, self.turnover, periods)


def _label(i: int, names: Sequence[Any] | None, what: str) -> str:
    return str(names[i]) if names is not None else f"{what} {i}"


def validate_weights(
    weights: np.ndarray,
    prices: np.ndarray,
    *,
    symbol_names: Sequence[str] | None = None,
    day: Any = None,
) -> None:
    """Raise ``ValueError`` unless `weights` (N + 1,) is long-only, sums to 1 and gives no
    weight to an asset whose price in `prices` (N,) is NaN (not listed)."""
    n = prices.shape[0]
    if weights.shape != (n + 1,):
        raise ValueError(f"target on {day}: expected {n + 1} weights (N assets + cash), got {weights.shape}")
    if not np.isfinite(weights).all():
        raise ValueError(f"target on {day}: weights must be finite, got {weights}")
    if (weights < -WEIGHT_TOL).any():
        i = int(np.argmin(weights))
        name = "cash" if i == n else _label(i, symbol_names, "asset")
        raise ValueError(f"target on {day}: negative weight {weights[i]} on {name} (long-only)")
    if abs(weights.sum() - 1.0) > WEIGHT_TOL:
        raise ValueError(f"target on {day}: weights sum to {weights.sum()!r}, not 1")
    unlisted = np.isnan(prices) & (weights[:n] > 0)
    if unlisted.any():
        i = int(np.flatnonzero(unlisted)[0])
        raise ValueError(
            f"target on {day}: weight {weights[i]} on {_label(i, symbol_names, 'asset')}, "
            "which has no price that day (not listed)"
        )


def simulate(
    open_: np.ndarray,
    close: np.ndarray,
    targets: np.ndarray,
    decision_days: np.ndarray | Sequence[int],
    cost: Costs | float,
    *,
    dates: Sequence[Any] | np.ndarray | None = None,
    symbols: Sequence[str] | None = None,
) -> Result:
    """Run the accounting described in the module docstring.

    :param open_: (T, N) open prices in USDT, NaN where the asset is not listed.
    :param close: (T, N) close prices in USDT, NaN where the asset is not listed.
    :param targets: (K, N + 1) target weights, cash last, one row per decision.
    :param decision_days: (K,) strictly increasing day indices in [0, T - 2]; decision k is
        taken at the close of ``decision_days[k]`` and traded at the open of the next day.
    :param cost: a :class:`Costs`, or the rate per unit of turnover as a fraction.
    :param dates: (T,) optional day labels, used in error messages and kept in the result.
    :param symbols: (N,) optional asset names, used in error messages and kept in the result.
    :raises ValueError: bad shapes, invalid weights, a weight on an unlisted asset (naming
        the symbol and the trade day), or a held asset with a missing price.
    """
    open_ = np.asarray(open_, dtype="float64")
    close = np.asarray(close, dtype="float64")
    targets = np.asarray(targets, dtype="float64")
    days = np.asarray(decision_days, dtype="int64").reshape(-1)
    rate = cost.rate if isinstance(cost, Costs) else float(cost)
    if open_.ndim != 2 or open_.shape != close.shape:
        raise ValueError(f"open {open_.shape} and close {close.shape} must be the same (T, N)")
    t_days, n = close.shape
    if targets.ndim != 2 or targets.shape != (days.size, n + 1):
        raise ValueError(f"targets must be ({days.size}, {n + 1}), got {targets.shape}")
    if days.size and (days[0] < 0 or days[-1] > t_days - 2 or (np.diff(days) <= 0).any()):
        raise ValueError(f"decision days must be strictly increasing in [0, {t_days - 2}]")
    if symbols is not None and len(symbols) != n:
        raise ValueError(f"{len(symbols)} symbols for {n} price columns")
    if rate < 0:
        raise ValueError(f"cost rate must be >= 0, got {rate}")
    label = (lambda t: dates[t]) if dates is not None else (lambda t: f"day {t}")

    # Prices with NaN -> 0 for the matrix products: an unlisted asset is held in 0 units, and
    # 0 * NaN would poison the portfolio value. Holding an asset with a missing price is
    # checked explicitly below.
    open0 = np.nan_to_num(open_, nan=0.0)
    close0 = np.nan_to_num(close, nan=0.0)

    value_close = np.empty(t_days)
    value_open = np.empty(t_days)
    weights = np.empty((t_days, n + 1))
    turnover = np.empty(days.size)
    costs = np.empty(days.size)

    units = np.zeros(n)
    cash = 1.0
    # Segment boundaries: day 0, each trade day, T. Within [start, stop) the holdings are fixed
    # from `start`'s open (after its trade) onwards.
    trades = days + 1
    bounds = np.concatenate([[0], trades, [t_days]])
    for k in range(bounds.size - 1):
        start, stop = int(bounds[k]), int(bounds[k + 1])
        if k > 0:  # a trade at the open of `start`
            target = targets[k - 1]
            validate_weights(
                target, open_[start], symbol_names=symbols,
                day=f"{label(start)}'s open (decided at the close of {label(start - 1)})",
            )
            held_open = units * open0[start]
            v_open = cash + held_open.sum()
            drifted = held_open / v_open
            turnover[k - 1] = np.abs(target[:n] - drifted).sum()
            costs[k - 1] = rate * turnover[k - 1] * v_open
            v_after = v_open - costs[k - 1]
            # Clip float dust (e.g. -1e-17) and renormalise so weights stay exactly valid.
            target = np.clip(target, 0.0, None)
            target = target / target.sum()
            with np.errstate(divide="ignore", invalid="ignore"):
                units = np.where(target[:n] > 0, target[:n] * v_after / open0[start], 0.0)
            cash = target[n] * v_after
            value_open[start] = v_after
        else:
            value_open[0] = 1.0
        held = units > 0
        if held.any():
            gap = np.isnan(close[start:stop][:, held]).any(axis=1) | np.isnan(open_[start:stop][:, held]).any(axis=1)
            if gap.any():
                t = start + int(np.flatnonzero(gap)[0])
                missing = np.flatnonzero(held & (np.isnan(close[t]) | np.isnan(open_[t])))
                names = ", ".join(_label(int(i), symbols, "asset") for i in missing)
                raise ValueError(f"held asset(s) {names} have no price on {label(t)}")
        asset_values = close0[start:stop] * units  # (stop - start, N)
        value_close[start:stop] = cash + asset_values.sum(axis=1)
        weights[start:stop, :n] = asset_values / value_close[start:stop, None]
        weights[start:stop, n] = cash / value_close[start:stop]
        # Opens of the non-trade days in the segment: same holdings, no cost.
        value_open[start + 1 : stop] = cash + open0[start + 1 : stop] @ units

    returns = np.empty(t_days)
    returns[0] = 0.0
    returns[1:] = value_close[1:] / value_close[:-1] - 1.0
    return Result(
        returns=returns,
        equity=value_close,
        equity_open=value_open,
        weights=weights,
        rebalance_days=trades,
        targets=targets.copy(),
        turnover=turnover,
        costs=costs,
        dates=None if dates is None else np.asarray(dates),
        symbols=None if symbols is None else tuple(symbols),
    )
