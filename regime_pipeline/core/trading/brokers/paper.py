"""The paper broker: a simulated exchange account that fills market orders at the week's open.

Fills follow the backtests (``configs/backtest.yaml`` ``costs``, shared through
:class:`~regime_pipeline.core.allocation.portfolio.Costs`): an order fills entirely at its reference price
(the week's open) moved against it by the slippage, and pays the fee on the notional, in USDT::

    buy:  price = open x (1 + slippage)   cash -= qty x price + fee   fee = fee_rate x qty x price
    sell: price = open x (1 - slippage)   cash += qty x price - fee

Cash never goes negative: a buy costing more than the cash held is scaled down to what the cash
pays for (fee included), and says so in its outcome's `reason`. A sell of more than is held is
rejected (insufficient balance), as Binance would; a sell exceeding the holding by float dust
(1e-9 relative) sells the holding.

The account (balances and orders) lives in its own DuckDB file (in the cluster, a Postgres schema
of its own), like an exchange's books apart from ours: it survives a crash of the process, so a restart can look an order up by its client
order id. Each order and its balance changes are written in one transaction. Submitting an id
the account already has returns that order, never a second fill.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from typing import Any

from regime_pipeline.core.database import Database, DuckDBFile, PostgresSchema, create_tables, transaction
from regime_pipeline.core.trading.orders import Fill, OrderOutcome, OrderRequest
from regime_pipeline.core.allocation.portfolio import Costs

# A sell above the holding by at most this relative amount is float dust: the holding is sold.
DUST = 1e-9

# DOUBLE is spelt per database ({double}).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS paper_account (asset VARCHAR PRIMARY KEY, amount {double} NOT NULL)",
    """CREATE TABLE IF NOT EXISTS paper_orders (
        seq BIGINT NOT NULL,
        client_order_id VARCHAR PRIMARY KEY,
        symbol VARCHAR NOT NULL,
        side VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        requested_qty {double} NOT NULL,
        filled_qty {double} NOT NULL,
        fill_price {double},
        quote_qty {double} NOT NULL,
        fee {double} NOT NULL,
        reason VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    )""",
)


class PaperBroker:
    """A simulated spot account in `path`, opened with `initial_cash` USDT the first time.

    :param path: the account's DuckDB file (created if missing), or a :class:`Database`
    :param initial_cash: USDT credited when the account is created; ignored afterwards
    :param costs: fee and slippage per side (default: ``configs/backtest.yaml``)
    :param quote: the quote asset of every symbol
    """

    name = "paper"

    def __init__(
        self, path: str | os.PathLike | Database, *, initial_cash: float, costs: Costs | None = None, quote: str = "USDT"
    ) -> None:
        if not initial_cash > 0:
            raise ValueError(f"initial_cash must be > 0 USDT, got {initial_cash}")
        self.db: Database = path if isinstance(path, (DuckDBFile, PostgresSchema)) else DuckDBFile(path)
        self.path = str(getattr(self.db, "path", self.db))
        self.costs = costs if costs is not None else Costs.from_config()
        self.quote = quote
        with self.db.connect() as con, transaction(con):
            create_tables(con, self.db, _SCHEMA)
            if con.execute("SELECT count(*) FROM paper_account").fetchone()[0] == 0:
                con.execute("INSERT INTO paper_account VALUES (?, ?)", [quote, float(initial_cash)])

    def __repr__(self) -> str:
        return f"PaperBroker(path={self.path!r}, fee_bps={self.costs.fee_bps}, slippage_bps={self.costs.slippage_bps})"

    # -- Broker -------------------------------------------------------------------------

    def submit(self, order: OrderRequest) -> OrderOutcome:
        """Fill `order` (see the module docstring), or return the order already under its id."""
        with self.db.connect() as con, transaction(con):
            existing = self._find(con, order.client_order_id)
            if existing is not None:
                return existing
            balances = dict(con.execute("SELECT asset, amount FROM paper_account").fetchall())
            seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM paper_orders").fetchone()[0]
            outcome, changes = self.execute(order, balances, seq)
            fill = outcome.fills[0] if outcome.fills else None
            con.execute(
                "INSERT INTO paper_orders (seq, client_order_id, symbol, side, status, requested_qty, filled_qty, "
                "fill_price, quote_qty, fee, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [seq, order.client_order_id, order.symbol, order.side, outcome.status, outcome.requested_qty,
                 outcome.filled_qty, None if fill is None else fill.price, outcome.quote_qty,
                 0.0 if fill is None else fill.fee, outcome.reason],
            )
            for asset, amount in changes.items():
                con.execute(
                    "INSERT INTO paper_account VALUES (?, ?) ON CONFLICT (asset) DO UPDATE SET amount = excluded.amount",
                    [asset, amount],
                )
            return outcome

    def lookup(self, order: OrderRequest) -> OrderOutcome | None:
        with self.db.connect(read_only=True) as con:
            return self._find(con, order.client_order_id)

    def balances(self) -> dict[str, float]:
        with self.db.connect(read_only=True) as con:
            rows = con.execute("SELECT asset, amount FROM paper_account ORDER BY asset").fetchall()
        return {asset: amount for asset, amount in rows if amount != 0}

    # -- the fill model -----------------------------------------------------------------

    def base_asset(self, symbol: str) -> str:
        if not symbol.endswith(self.quote) or symbol == self.quote:
            raise ValueError(f"{symbol}: the paper broker trades {self.quote} pairs only")
        return symbol[: -len(self.quote)]

    def execute(
        self, order: OrderRequest, balances: Mapping[str, float], seq: int
    ) -> tuple[OrderOutcome, dict[str, float]]:
        """The outcome of `order` against `balances` and the new balances of the assets it touches.

        Pure: nothing is read or written. `seq` numbers the order (its paper order and trade id).
        """
        base = self.base_asset(order.symbol)
        if not (order.quantity > 0 and math.isfinite(order.quantity)):
            return OrderOutcome.rejected(order, f"quantity must be > 0, got {order.quantity}"), {}
        if not (order.price > 0 and math.isfinite(order.price)):
            return OrderOutcome.rejected(order, f"reference price must be > 0, got {order.price}"), {}
        slippage, fee_rate = self.costs.slippage_bps / 1e4, self.costs.fee_bps / 1e4
        cash = float(balances.get(self.quote, 0.0))
        held = float(balances.get(base, 0.0))
        qty = order.quantity
        reason = ""
        if order.side == "buy":
            price = order.price * (1 + slippage)
            if qty * price + qty * price * fee_rate > cash:
                # What the cash pays for, fee included; float rounding can leave the cost a hair
                # above the cash, so step down until it is not.
                qty = cash / (price * (1 + fee_rate))
                while qty > 0 and qty * price + qty * price * fee_rate > cash:
                    qty = math.nextafter(qty, 0.0)
                if qty <= 0:
                    return OrderOutcome.rejected(order, f"insufficient balance: {cash} {self.quote} available"), {}
                reason = f"scaled down from {order.quantity} to {qty}: the cash available was {cash} {self.quote}"
            quote_qty = qty * price
            fee = quote_qty * fee_rate
            changes = {self.quote: cash - quote_qty - fee, base: held + qty}
        else:
            if qty > held:
                if qty > held * (1 + DUST):
                    return OrderOutcome.rejected(order, f"insufficient balance: {held} {base} held"), {}
                qty = held
            price = order.price * (1 - slippage)
            quote_qty = qty * price
            fee = quote_qty * fee_rate
            changes = {self.quote: cash + quote_qty - fee, base: held - qty}
        fill = Fill(order.client_order_id, str(seq), order.symbol, order.side, qty, price, quote_qty, fee, self.quote)
        outcome = OrderOutcome(
            order.client_order_id, order.symbol, order.side, "filled", order.quantity, qty, price, quote_qty,
            f"paper-{seq}", reason, (fill,),
        )
        return outcome, changes

    def _find(self, con: Any, client_order_id: str) -> OrderOutcome | None:
        row = con.execute(
            "SELECT seq, symbol, side, status, requested_qty, filled_qty, fill_price, quote_qty, fee, reason "
            "FROM paper_orders WHERE client_order_id = ?",
            [client_order_id],
        ).fetchone()
        if row is None:
            return None
        seq, symbol, side, status, requested, filled, price, quote_qty, fee, reason = row
        fills = (Fill(client_order_id, str(seq), symbol, side, filled, price, quote_qty, fee, self.quote),) if filled else ()
        return OrderOutcome(
            client_order_id, symbol, side, status, requested, filled, price if filled else None, quote_qty,
            f"paper-{seq}" if status != "rejected" else None, reason, fills,
        )
