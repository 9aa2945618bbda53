"""One weekly rebalance, end to end: reconcile, check, limit, plan, record, send, record, close.

:func:`rebalance` is the whole trading step of the week starting Monday W, as a plain function
(the ``weekly_rebalance`` asset wires it to partitions and metadata):

1. **Reconcile** the ledger with the broker: every order intent left without an outcome by an
   earlier crash is looked up by client order id and settled, before anything is sent.
2. A week already **complete** in the ledger returns its recorded result: nothing is sent.
3. A week **planned** but not complete (a crash mid-week) is **resumed**: its recorded plan is
   kept, and only its intents that never reached the broker are sent (same client order ids).
   Once a later week has been planned, an unfinished week is left as it is (``superseded``):
   the later week's reconciliation gave up its unsent orders.
4. Otherwise the week is planned: the **staleness guard** (data through W - 1, no more, no
   less), the book from the ledger, the current weights and equity at the week's prices, the
   **drawdown stop**, the **risk limits**, the **orders** (sells first, small ones dropped).
   The plan and all its intents are written to the ledger BEFORE the first order is sent.
5. Each order is sent and its outcome recorded at once; a rejected order does not stop the
   others. When every intent has a final outcome the week is closed: positions and equity
   after trading are recorded at the week's prices.

Prices: one reference price per symbol, in USDT: the week's open, the price the backtests trade
at and the paper broker fills at (plus slippage); when the open is not known yet (a live run
right after Sunday's close), the last close. The same prices value the book before and after
trading, so for the paper broker ``equity_before - equity_after`` is exactly the fees and
slippage paid.

Same inputs, same ledger state: same orders, same result.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from regime_pipeline.configs import load_yaml, universe
from regime_pipeline.core.trading.brokers.base import Broker
from regime_pipeline.core.trading.ledger import Ledger, Reconciliation, StoredPlan
from regime_pipeline.core.trading.orders import (
    Fill,
    OrderOutcome,
    OrderRequest,
    SkippedOrder,
    current_weights,
    plan_orders,
)
from regime_pipeline.core.allocation.portfolio import Costs, validate_weights
from regime_pipeline.core.trading.risk import (
    Binding,
    DrawdownState,
    RiskLimits,
    apply_limits,
    check_data_fresh,
    drawdown_state,
)
from regime_pipeline.core.data.sources.ccxt_source import Log

Status = Literal["traded", "resumed", "already_done", "incomplete", "superseded"]


def rebalance_weekday() -> int:
    """The weekday weeks start and trade on, as ``date.weekday()`` (configs/backtest.yaml)."""
    return int(load_yaml("backtest")["rebalance_weekday"])


def client_order_id_tag() -> str:
    return str(load_yaml("broker")["client_order_id_tag"])


@dataclass(frozen=True)
class RebalanceResult:
    """What one call of :func:`rebalance` did (or, for a complete week, had done).

    :ivar week: the Monday the week starts on
    :ivar status: ``traded`` (planned and sent now), ``resumed`` (planned by an earlier run that
        stopped; the rest sent now), ``already_done`` (complete before this call: nothing sent),
        ``incomplete`` (an order is still open at the broker: the week closes on a later run),
        ``superseded`` (left unfinished by a crash, and a later week has traded since: it is
        neither resumed nor closed, its unsent orders having been given up)
    :ivar broker: the broker's name
    :ivar data_through: last day of the data the decision used
    :ivar symbols: (N,) the assets, in the order of the weight vectors
    :ivar target: (N + 1,) the policy's weights, cash last
    :ivar weights: (N + 1,) the weights traded to after the risk limits, cash last
    :ivar bound: the limits that changed the target or the orders
    :ivar drawdown: the drawdown stop's state at the week's prices
    :ivar requested_turnover: turnover of `target` against the weights held
    :ivar turnover: turnover of `weights` against the weights held
    :ivar prices: the reference price per symbol the week was planned and valued at, USDT
    :ivar orders: the week's order outcomes, in the order recorded (from any run of the week)
    :ivar skipped: orders the plan dropped (under the minimum notional)
    :ivar sent: client order ids sent to the broker by THIS call
    :ivar reconciliation: what the reconciliation at the start of this call settled
    :ivar equity_before: cash + positions at `prices` before trading, USDT
    :ivar equity_after: the same after trading (None while incomplete)
    :ivar cash_after: USDT after trading (None while incomplete)
    :ivar positions_after: base units held after trading (empty while incomplete)
    """

    week: dt.date
    status: Status
    broker: str
    data_through: dt.date
    symbols: tuple[str, ...]
    target: np.ndarray
    weights: np.ndarray
    bound: tuple[Binding, ...]
    drawdown: DrawdownState
    requested_turnover: float
    turnover: float
    prices: dict[str, float]
    orders: tuple[OrderOutcome, ...]
    skipped: tuple[SkippedOrder, ...]
    sent: tuple[str, ...]
    reconciliation: Reconciliation
    equity_before: float
    equity_after: float | None
    cash_after: float | None
    positions_after: dict[str, float] = field(default_factory=dict)

    @property
    def fills(self) -> tuple[Fill, ...]:
        return tuple(f for o in self.orders for f in o.fills)

    @property
    def rejected(self) -> tuple[OrderOutcome, ...]:
        return tuple(o for o in self.orders if o.status in ("rejected", "not_sent"))

    @property
    def fees(self) -> dict[str, float]:
        """Fees paid per asset (USDT for the paper broker)."""
        out: dict[str, float] = {}
        for fill in self.fills:
            out[fill.fee_asset] = out.get(fill.fee_asset, 0.0) + fill.fee
        return out

    def metadata(self) -> dict[str, Any]:
        """A flat, JSON-able summary for the asset's metadata."""
        return {
            "week": self.week.isoformat(),
            "status": self.status,
            "broker": self.broker,
            "data_through": self.data_through.isoformat(),
            "limits_bound": [b.limit for b in self.bound],
            "limits_detail": [str(b) for b in self.bound],
            "drawdown": round(self.drawdown.drawdown, 6),
            "drawdown_stop": self.drawdown.stop,
            "target_weights": _weights_dict(self.symbols, self.target),
            "final_weights": _weights_dict(self.symbols, self.weights),
            "requested_turnover": round(self.requested_turnover, 6),
            "turnover": round(self.turnover, 6),
            "orders": len(self.orders),
            "orders_sent_now": len(self.sent),
            "filled": sum(o.status in ("filled", "partially_filled") for o in self.orders),
            "rejected": [f"{o.client_order_id}: {o.reason}" for o in self.rejected],
            "skipped": [f"{s.side} {s.symbol}: {s.reason}" for s in self.skipped],
            "fees": {k: round(v, 8) for k, v in self.fees.items()},
            "equity_before": self.equity_before,
            "equity_after": self.equity_after,
            "cash_after": self.cash_after,
            "reconciled": len(self.reconciliation.recorded),
            "abandoned": [o.client_order_id for o in self.reconciliation.abandoned],
        }


