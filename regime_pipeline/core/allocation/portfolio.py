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
  ``returns[0] = 0``), or held as the weights ``initial`` at that close (a book that continues
  from positions it already holds). Its close is the first moment a decision can be taken, so
  the first possible trade is at the open of day 1. Metrics of a run use ``returns[1:]``
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

No loop: between two trades the book only drifts, so the value at a trade's open is the value
after the previous trade times the growth of the previous target's holdings, ``g_k = cash +
Σ w_i · open_i[t_k] / open_i[t_k-1]``, and the value after each trade is a running product of
``g_k · (1 - rate · turnover_k)``. Trades and then days are computed with array operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation import performance

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


def _validate_all(targets: np.ndarray, prices: np.ndarray, explain) -> None:
    """Check all (K, N + 1) `targets` against their (K, N) trade-day `prices` as
    :func:`validate_weights` does; on a failure, call ``explain(k)`` for the first bad row k
    (which raises with the row's day and symbol)."""
    n = prices.shape[1]
    bad = (
        ~np.isfinite(targets).all(axis=1)
        | (targets < -WEIGHT_TOL).any(axis=1)
        | (np.abs(targets.sum(axis=1) - 1.0) > WEIGHT_TOL)
        | (np.isnan(prices) & (targets[:, :n] > 0)).any(axis=1)
    )
    if bad.any():
        explain(int(np.flatnonzero(bad)[0]))
        raise AssertionError("validate_weights accepted a target the batch check refused")


def simulate(
    open_: np.ndarray,
    close: np.ndarray,
    targets: np.ndarray,
    decision_days: np.ndarray | Sequence[int],
    cost: Costs | float,
    *,
    dates: Sequence[Any] | np.ndarray | None = None,
    symbols: Sequence[str] | None = None,
    initial: np.ndarray | Sequence[float] | None = None,
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
    :param initial: (N + 1,) weights held at the close of row 0 (value 1.0), cash last; default
        all cash.
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

    # Prices with NaN -> 0 for the products: an unlisted asset is held in 0 units, and 0 * NaN
    # would poison the portfolio value. Holding an asset with a missing price is checked
    # explicitly below.
    open0 = np.nan_to_num(open_, nan=0.0)
    close0 = np.nan_to_num(close, nan=0.0)

    turnover = np.empty(days.size)
    costs = np.empty(days.size)

    # Validate every target at once (the per-target check runs only to name the first bad one).
    trades = days + 1
    if days.size:
        _validate_all(targets, open_[trades], lambda k: validate_weights(
            targets[k], open_[trades[k]], symbol_names=symbols,
            day=f"{label(trades[k])}'s open (decided at the close of {label(days[k])})",
        ))
    # Clip float dust (e.g. -1e-17) and renormalise so weights stay exactly valid.
    clean = np.clip(targets, 0.0, None)
    clean = clean / clean.sum(axis=1, keepdims=True) if days.size else clean
    # An unlisted asset has target 0 and a placeholder open of 1: 0 units, no division by 0.
    open_safe = np.where(np.isnan(open_), 1.0, open_)
    start = np.zeros(n + 1)
    start[n] = 1.0
    if initial is not None:
        start = np.asarray(initial, dtype="float64").reshape(-1)
        validate_weights(start, close[0], symbol_names=symbols, day=f"the start ({label(0)}'s close)")
        start = np.clip(start, 0.0, None) / np.clip(start, 0.0, None).sum()
    start_units = start[:n] / np.where(np.isnan(close[0]), 1.0, close[0])  # value 1.0 at row 0's close

    # Trade by trade, as array operations: the drifted weights at each trade's open follow from
    # the previous target and the open-to-open price ratios; the values are a running product.
    n_trades = days.size
    open_prev = open_safe[trades[:-1]]  # (K - 1, N): a placeholder 1 where the asset was not listed
    held_growth = clean[:-1, :n] * (open0[trades[1:]] / open_prev)  # value at the next open per unit after the trade
    # g_k: value at trade k's open over value after trade k - 1 (for the first trade: over the
    # start value 1.0 at row 0's close, 1 when the book starts in cash)
    growth = np.ones(n_trades)
    growth[1:] = np.add.reduce(held_growth, axis=1) + clean[:-1, n]
    drifted = np.zeros((n_trades, n))  # weights held at each trade's open, before it
    drifted[1:] = held_growth / growth[1:, None]
    if n_trades:
        held_first = start_units * open0[trades[0]]
        growth[0] = start[n] + float(np.add.reduce(held_first))
        drifted[0] = held_first / growth[0]
    turnover[:] = np.add.reduce(np.abs(targets[:, :n] - drifted), axis=1)
    v_after = np.cumprod(growth * (1.0 - rate * turnover))
    v_open = np.empty(n_trades)
    v_open[:1] = growth[:1]
    v_open[1:] = v_after[:-1] * growth[1:]
    costs[:] = rate * turnover * v_open
    seg_units = np.zeros((n_trades + 1, n))
    seg_cash = np.ones(n_trades + 1)
    seg_units[0], seg_cash[0] = start_units, start[n]
    seg_units[1:] = clean[:, :n] * v_after[:, None] / open_safe[trades]
    seg_cash[1:] = clean[:, n] * v_after

    # Everything per day, at once: holdings repeated over their segment's days.
    bounds = np.concatenate([[0], trades, [t_days]])
    lengths = np.diff(bounds)
    units_daily = np.repeat(seg_units, lengths, axis=0)  # (T, N)
    cash_daily = np.repeat(seg_cash, lengths)  # (T,)
    held = units_daily > 0
    gap = (held & (np.isnan(close) | np.isnan(open_))).any(axis=1)
    if gap.any():
        t = int(np.flatnonzero(gap)[0])
        bad = np.flatnonzero(held[t] & (np.isnan(close[t]) | np.isnan(open_[t])))
        names = ", ".join(_label(int(i), symbols, "asset") for i in bad)
        raise ValueError(f"held asset(s) {names} have no price on {label(t)}")
    asset_values = close0 * units_daily
    value_close = cash_daily + asset_values.sum(axis=1)
    weights = np.empty((t_days, n + 1))
    weights[:, :n] = asset_values / value_close[:, None]
    weights[:, n] = cash_daily / value_close
    # Opens: same holdings as the day's close except on trade days, where the value after the
    # trade and its cost is recorded.
    value_open = cash_daily + (open0 * units_daily).sum(axis=1)
    value_open[trades] = v_after
    value_open[0] = 1.0  # the anchor row's open precedes the start: the start value by convention

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
