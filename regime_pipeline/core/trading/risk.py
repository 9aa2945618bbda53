"""Risk limits of the weekly rebalance: read from ``configs/risk.yaml``, enforced on target weights.

Units and conventions (as :mod:`regime_pipeline.core.allocation.portfolio`):

* a weight vector has N + 1 entries, the N assets first and **cash last**, each a fraction of
  portfolio equity, all >= 0, summing to 1 (long-only);
* turnover = Σ over the assets of |w_new - w_current|, cash excluded and not halved;
* notional amounts are in USDT; dates are UTC days.

:func:`apply_limits` turns the policy's target into the weights actually traded and says which
limits bound, in order: drawdown stop (all cash), max weight per asset (excess to cash), min
cash (assets scaled down pro rata), max turnover (the move toward the target scaled down, the
moves the caps force made in full). The order-level limit, min notional, is applied when orders
are planned (:func:`regime_pipeline.core.trading.orders.plan_orders`). :func:`check_data_fresh` refuses a
week whose decision data is stale (or from after the decision), before anything else runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from regime_pipeline.configs import load_yaml

# Slack for "sum to 1", ">= 0" and "<= limit": weights come out of float arithmetic.
TOL = 1e-9


@dataclass(frozen=True)
class RiskLimits:
    """The limits of ``configs/risk.yaml`` (see the file for what each means).

    :ivar max_weight: largest weight of one asset, fraction of equity, in (0, 1]
    :ivar min_cash: smallest cash weight, fraction of equity, in [0, 1)
    :ivar max_turnover: largest turnover of one rebalance (Σ_assets |Δw|), > 0
    :ivar max_drawdown: the drawdown stop's threshold, fraction below the peak, in (0, 1)
    :ivar cooldown_weeks: rebalances spent in cash once the stop fires, >= 1
    :ivar min_order_notional: smallest order sent, USDT, >= 0
    :ivar data_lag_days: the week starting on day W needs data through W - this, >= 1
    """

    max_weight: float
    min_cash: float
    max_turnover: float
    max_drawdown: float
    cooldown_weeks: int
    min_order_notional: float
    data_lag_days: int

    def __post_init__(self) -> None:
        checks = {
            "max_weight_per_asset must be in (0, 1]": 0 < self.max_weight <= 1,
            "min_cash_weight must be in [0, 1)": 0 <= self.min_cash < 1,
            "max_turnover must be > 0": self.max_turnover > 0,
            "drawdown_stop.max_drawdown must be in (0, 1)": 0 < self.max_drawdown < 1,
            "drawdown_stop.cooldown_weeks must be >= 1": self.cooldown_weeks >= 1,
            "min_order_notional_usdt must be >= 0": self.min_order_notional >= 0,
            # 0 would let the decision use the close of the day it trades at the open of.
            "data_lag_days must be >= 1": self.data_lag_days >= 1,
        }
        broken = [rule for rule, ok in checks.items() if not ok]
        if broken:
            raise ValueError(f"configs/risk.yaml: {'; '.join(broken)} ({self})")

    @classmethod
    def from_config(cls) -> RiskLimits:
        raw = load_yaml("risk")
        stop = raw["drawdown_stop"]
        return cls(
            max_weight=float(raw["max_weight_per_asset"]),
            min_cash=float(raw["min_cash_weight"]),
            max_turnover=float(raw["max_turnover"]),
            max_drawdown=float(stop["max_drawdown"]),
            cooldown_weeks=int(stop["cooldown_weeks"]),
            min_order_notional=float(raw["min_order_notional_usdt"]),
            data_lag_days=int(raw["data_lag_days"]),
        )


@dataclass(frozen=True)
class Binding:
    """A limit that changed the outcome: its name (as in risk.yaml) and what it did."""

    limit: str
    detail: str

    def __str__(self) -> str:
        return f"{self.limit}: {self.detail}"


@dataclass(frozen=True)
class DrawdownState:
    """Where equity stands against its peak at a rebalance.

    :ivar equity: the current mark (USDT)
    :ivar peak: highest mark since the last stop ended, the current one included (USDT)
    :ivar drawdown: ``1 - equity / peak``, a fraction >= 0
    :ivar stop: True: this rebalance goes all cash
    :ivar reason: why (or why not), in words
    """

    equity: float
    peak: float
    drawdown: float
    stop: bool
    reason: str


@dataclass(frozen=True)
class LimitedWeights:
    """What :func:`apply_limits` returns.

    :ivar weights: (N + 1,) the weights to trade to, cash last
    :ivar bound: the limits that changed them, in the order applied (empty: the target as given)
    :ivar requested_turnover: turnover of the target as given, against the current weights
    :ivar turnover: turnover of `weights` against the current weights
    """

    weights: np.ndarray
    bound: tuple[Binding, ...]
    requested_turnover: float
    turnover: float

    @property
    def bound_names(self) -> list[str]:
        return [b.limit for b in self.bound]


class StaleDataError(RuntimeError):
    """The data a week's decision was taken on ends before the day the decision needs."""