def _weights_dict(symbols: Sequence[str], weights: np.ndarray) -> dict[str, float]:
    out = {s: round(float(w), 6) for s, w in zip(symbols, weights[:-1]) if w > 0}
    out["cash"] = round(float(weights[-1]), 6)
    return out


def _price_vector(symbols: Sequence[str], prices: Mapping[str, float]) -> np.ndarray:
    """(N,) prices in `symbols` order, NaN where missing or not a positive number."""
    out = np.full(len(symbols), np.nan)
    for i, symbol in enumerate(symbols):
        price = prices.get(symbol)
        if price is not None and math.isfinite(price) and price > 0:
            out[i] = float(price)
    return out


def rebalance(
    week_start: dt.date,
    target_weights: np.ndarray | Sequence[float],
    prices: Mapping[str, float],
    data_through: dt.date,
    broker: Broker,
    ledger: Ledger,
    limits: RiskLimits | None = None,
    *,
    symbols: Sequence[str] | None = None,
    costs: Costs | None = None,
    tag: str | None = None,
    after_submit: Callable[[OrderRequest, OrderOutcome], None] | None = None,
    log: Log | None = None,
    lock_wait_s: float = 60.0,
    book: Mapping[str, Any] | None = None,
) -> RebalanceResult:
    """Rebalance the book to `target_weights` for the week starting `week_start` (see the module docstring).

    :param week_start: the Monday the week starts on (the trade day)
    :param target_weights: (N + 1,) the policy's weights, in `symbols` order, cash last
    :param prices: reference price per symbol in USDT (the week's open, else the last close);
        a symbol without one must have weight 0 and hold nothing
    :param data_through: the last day of the data the decision used; must be ``week_start - 1``
    :param broker: executes the orders
    :param ledger: the book
    :param limits: default ``configs/risk.yaml``
    :param symbols: the N assets, default the universe's order (``configs/universe.yaml``)
    :param costs: fee + slippage the order sizes set aside, default ``configs/backtest.yaml``
    :param tag: client order id prefix, default ``configs/broker.yaml``
    :param after_submit: called after each broker answer and before it is recorded (tests use
        it to simulate a crash between the two)
    :param log: receives a line per step (Dagster's ``context.log`` fits)
    :param lock_wait_s: how long to wait for another rebalance on the same ledger to finish
    :param book: recorded with the week's plan: the book (policy and start) the target was
        decided in (:class:`regime_pipeline.core.trading.book.Book`); ignored for a week
        planned already
    :raises StaleDataError, LookAheadError: the data does not end on the day before the week
    :raises ValueError: `week_start` is not the rebalance weekday, the weights are invalid or
        weigh an asset without a price, or the ledger has traded a later week already
    :raises BrokerError: the broker failed as a whole (the ledger keeps what was done)
    :raises LedgerError: another rebalance holds the ledger for longer than `lock_wait_s`
    """
    log = log if log is not None else logging.getLogger(__name__)
    limits = limits if limits is not None else RiskLimits.from_config()
    symbols = tuple(symbols) if symbols is not None else tuple(universe().candidates)
    costs = costs if costs is not None else Costs.from_config()
    tag = tag if tag is not None else client_order_id_tag()
    weekday = rebalance_weekday()
    if week_start.weekday() != weekday:
        raise ValueError(
            f"{week_start} is a {week_start:%A}: weeks start on weekday {weekday} (configs/backtest.yaml rebalance_weekday)"
        )

    with ledger.exclusive(wait_s=lock_wait_s):
        return _rebalance(
            week_start, target_weights, prices, data_through, broker, ledger, limits, symbols, costs, tag,
            after_submit, log, book,
        )


