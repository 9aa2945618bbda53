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

* an asset whose data end inside the run (a delisting, a collapse: LUNA on 2022-05-13) is sold
  at its last close, net of the costs and a configured haircut, and is cash from then on; on a
  close-only day (a close, no full bar) a held asset is valued at its close and is not traded
  (:mod:`regime_pipeline.core.allocation.exits`, :func:`trade`).

No loop in the common case: between two trades the book only drifts, so the value at a trade's
open is the value after the previous trade times the growth of the previous target's holdings,
``g_k = cash + Σ w_i · open_value_i[t_k] / open_value_i[t_k-1]`` (an asset sold at its last
close grows as the cash it became), and the value after each trade is a running product of
``g_k · (1 - rate · turnover_k)``. Only a run in which a rebalance falls on a close-only day of
a held asset (whose units the trade must leave as they are) goes trade by trade through
:func:`trade`, a few operations per rebalance. The days are then computed all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation import exits, performance

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
            "which cannot be traded at that open (not listed, a close-only day, or past its last bar)"
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


def trade(
    units: np.ndarray, cash: float, target: np.ndarray, t: int, mark: exits.Marks, rate: float,
) -> tuple[np.ndarray, float, float, float, float]:
    """One rebalance at the open of day `t`: the holdings before it (`units` (N,), `cash`) to
    `target` (N + 1,), cash last. Returns ``(units, cash, value after the trade, turnover, cost)``.

    A holding sold at its last close (its data ended) is cash by now. A held asset that cannot be
    traded at this open (a close-only day) keeps its units, valued at the previous close, and the
    target is applied to the rest of the book: with ``B`` the value of everything else, each
    tradable asset moves to ``target_i · (B - cost) / open_i`` units and the cost is ``rate · Σ
    |target_i · B - units_i · open_i|``. With nothing frozen (``B`` the whole book) this is the
    module docstring's rule: turnover ``Σ |target_i - drifted_i|``, cost ``rate · turnover · V_open``.
    """
    n = units.shape[0]
    if mark.any_sold[t - 1]:
        gone = mark.sold[t - 1] & (units > 0)
        if gone.any():  # sold at the last close before this trade: cash since
            cash = cash + float(np.add.reduce(units[gone] * mark.exit_value[gone]))
            units = np.where(gone, 0.0, units)
    held_open = units * mark.open_value[t]
    v_open = cash + float(np.add.reduce(held_open))
    # An untradable asset has target 0 and a placeholder open of 1: 0 units, no division by 0.
    open_safe = mark.open_safe[t]
    frozen = (units > 0) & mark.close_only[t] if mark.any_close_only[t] else None
    if frozen is None or not frozen.any():
        turnover = float(np.add.reduce(np.abs(target[:n] - held_open / v_open)))
        cost = rate * turnover * v_open
        v_after = v_open - cost
        return target[:n] * (v_after / open_safe), float(target[n] * v_after), v_after, turnover, cost
    kept = float(np.add.reduce(held_open[frozen]))
    rest = v_open - kept
    moving = np.where(frozen, 0.0, target[:n] * rest - held_open)
    cost = rate * float(np.add.reduce(np.abs(moving)))
    new_units = np.where(frozen, units, target[:n] * ((rest - cost) / open_safe))
    return new_units, float(target[n] * (rest - cost)), v_open - cost, float(np.add.reduce(np.abs(moving))) / v_open, cost