class LookAheadError(ValueError):
    """The data a week's decision was taken on goes past the decision's close."""


def required_data_through(week_start: dt.date, limits: RiskLimits) -> dt.date:
    """The last day of data the decision for the week starting `week_start` must use (its Sunday)."""
    return week_start - dt.timedelta(days=limits.data_lag_days)


def check_data_fresh(week_start: dt.date, data_through: dt.date, limits: RiskLimits) -> None:
    """Refuse to trade the week starting `week_start` on data through `data_through`.

    :raises StaleDataError: `data_through` is before :func:`required_data_through`
    :raises LookAheadError: `data_through` is after it (the trade is at the week's open, before
        any later close exists)
    """
    needed = required_data_through(week_start, limits)
    week = f"the week of {week_start:%Y-%m-%d} ({week_start:%A})"
    if data_through < needed:
        raise StaleDataError(
            f"refusing to trade {week}: the latest data is through {data_through:%Y-%m-%d} "
            f"({data_through:%A}), but the decision needs data through {needed:%Y-%m-%d} ({needed:%A}); "
            "update the data before rebalancing"
        )
    if data_through > needed:
        raise LookAheadError(
            f"refusing to trade {week}: the decision uses data through {data_through:%Y-%m-%d}, after "
            f"{needed:%Y-%m-%d}, the last close known at the week's open (look-ahead)"
        )


def drawdown_state(history: Sequence[tuple[float, bool]], equity: float, limits: RiskLimits) -> DrawdownState:
    """The drawdown stop's decision for the rebalance about to happen.

    :param history: one ``(equity_mark, stopped)`` per earlier rebalance, oldest first: the
        equity marked before trading (USDT) and whether the stop held that week all cash
    :param equity: this rebalance's mark (USDT), before trading
    """
    in_force = 0
    for _, stopped in reversed(history):
        if not stopped:
            break
        in_force += 1
    last_stop = max((i for i, (_, stopped) in enumerate(history) if stopped), default=-1)
    window = [mark for mark, _ in history[last_stop + 1 :]]
    if 0 < in_force < limits.cooldown_weeks:
        # Still cooling down: report the drawdown from the peak that triggered the stop.
        first = len(history) - in_force
        before = max((i for i, (_, s) in enumerate(history[:first]) if s), default=-1)
        peak = max([m for m, _ in history[before + 1 : first + 1]] + [equity])
        return DrawdownState(
            equity, peak, 1.0 - equity / peak, True,
            f"drawdown stop in force: rebalance {in_force + 1} of {limits.cooldown_weeks} held in cash",
        )
    peak = max(window + [equity])
    drawdown = 1.0 - equity / peak if peak > 0 else 0.0
    if drawdown > limits.max_drawdown + TOL:
        return DrawdownState(
            equity, peak, drawdown, True,
            f"equity {equity:,.2f} is {drawdown:.2%} below its peak {peak:,.2f}, more than the "
            f"{limits.max_drawdown:.0%} limit: all cash for {limits.cooldown_weeks} rebalance(s)",
        )
    return DrawdownState(equity, peak, drawdown, False, f"drawdown {drawdown:.2%} (limit {limits.max_drawdown:.0%})")


def _check_weights(weights: np.ndarray, n: int, what: str) -> np.ndarray:
    """`weights` as a valid float (n + 1,) vector (float dust clipped), or ValueError."""
    w = np.asarray(weights, dtype="float64").reshape(-1)
    if w.shape != (n + 1,):
        raise ValueError(f"{what}: expected {n + 1} weights (N assets + cash), got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{what}: weights must be finite, got {w}")
    if (w < -TOL).any():
        raise ValueError(f"{what}: negative weight {w.min()} (long-only)")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"{what}: weights sum to {w.sum()!r}, not 1")
    w = np.clip(w, 0.0, None)
    return w / w.sum()