def _rebalance(
    week_start: dt.date,
    target_weights: np.ndarray | Sequence[float],
    prices: Mapping[str, float],
    data_through: dt.date,
    broker: Broker,
    ledger: Ledger,
    limits: RiskLimits,
    symbols: tuple[str, ...],
    costs: Costs,
    tag: str,
    after_submit: Callable[[OrderRequest, OrderOutcome], None] | None,
    log: Log,
    book: Mapping[str, Any] | None = None,
) -> RebalanceResult:
    """:func:`rebalance` once the arguments are resolved and the ledger's lock is held."""
    reconciliation = ledger.reconcile(broker, current_week=week_start)
    if not reconciliation.empty:
        log.info(
            f"reconciled with {broker.name}: {len(reconciliation.recorded)} recorded, "
            f"{len(reconciliation.abandoned)} given up, {len(reconciliation.unsent)} not sent yet, "
            f"{len(reconciliation.still_open)} still open"
        )
    if ledger.is_complete(week_start):
        log.info(f"week {week_start} is complete in the ledger: nothing to send")
        return _result(ledger, ledger.plan(week_start), "already_done", broker, (), reconciliation)

    stored = ledger.plan(week_start)
    later = ledger.last_planned_week()
    if stored is not None and later is not None and later > week_start:
        # Its book has moved on: resuming would trade at stale prices, closing it would value
        # a later week's positions at this week's prices.
        log.warning(f"week {week_start} was left unfinished and the week of {later} has traded since: nothing to do")
        return _result(ledger, stored, "superseded", broker, (), reconciliation)
    status: Status = "resumed" if stored is not None else "traded"
    if stored is None:
        stored = _plan_week(
            week_start, target_weights, prices, data_through, ledger, limits, symbols, costs, tag, log, book
        )
    else:
        log.info(f"week {week_start} was planned by an earlier run: resuming its recorded plan")

    still_open = {o.client_order_id for o in reconciliation.still_open}
    sent: list[str] = []
    for order in ledger.open_intents(week_start):
        if order.client_order_id in still_open:
            continue
        outcome = broker.submit(order)
        sent.append(order.client_order_id)
        if after_submit is not None:
            after_submit(order, outcome)
        if outcome.final:
            ledger.record(outcome, source="submit")
            line = f"{order.client_order_id}: {outcome.status} {outcome.filled_qty:g}/{outcome.requested_qty:g} {order.symbol}"
            (log.warning if outcome.status == "rejected" else log.info)(
                line + (f" ({outcome.reason})" if outcome.reason else "")
            )
        else:
            log.warning(f"{order.client_order_id}: still {outcome.status} at {broker.name}; the week stays open")

    if ledger.open_intents(week_start):
        return _result(ledger, stored, "incomplete", broker, tuple(sent), reconciliation)
    equity_after, cash_after = ledger.complete_week(
        week_start, stored.details["prices"], equity_before=stored.equity_before, drawdown_stop=stored.drawdown_stop
    )
    log.info(f"week {week_start} complete: equity {stored.equity_before:,.2f} -> {equity_after:,.2f} USDT")
    return _result(ledger, stored, status, broker, tuple(sent), reconciliation)


