"""Orders of a weekly rebalance: deterministic client order ids, the order plan, and what a
broker answers.

* :func:`client_order_id` names the order of (week, symbol, side) the same way on every run, so
  a rerun or a restart can ask the broker whether that order already exists instead of sending
  it again. The id is valid for Binance's ``newClientOrderId`` (``^[a-zA-Z0-9-_]{1,36}$``).
* :func:`plan_orders` turns target weights, the positions held, cash and prices into market
  orders: sells first (they free the cash the buys need), then buys, in the symbols' order;
  orders under the minimum notional are dropped and reported, not sent.
* :class:`OrderOutcome` and :class:`Fill` are what a broker confirms; the ledger stores them.

Units: quantities in base-asset units (BTC for BTCUSDT), prices in USDT per unit, notional and
cash in USDT, weights as fractions of equity with cash last.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Side = Literal["buy", "sell"]
# Binance's answer kinds, lower-cased, plus "not_sent": an intent that never reached the broker
# and was given up (see regime_pipeline.core.trading.ledger). Only "open" is not final.
OrderStatus = Literal["filled", "partially_filled", "rejected", "canceled", "expired", "not_sent", "open"]
FINAL_STATUSES = frozenset({"filled", "partially_filled", "rejected", "canceled", "expired", "not_sent"})

CLIENT_ORDER_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
TAG_RE = re.compile(r"^[a-zA-Z0-9]{1,8}$")


def client_order_id(week: dt.date, symbol: str, side: Side, tag: str) -> str:
    """The id of the `side` order on `symbol` in the week starting `week`, e.g. ``rp-20240108-BTCUSDT-b``.

    :param tag: the book's prefix (``configs/broker.yaml`` ``client_order_id_tag``), 1-8 letters
        or digits, so that two books trading on one account never share ids
    :raises ValueError: a tag, symbol or side that would not make a valid Binance id
    """
    if not TAG_RE.match(tag):
        raise ValueError(f"client order id tag must be 1-8 letters or digits, got {tag!r}")
    if side not in ("buy", "sell"):
        raise ValueError(f"side must be 'buy' or 'sell', got {side!r}")
    cid = f"{tag}-{week:%Y%m%d}-{symbol}-{side[0]}"
    if not CLIENT_ORDER_ID_RE.match(cid):
        raise ValueError(f"{cid!r} is not a valid Binance newClientOrderId (^[a-zA-Z0-9-_]{{1,36}}$)")
    return cid


@dataclass(frozen=True)
class OrderRequest:
    """A market order to send (the ledger's "intent").

    :ivar client_order_id: see :func:`client_order_id`
    :ivar week: Monday of the rebalance's week
    :ivar symbol: Binance symbol, e.g. ``"BTCUSDT"``
    :ivar side: ``"buy"`` or ``"sell"``
    :ivar quantity: base units, > 0 (a broker may round it down to the exchange's lot size)
    :ivar price: reference price, USDT per unit: what the plan assumed (the week's open, or the
        last close); the paper broker fills at it plus slippage
    """

    client_order_id: str
    week: dt.date
    symbol: str
    side: Side
    quantity: float
    price: float

    @property
    def notional(self) -> float:
        """quantity x reference price, USDT."""
        return self.quantity * self.price


@dataclass(frozen=True)
class SkippedOrder:
    """An order the plan dropped (never sent): what it would have been and why not."""

    symbol: str
    side: Side
    quantity: float
    price: float
    notional: float
    reason: str


@dataclass(frozen=True)
class Fill:
    """One trade of an order, as the broker confirmed it.

    :ivar trade_id: the broker's trade id (unique within the order)
    :ivar quantity: base units traded, > 0
    :ivar price: USDT per unit
    :ivar quote_qty: USDT paid (buy) or received (sell) before the fee
    :ivar fee: amount of `fee_asset` charged (Binance: the base asset on a buy, USDT on a sell,
        BNB with the BNB discount; the paper broker: always USDT)
    """

    client_order_id: str
    trade_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    quote_qty: float
    fee: float
    fee_asset: str


@dataclass(frozen=True)
class OrderOutcome:
    """What became of an order at the broker.

    :ivar status: see :data:`OrderStatus`; ``rejected`` with `reason` when the broker refused it
    :ivar requested_qty: base units asked for (after the broker's rounding to its lot size)
    :ivar filled_qty: base units traded (sum of `fills`)
    :ivar avg_price: USDT per unit over the fills; None when nothing traded
    :ivar quote_qty: USDT traded, before fees
    :ivar exchange_order_id: the broker's own id; None if it never had the order
    :ivar reason: why it was rejected, scaled or given up; "" otherwise
    """

    client_order_id: str
    symbol: str
    side: Side
    status: OrderStatus
    requested_qty: float
    filled_qty: float
    avg_price: float | None
    quote_qty: float
    exchange_order_id: str | None
    reason: str = ""
    fills: tuple[Fill, ...] = ()

    @property
    def final(self) -> bool:
        """False while the order may still trade (``open``): the ledger then keeps waiting."""
        return self.status in FINAL_STATUSES

    @classmethod
    def rejected(cls, order: OrderRequest, reason: str, *, status: OrderStatus = "rejected") -> OrderOutcome:
        """Nothing traded: the broker refused `order` (or it was never sent, ``status="not_sent"``)."""
        return cls(order.client_order_id, order.symbol, order.side, status, order.quantity, 0.0, None, 0.0, None, reason)


@dataclass(frozen=True)
class OrderPlan:
    """What :func:`plan_orders` returns.

    :ivar orders: to send, sells first then buys, each in the symbols' order
    :ivar skipped: dropped for being under the minimum notional
    :ivar equity: cash + positions at the prices, USDT, before trading
    :ivar current: (N + 1,) the weights held now at the prices, cash last
    :ivar turnover: Σ_assets |target - current|
    :ivar expected_cost: the cost the plan set aside, USDT (rate x turnover x equity)
    """

    orders: tuple[OrderRequest, ...]
    skipped: tuple[SkippedOrder, ...]
    equity: float
    current: np.ndarray
    turnover: float
    expected_cost: float


def current_weights(
    symbols: Sequence[str], positions: Mapping[str, float], cash: float, prices: Mapping[str, float]
) -> tuple[np.ndarray, float]:
    """The (N + 1,) weights of `positions` (base units) and `cash` (USDT) at `prices`, and the equity.

    :raises ValueError: a held asset without a finite positive price, or an equity <= 0
    """
    values = np.zeros(len(symbols))
    for i, symbol in enumerate(symbols):
        qty = float(positions.get(symbol, 0.0))
        if qty == 0.0:
            continue
        price = _price(prices, symbol)
        if price is None:
            raise ValueError(f"{symbol}: {qty} held but no price to value it at")
        values[i] = qty * price
    unknown = sorted(s for s, q in positions.items() if q and s not in symbols)
    if unknown:
        raise ValueError(f"positions in {unknown}, outside the traded symbols {list(symbols)}")
    equity = float(cash) + float(values.sum())
    if not equity > 0:
        raise ValueError(f"equity is {equity} (cash {cash}): nothing to allocate")
    return np.append(values, cash) / equity, equity


def _price(prices: Mapping[str, float], symbol: str) -> float | None:
    price = prices.get(symbol)
    if price is None or not math.isfinite(price) or price <= 0:
        return None
    return float(price)


def plan_orders(
    week: dt.date,
    target: np.ndarray,
    symbols: Sequence[str],
    positions: Mapping[str, float],
    cash: float,
    prices: Mapping[str, float],
    *,
    cost_rate: float,
    min_notional: float,
    tag: str,
) -> OrderPlan:
    """The market orders that take `positions` and `cash` to the `target` weights.

    Sized as :func:`regime_pipeline.core.allocation.portfolio.simulate` trades: the cost
    ``cost_rate x turnover x equity`` is set aside first, then each asset's target quantity is
    ``target_i x (equity - cost) / price_i``. An asset whose target is 0 is sold entirely.

    :param week: Monday of the week (goes into the client order ids)
    :param target: (N + 1,) weights after the risk limits, cash last
    :param symbols: (N,) the assets, in the order of `target`
    :param positions: base units held per symbol (missing = 0)
    :param cash: USDT held
    :param prices: reference price per symbol, USDT (missing or NaN = no price: such an asset
        must have target 0 and hold nothing)
    :param cost_rate: expected fee + slippage per unit of turnover, as a fraction (0.0015)
    :param min_notional: orders under this many USDT are skipped
    :param tag: the client order id prefix
    :raises ValueError: a target weight on an asset with no price, or bad shapes
    """
    target = np.asarray(target, dtype="float64").reshape(-1)
    if target.shape != (len(symbols) + 1,):
        raise ValueError(f"target has {target.size} weights for {len(symbols)} symbols + cash")
    for i, symbol in enumerate(symbols):
        if target[i] > 0 and _price(prices, symbol) is None:
            raise ValueError(f"target weight {target[i]} on {symbol}, which has no price")
    current, equity = current_weights(symbols, positions, cash, prices)
    turnover = float(np.abs(target[:-1] - current[:-1]).sum())
    cost = cost_rate * turnover * equity
    investable = equity - cost
    sells: list[OrderRequest] = []
    buys: list[OrderRequest] = []
    skipped: list[SkippedOrder] = []
    for i, symbol in enumerate(symbols):
        held = float(positions.get(symbol, 0.0))
        price = _price(prices, symbol)
        if price is None:
            continue  # holds nothing and gets nothing (checked above)
        # A zero target sells everything: computed as target - held it could leave float dust.
        delta = -held if target[i] == 0 else target[i] * investable / price - held
        if delta == 0:
            continue
        side: Side = "buy" if delta > 0 else "sell"
        qty = min(abs(delta), held) if side == "sell" else delta
        notional = qty * price
        if notional < min_notional:
            skipped.append(SkippedOrder(
                symbol, side, qty, price, notional,
                f"notional {notional:.2f} USDT below the {min_notional:g} USDT minimum",
            ))
            continue
        order = OrderRequest(client_order_id(week, symbol, side, tag), week, symbol, side, qty, price)
        (buys if side == "buy" else sells).append(order)
    return OrderPlan(tuple(sells + buys), tuple(skipped), equity, current, turnover, cost)