def _turnover(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[:-1] - b[:-1]).sum())


def _with_cash(assets: np.ndarray) -> np.ndarray:
    """Asset weights plus the cash that makes them sum to 1."""
    return np.append(assets, max(0.0, 1.0 - float(assets.sum())))


def _cap(w: np.ndarray, limits: RiskLimits) -> np.ndarray:
    """`w` with every asset at most max_weight (excess to cash), then cash at least min_cash."""
    assets = np.minimum(w[:-1], limits.max_weight)
    room = 1.0 - limits.min_cash
    if assets.sum() > room:
        assets = assets * (room / assets.sum())
    return _with_cash(assets)


def apply_limits(
    target: np.ndarray,
    current: np.ndarray,
    limits: RiskLimits,
    *,
    drawdown: DrawdownState | None = None,
    symbols: Sequence[str] | None = None,
) -> LimitedWeights:
    """The weights to trade to, given the policy's `target` and the `current` weights.

    :param target: (N + 1,) the policy's weights, cash last
    :param current: (N + 1,) the portfolio's weights now, at the prices of the trade, cash last
    :param limits: the risk limits
    :param drawdown: the drawdown stop's state (:func:`drawdown_state`); None: no stop check
    :param symbols: (N,) asset names for the bindings' details
    :raises ValueError: a weight vector of the wrong shape, negative, not finite or not summing to 1
    """
    target = _check_weights(target, len(target) - 1, "target")
    n = target.size - 1
    current = _check_weights(current, n, "current weights")
    names = list(symbols) if symbols is not None else [f"asset {i}" for i in range(n)]
    requested = _turnover(target, current)
    bound: list[Binding] = []

    if drawdown is not None and drawdown.stop:
        cash = np.zeros(n + 1)
        cash[-1] = 1.0
        bound.append(Binding("drawdown_stop", drawdown.reason))
        # Never throttled by max_turnover: a stop that takes weeks to execute is no stop.
        return LimitedWeights(cash, tuple(bound), requested, _turnover(cash, current))

    capped_assets = np.minimum(target[:-1], limits.max_weight)
    over = np.flatnonzero(target[:-1] > limits.max_weight + TOL)
    if over.size:
        moves = ", ".join(f"{names[i]} {target[i]:.4f} -> {limits.max_weight:.4f}" for i in over)
        bound.append(Binding("max_weight_per_asset", f"{moves}; the excess to cash"))
    room = 1.0 - limits.min_cash
    if capped_assets.sum() > room + TOL:
        scale = room / capped_assets.sum()
        bound.append(Binding(
            "min_cash_weight",
            f"cash {1.0 - capped_assets.sum():.4f} -> {limits.min_cash:.4f}: assets scaled by {scale:.6f}",
        ))
    wanted = _cap(target, limits)

    to_wanted = _turnover(wanted, current)
    if to_wanted <= limits.max_turnover + TOL:
        return LimitedWeights(wanted, tuple(bound), requested, to_wanted)
    # The current weights brought within the caps: those moves are made in full.
    forced = _cap(current, limits)
    to_forced = _turnover(forced, current)
    if to_forced >= limits.max_turnover:
        final = forced
        detail = (
            f"turnover {to_wanted:.4f} > {limits.max_turnover:.4f}; the caps alone need {to_forced:.4f}: "
            "only those moves made"
        )
    else:
        # final = forced + beta (wanted - forced): a convex mix of two weight vectors within the
        # caps is within them, and |final - current| <= to_forced + beta |wanted - forced| = max.
        beta = (limits.max_turnover - to_forced) / _turnover(wanted, forced)
        final = _with_cash(forced[:-1] + beta * (wanted[:-1] - forced[:-1]))
        detail = f"turnover {to_wanted:.4f} -> {_turnover(final, current):.4f}: moved {beta:.2%} of the way to the target"
    bound.append(Binding("max_turnover", detail))
    return LimitedWeights(final, tuple(bound), requested, _turnover(final, current))