def _plan_week(
    week_start: dt.date,
    target_weights: np.ndarray | Sequence[float],
    prices: Mapping[str, float],
    data_through: dt.date,
    ledger: Ledger,
    limits: RiskLimits,
    symbols: tuple[str, ...],
    costs: Costs,
    tag: str,
    log: Log,
    book: Mapping[str, Any] | None = None,
) -> StoredPlan:
    """Check, limit and plan `week_start`, and write the plan and its intents to the ledger."""
    later = ledger.last_planned_week()
    if later is not None and later > week_start:
        raise ValueError(
            f"the ledger has traded the week of {later} already: the week of {week_start} cannot be traded "
            "after it (the book only moves forward)"
        )
    check_data_fresh(week_start, data_through, limits)
    target = np.asarray(target_weights, dtype="float64").reshape(-1)
    if target.shape != (len(symbols) + 1,):
        raise ValueError(f"target_weights has {target.size} entries for {len(symbols)} symbols + cash")
    if np.isfinite(target).all() and abs(target.sum() - 1.0) <= 1e-6:
        # A policy's float32 output sums to 1 within ~1e-7: renormalise rather than refuse.
        target = target / target.sum()
    price_vector = _price_vector(symbols, prices)
    validate_weights(target, price_vector, symbol_names=symbols, day=f"the week of {week_start}")
    used_prices = {s: float(p) for s, p in zip(symbols, price_vector) if not np.isnan(p)}

    positions, cash = ledger.book()
    current, equity = current_weights(symbols, positions, cash, used_prices)
    drawdown = drawdown_state(ledger.drawdown_history(before=week_start), equity, limits)
    limited = apply_limits(target, current, limits, drawdown=drawdown, symbols=symbols)
    plan = plan_orders(
        week_start, limited.weights, symbols, positions, cash, used_prices,
        cost_rate=costs.rate, min_notional=limits.min_order_notional, tag=tag,
    )
    bound = list(limited.bound)
    if plan.skipped:
        names = ", ".join(f"{s.side} {s.symbol} ({s.notional:.2f} USDT)" for s in plan.skipped)
        bound.append(Binding("min_order_notional_usdt", f"dropped {names}"))
    for binding in bound:
        log.info(f"week {week_start}: limit {binding}")
    details = {
        "symbols": list(symbols),
        "target": target.tolist(),
        "weights": limited.weights.tolist(),
        "bound": [[b.limit, b.detail] for b in bound],
        "drawdown": {
            "equity": drawdown.equity, "peak": drawdown.peak, "drawdown": drawdown.drawdown,
            "stop": drawdown.stop, "reason": drawdown.reason,
        },
        "requested_turnover": limited.requested_turnover,
        "turnover": limited.turnover,
        "prices": used_prices,
        "skipped": [[s.symbol, s.side, s.quantity, s.price, s.notional, s.reason] for s in plan.skipped],
    }
    if book is not None:
        details["book"] = dict(book)
    ledger.write_plan(week_start, data_through, equity, drawdown.stop, details, plan.orders)
    log.info(
        f"week {week_start}: {len(plan.orders)} order(s) planned "
        f"({sum(o.side == 'sell' for o in plan.orders)} sells first), {len(plan.skipped)} dropped"
    )
    return ledger.plan(week_start)  # type: ignore[return-value]  # just written


def _result(
    ledger: Ledger,
    stored: StoredPlan | None,
    status: Status,
    broker: Broker,
    sent: tuple[str, ...],
    reconciliation: Reconciliation,
) -> RebalanceResult:
    """The week's result as the ledger records it (the same whichever run asks)."""
    if stored is None:
        raise RuntimeError("a complete week without a plan: the ledger is inconsistent")
    d = stored.details
    close = ledger.week_close(stored.week)
    positions = ledger.position_history(stored.week) if close is not None else None
    return RebalanceResult(
        week=stored.week,
        status=status,
        broker=broker.name,
        data_through=stored.data_through,
        symbols=tuple(d["symbols"]),
        target=np.asarray(d["target"]),
        weights=np.asarray(d["weights"]),
        bound=tuple(Binding(limit, detail) for limit, detail in d["bound"]),
        drawdown=DrawdownState(**d["drawdown"]),
        requested_turnover=float(d["requested_turnover"]),
        turnover=float(d["turnover"]),
        prices={k: float(v) for k, v in d["prices"].items()},
        orders=tuple(ledger.outcomes(stored.week)),
        skipped=tuple(SkippedOrder(*s) for s in d["skipped"]),
        sent=sent,
        reconciliation=reconciliation,
        equity_before=stored.equity_before,
        equity_after=None if close is None else close[0],
        cash_after=None if close is None else close[1],
        positions_after={} if positions is None else dict(zip(positions["symbol"], positions["quantity"].astype(float))),
    )