def _trades_sequential(
    start_units: np.ndarray, start_cash: float, clean: np.ndarray, trades: np.ndarray,
    mark: exits.Marks, rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every trade of a run through :func:`trade`, one after the other.

    :returns: ``(seg_units (K + 1, N), seg_cash (K + 1,), v_after (K,), turnover (K,), costs (K,))``;
        row 0 of the segments is the start, row k + 1 the holdings after trade k.
    """
    k_trades, n = clean.shape[0], start_units.shape[0]
    seg_units = np.zeros((k_trades + 1, n))
    seg_cash = np.empty(k_trades + 1)
    v_after, turnover, costs = np.empty(k_trades), np.empty(k_trades), np.empty(k_trades)
    units, cash = start_units, float(start_cash)
    seg_units[0], seg_cash[0] = units, cash
    for k, t in enumerate(trades):
        units, cash, v_after[k], turnover[k], costs[k] = trade(units, cash, clean[k], t, mark, rate)
        seg_units[k + 1], seg_cash[k + 1] = units, cash
    return seg_units, seg_cash, v_after, turnover, costs


def _trades_vectorised(
    start_units: np.ndarray, start_cash: float, clean: np.ndarray, trades: np.ndarray,
    mark: exits.Marks, rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The same as :func:`_trades_sequential` with array operations, for a run in which no trade
    falls on a close-only day of a held asset (every holding can be traded at every trade's open).

    A unit's value at each open is ``mark.open_value`` (the exit value once its data ended), so the
    book's growth between two trades is a ratio of marks; a holding sold at its last close before
    a trade is cash at that trade's open and counts as cash in its turnover, as in :func:`trade`.
    """
    k_trades, n = clean.shape[0], start_units.shape[0]
    open_safe = mark.open_safe
    gone = mark.sold[trades - 1]  # (K, N) sold at a last close before the trade: cash by then
    held_growth = np.zeros((k_trades, n))  # value at trade k's open of what was held after trade k - 1
    growth = np.ones(k_trades)  # g_k: over the value after trade k - 1 (the start value 1.0 for k = 0)
    if k_trades:
        held_growth[0] = start_units * mark.open_value[trades[0]]
        growth[0] = start_cash + float(np.add.reduce(held_growth[0]))
        held_growth[1:] = clean[:-1, :n] * (mark.open_value[trades[1:]] / open_safe[trades[:-1]])
        growth[1:] = np.add.reduce(held_growth[1:], axis=1) + clean[:-1, n]
    drifted = np.where(gone, 0.0, held_growth) / growth[:, None]  # asset weights at each trade's open
    turnover = np.add.reduce(np.abs(clean[:, :n] - drifted), axis=1)
    v_after = np.cumprod(growth * (1.0 - rate * turnover))
    v_open = np.empty(k_trades)
    v_open[:1] = growth[:1]
    v_open[1:] = v_after[:-1] * growth[1:]
    costs = rate * turnover * v_open
    seg_units = np.zeros((k_trades + 1, n))
    seg_cash = np.empty(k_trades + 1)
    seg_units[0], seg_cash[0] = start_units, start_cash
    seg_units[1:] = clean[:, :n] * v_after[:, None] / open_safe[trades]
    seg_cash[1:] = clean[:, n] * v_after
    return seg_units, seg_cash, v_after, turnover, costs


def simulate(
    open_: np.ndarray,
    close: np.ndarray,
    targets: np.ndarray,
    decision_days: np.ndarray | Sequence[int],
    cost: Costs | float,
    *,
    dates: Sequence[Any] | np.ndarray | None = None,
    symbols: Sequence[str] | None = None,
    haircut: float | None = None,
    initial: np.ndarray | Sequence[float] | None = None,
    marks: exits.Marks | None = None,
) -> Result:
    """Run the accounting described in the module docstring, with assets whose data end sold at
    their last close and close-only days valued but not traded (:mod:`exits`).

    :param open_: (T, N) open prices in USDT, NaN where the asset has no full bar (not listed
        yet, a close-only day, or after its data end).
    :param close: (T, N) close prices in USDT, NaN where the asset has no price. An asset's last
        close before T - 1 is where its data end.
    :param targets: (K, N + 1) target weights, cash last, one row per decision.
    :param decision_days: (K,) strictly increasing day indices in [0, T - 2]; decision k is
        taken at the close of ``decision_days[k]`` and traded at the open of the next day.
    :param cost: a :class:`Costs`, or the rate per unit of turnover as a fraction.
    :param dates: (T,) optional day labels, used in error messages and kept in the result.
    :param symbols: (N,) optional asset names, used in error messages and kept in the result.
    :param haircut: fraction of the last close lost on the forced sale of an asset whose data
        end, beyond the costs; None: configs/backtest.yaml ``delisting_haircut``.
    :param initial: (N + 1,) weights held at the close of row 0 (value 1.0), cash last; default
        all cash.
    :param marks: ``exits.marks(open_, close, rate, haircut)``, when the caller runs several
        strategies on the same prices and has them already.
    :raises ValueError: bad shapes, invalid weights, a weight on an asset that cannot be traded
        at the open (naming the symbol and the trade day), or a held asset with a missing price.
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

    # What each unit is worth at each open and close, and where it can be traded (exits.py):
    # an asset whose data end in the run is sold at its last close and is cash from then on.
    mark = exits.marks(open_, close, rate, haircut) if marks is None else marks
    if mark.open_value.shape != close.shape:
        raise ValueError(f"marks of {mark.open_value.shape} prices for {close.shape} prices")

    turnover = np.empty(days.size)
    costs = np.empty(days.size)

    # Validate every target at once (the per-target check runs only to name the first bad one).
    # A target may weigh only assets with a full bar at the trade's open.
    trades = days + 1
    tradable_open = np.where(mark.tradable, open_, np.nan)
    if days.size:
        _validate_all(targets, tradable_open[trades], lambda k: validate_weights(
            targets[k], tradable_open[trades[k]], symbol_names=symbols,
            day=f"{label(trades[k])}'s open (decided at the close of {label(days[k])})",
        ))
    # Clip float dust (e.g. -1e-17) and renormalise so weights stay exactly valid.
    clean = np.clip(targets, 0.0, None)
    clean = clean / clean.sum(axis=1, keepdims=True) if days.size else clean
    start = np.zeros(n + 1)
    start[n] = 1.0
    if initial is not None:
        start = np.asarray(initial, dtype="float64").reshape(-1)
        validate_weights(start, close[0], symbol_names=symbols, day=f"the start ({label(0)}'s close)")
        start = np.clip(start, 0.0, None) / np.clip(start, 0.0, None).sum()
    start_units = start[:n] / np.where(np.isnan(close[0]), 1.0, close[0])  # value 1.0 at row 0's close

    # The holdings after each trade. Segment k covers the days [bounds[k], bounds[k + 1]) held
    # with seg_units[k] and seg_cash[k] (segment 0: the start, before the first trade).
    held_before = np.vstack([start_units[None, :] > 0, clean[:-1, :n] > 0]) if days.size else np.zeros((0, n), bool)
    if (held_before & mark.close_only[trades]).any():
        seg_units, seg_cash, v_after, turnover[:], costs[:] = _trades_sequential(
            start_units, start[n], clean, trades, mark, rate)
    else:
        seg_units, seg_cash, v_after, turnover[:], costs[:] = _trades_vectorised(
            start_units, start[n], clean, trades, mark, rate)

    # Everything per day, at once: holdings repeated over their segment's days.
    bounds = np.concatenate([[0], trades, [t_days]])
    lengths = np.diff(bounds)
    units_daily = np.repeat(seg_units, lengths, axis=0)  # (T, N)
    cash_daily = np.repeat(seg_cash, lengths)  # (T,)
    held = units_daily > 0
    gap = (held & ~mark.sold & ~np.isfinite(close)).any(axis=1)
    if gap.any():
        t = int(np.flatnonzero(gap)[0])
        bad = np.flatnonzero(held[t] & ~mark.sold[t] & ~np.isfinite(close[t]))
        names = ", ".join(_label(int(i), symbols, "asset") for i in bad)
        raise ValueError(f"held asset(s) {names} have no price on {label(t)}")
    asset_values = mark.close_value * units_daily
    value_close = cash_daily + asset_values.sum(axis=1)
    # A sold holding is cash: reported in the cash column from its last close on.
    sold_value = np.where(mark.sold, asset_values, 0.0)
    weights = np.empty((t_days, n + 1))
    weights[:, :n] = (asset_values - sold_value) / value_close[:, None]
    weights[:, n] = (cash_daily + sold_value.sum(axis=1)) / value_close
    # Opens: same holdings as the day's close except on trade days, where the value after the
    # trade and its cost is recorded.
    value_open = cash_daily + (mark.open_value * units_daily).sum(axis=1)
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
