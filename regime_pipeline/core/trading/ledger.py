"""The trade ledger: the book of the weekly rebalances, in its own DuckDB file.

**Why its own file** (``data/ledger/<broker mode>.duckdb``, not tables in the warehouse; in the
cluster deployment a Postgres schema of its own, ``ledger_<broker mode>``): the
warehouse belongs to the IO manager, which deletes and rewrites a partition's slice whenever an
asset is re-materialized; the ledger is an append-only record of what a broker did, which no
re-run may rewrite. A file per broker mode also keeps a paper book and a testnet book apart, and
its write lock is not shared with the warehouse's writers.

**Append-only.** Rows are inserted, never updated or deleted. Tables:

========================  =====================================================================
``deposits``              capital paid in (the opening cash), USDT
``plans``                 one per week: the data date, the equity before trading, whether the
                          drawdown stop held it in cash, and the decision's details (JSON)
``order_intents``         every order of a week's plan, written BEFORE anything is sent
``orders``                the final outcome of an intent (filled, rejected, not_sent, ...)
``fills``                 the trades of an order (quantity, price, USDT, fee and fee asset)
``positions``             quantities held and their value at the week's prices, once complete
``equity``                the week's equity before and after trading and its cash, once complete
========================  =====================================================================

**Crash safety.** A week's intents are written in one transaction before the first order is
sent, and each outcome (order + fills) in one transaction after the broker answered. A crash in
between leaves intents with no outcome: :meth:`Ledger.reconcile` looks each up at the broker by
its client order id and records what it finds, before anything new is sent. Outcomes are keyed
by client order id, so nothing is ever recorded twice.

**One rebalance at a time.** :meth:`Ledger.exclusive` holds a lock for a whole rebalance, so two
runs of the same week (a retry launched while the first still runs) cannot both look an order
up, find nothing and send it: an OS lock on ``<path>.lock`` for a DuckDB file, a
transaction-scoped advisory lock on Postgres (:mod:`regime_pipeline.core.database`). The lock
is the book's, not one week's: week W+1 must not plan from a book that week W is still trading.

**The book** (:meth:`Ledger.book`): cash = deposits, minus what buys paid, plus what sells
received, minus fees charged in USDT; a position = bought minus sold minus fees charged in that
asset (Binance takes a buy's fee in the base asset). Fills are applied one by one in the order
they were recorded, so the result equals, bit for bit, the balances of a broker that applied
the same fills in the same order (the paper broker does).

Units: quantities in base units, prices in USDT per unit, cash, equity and fees in USDT
(fees: in their asset); weeks are the Monday the week starts on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd

from regime_pipeline.core.database import Database, DuckDBFile, ExclusiveBusyError, PostgresSchema, create_tables, transaction
from regime_pipeline.core.trading.brokers.base import Broker
from regime_pipeline.core.trading.orders import Fill, OrderOutcome, OrderRequest

# DOUBLE is spelt per database ({double}): DuckDB's DOUBLE, Postgres's DOUBLE PRECISION.
_SCHEMA = (
    "CREATE SEQUENCE IF NOT EXISTS ledger_seq",
    """CREATE TABLE IF NOT EXISTS deposits (
        seq BIGINT PRIMARY KEY, asset VARCHAR NOT NULL, amount {double} NOT NULL, note VARCHAR NOT NULL,
        recorded_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE IF NOT EXISTS plans (
        week DATE PRIMARY KEY, data_through DATE NOT NULL, equity_before {double} NOT NULL,
        drawdown_stop BOOLEAN NOT NULL, details VARCHAR NOT NULL,
        recorded_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE IF NOT EXISTS order_intents (
        client_order_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, week DATE NOT NULL, symbol VARCHAR NOT NULL,
        side VARCHAR NOT NULL, quantity {double} NOT NULL, price {double} NOT NULL,
        recorded_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE IF NOT EXISTS orders (
        client_order_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, week DATE NOT NULL, symbol VARCHAR NOT NULL,
        side VARCHAR NOT NULL, status VARCHAR NOT NULL, requested_qty {double} NOT NULL, filled_qty {double} NOT NULL,
        avg_price {double}, quote_qty {double} NOT NULL, exchange_order_id VARCHAR, reason VARCHAR NOT NULL,
        source VARCHAR NOT NULL, recorded_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""",
    """CREATE TABLE IF NOT EXISTS fills (
        client_order_id VARCHAR NOT NULL, trade_id VARCHAR NOT NULL, seq BIGINT NOT NULL, week DATE NOT NULL,
        symbol VARCHAR NOT NULL, side VARCHAR NOT NULL, quantity {double} NOT NULL, price {double} NOT NULL,
        quote_qty {double} NOT NULL, fee {double} NOT NULL, fee_asset VARCHAR NOT NULL,
        recorded_at TIMESTAMP NOT NULL DEFAULT current_timestamp, PRIMARY KEY (client_order_id, trade_id))""",
    """CREATE TABLE IF NOT EXISTS positions (
        week DATE NOT NULL, symbol VARCHAR NOT NULL, quantity {double} NOT NULL, price {double} NOT NULL,
        value {double} NOT NULL, PRIMARY KEY (week, symbol))""",
    """CREATE TABLE IF NOT EXISTS equity (
        week DATE PRIMARY KEY, equity_before {double} NOT NULL, equity_after {double} NOT NULL,
        cash_after {double} NOT NULL, drawdown_stop BOOLEAN NOT NULL,
        recorded_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""",
)


class LedgerError(RuntimeError):
    """A write the ledger refuses: it would contradict what is already recorded."""


@dataclass(frozen=True)
class StoredPlan:
    """A week's plan as recorded: see :meth:`Ledger.write_plan`."""

    week: dt.date
    data_through: dt.date
    equity_before: float
    drawdown_stop: bool
    details: dict[str, Any]


@dataclass(frozen=True)
class Reconciliation:
    """What :meth:`Ledger.reconcile` found for the intents that had no outcome.

    :ivar recorded: found at the broker with a final outcome, now recorded
    :ivar abandoned: of an earlier week and unknown to the broker: recorded as ``not_sent``
    :ivar unsent: of the current (or a later) week and unknown to the broker: still to be sent
    :ivar still_open: at the broker but not final yet (an open order): left open
    """

    recorded: tuple[OrderOutcome, ...] = ()
    abandoned: tuple[OrderRequest, ...] = ()
    unsent: tuple[OrderRequest, ...] = ()
    still_open: tuple[OrderRequest, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.recorded or self.abandoned or self.unsent or self.still_open)


class Ledger:
    """The book in the DuckDB file `path` (created with its tables if missing).

    :param path: a DuckDB file (e.g. ``data/ledger/paper.duckdb``) or a :class:`Database`
        (a Postgres schema in the cluster)
    :param initial_cash: USDT deposited when the ledger is created; ignored afterwards
    :param base_assets: base asset -> symbol (``{"BTC": "BTCUSDT"}``), to book fees charged in
        a base asset; a fee in an asset outside it (and not the quote) is kept in ``fills`` but
        moves no position
    :param quote: the cash asset
    """

    def __init__(
        self,
        path: str | os.PathLike | Database,
        *,
        initial_cash: float,
        base_assets: Mapping[str, str] | None = None,
        quote: str = "USDT",
    ) -> None:
        if not initial_cash > 0:
            raise ValueError(f"initial_cash must be > 0 USDT, got {initial_cash}")
        self.db: Database = path if isinstance(path, (DuckDBFile, PostgresSchema)) else DuckDBFile(path)
        self.path = str(getattr(self.db, "path", self.db))
        self.quote = quote
        if base_assets is None:
            from regime_pipeline.configs import universe

            base_assets = {a.base: a.symbol for a in universe().assets}
        self.base_assets = dict(base_assets)
        with self.db.connect() as con, transaction(con):
            create_tables(con, self.db, _SCHEMA)
            if con.execute("SELECT count(*) FROM deposits").fetchone()[0] == 0:
                con.execute(
                    "INSERT INTO deposits (seq, asset, amount, note) VALUES (nextval('ledger_seq'), ?, ?, ?)",
                    [quote, float(initial_cash), "opening capital"],
                )

    def __repr__(self) -> str:
        return f"Ledger(path={self.path!r})"

    @contextmanager
    def exclusive(self, wait_s: float = 60.0) -> Iterator[None]:
        """Hold the ledger's rebalance lock while inside; wait up to `wait_s`.

        :raises LedgerError: another process (or another ledger object) holds it still
        """
        with ExitStack() as held:
            try:
                held.enter_context(self.db.exclusive("rebalance", wait_s=wait_s))
            except ExclusiveBusyError as exc:
                raise LedgerError(str(exc)) from None
            yield

    # -- the book -----------------------------------------------------------------------

    def book(self) -> tuple[dict[str, float], float]:
        """``(positions, cash)``: base units held per symbol (non-zero only) and USDT cash."""
        with self.db.connect(read_only=True) as con:
            deposits = con.execute("SELECT asset, amount FROM deposits ORDER BY seq").fetchall()
            fills = con.execute(
                "SELECT symbol, side, quantity, quote_qty, fee, fee_asset FROM fills ORDER BY seq, trade_id"
            ).fetchall()
        cash = 0.0
        positions: dict[str, float] = {}
        for asset, amount in deposits:
            if asset == self.quote:
                cash += amount
        for symbol, side, qty, quote_qty, fee, fee_asset in fills:
            # Same operations in the same order as a broker applying the fill: the bits match.
            if side == "buy":
                cash -= quote_qty
                positions[symbol] = positions.get(symbol, 0.0) + qty
            else:
                cash += quote_qty
                positions[symbol] = positions.get(symbol, 0.0) - qty
            if fee:
                if fee_asset == self.quote:
                    cash -= fee
                elif fee_asset in self.base_assets:
                    held = self.base_assets[fee_asset]
                    positions[held] = positions.get(held, 0.0) - fee
        return {s: q for s, q in positions.items() if q != 0.0}, cash

    def positions(self) -> dict[str, float]:
        """Base units held per symbol (non-zero only)."""
        return self.book()[0]

    def cash(self) -> float:
        """USDT held."""
        return self.book()[1]

    # -- reading ------------------------------------------------------------------------

    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self.db.connect(read_only=True) as con:
            return con.execute(sql, list(params)).df()

    @staticmethod
    def _week_filter(week: dt.date | None) -> tuple[str, list[Any]]:
        return ("WHERE week = ?", [week]) if week is not None else ("", [])

    def orders(self, week: dt.date | None = None) -> pd.DataFrame:
        """Recorded order outcomes (of `week`, or all), in the order recorded."""
        where, params = self._week_filter(week)
        return self._frame(
            "SELECT week, client_order_id, symbol, side, status, requested_qty, filled_qty, avg_price, quote_qty, "
            f"exchange_order_id, reason, source FROM orders {where} ORDER BY seq",
            params,
        )

    def fills(self, week: dt.date | None = None) -> pd.DataFrame:
        """Recorded trades (of `week`, or all), in the order recorded."""
        where, params = self._week_filter(week)
        return self._frame(
            "SELECT week, client_order_id, trade_id, symbol, side, quantity, price, quote_qty, fee, fee_asset "
            f"FROM fills {where} ORDER BY seq, trade_id",
            params,
        )

    def intents(self, week: dt.date | None = None) -> pd.DataFrame:
        """Order intents (of `week`, or all), with the status of their outcome (None: none yet)."""
        where, params = self._week_filter(week)
        where = where.replace("week", "i.week")
        return self._frame(
            "SELECT i.week, i.client_order_id, i.symbol, i.side, i.quantity, i.price, o.status "
            f"FROM order_intents i LEFT JOIN orders o USING (client_order_id) {where} ORDER BY i.seq",
            params,
        )

    def position_history(self, week: dt.date | None = None) -> pd.DataFrame:
        """Positions at the end of each completed week: quantity, price and value in USDT."""
        where, params = self._week_filter(week)
        return self._frame(f"SELECT week, symbol, quantity, price, value FROM positions {where} ORDER BY week, symbol", params)

    def equity_history(self) -> pd.DataFrame:
        """One row per planned week: data date, equity before and after trading, cash after,
        whether the drawdown stop held it in cash (after-trading columns null until complete)."""
        return self._frame(
            "SELECT p.week, p.data_through, p.equity_before, e.equity_after, e.cash_after, p.drawdown_stop "
            "FROM plans p LEFT JOIN equity e USING (week) ORDER BY p.week"
        )

    def week_close(self, week: dt.date) -> tuple[float, float] | None:
        """``(equity_after, cash_after)`` of a complete `week`, USDT; None if not complete."""
        with self.db.connect(read_only=True) as con:
            row = con.execute("SELECT equity_after, cash_after FROM equity WHERE week = ?", [week]).fetchone()
        return None if row is None else (float(row[0]), float(row[1]))

    def drawdown_history(self, before: dt.date) -> list[tuple[float, bool]]:
        """``(equity_before, drawdown_stop)`` of every week planned before `before`, oldest first."""
        with self.db.connect(read_only=True) as con:
            rows = con.execute(
                "SELECT equity_before, drawdown_stop FROM plans WHERE week < ? ORDER BY week", [before]
            ).fetchall()
        return [(float(e), bool(s)) for e, s in rows]

    def plan(self, week: dt.date) -> StoredPlan | None:
        with self.db.connect(read_only=True) as con:
            row = con.execute(
                "SELECT week, data_through, equity_before, drawdown_stop, details FROM plans WHERE week = ?", [week]
            ).fetchone()
        if row is None:
            return None
        return StoredPlan(row[0], row[1], float(row[2]), bool(row[3]), json.loads(row[4]))

    def plan_details(self) -> dict[dt.date, dict[str, Any]]:
        """Every planned week's recorded details, by week."""
        with self.db.connect(read_only=True) as con:
            rows = con.execute("SELECT week, details FROM plans ORDER BY week").fetchall()
        return {week: json.loads(details) for week, details in rows}

    def last_planned_week(self) -> dt.date | None:
        with self.db.connect(read_only=True) as con:
            return con.execute("SELECT max(week) FROM plans").fetchone()[0]

    def is_complete(self, week: dt.date) -> bool:
        return self.week_close(week) is not None

    def open_intents(self, week: dt.date | None = None) -> list[OrderRequest]:
        """Intents (of `week`, or all) with no recorded outcome, in the order planned."""
        where = "AND i.week = ?" if week is not None else ""
        params = [week] if week is not None else []
        with self.db.connect(read_only=True) as con:
            rows = con.execute(
                "SELECT i.client_order_id, i.week, i.symbol, i.side, i.quantity, i.price FROM order_intents i "
                f"WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.client_order_id = i.client_order_id) {where} "
                "ORDER BY i.seq",
                params,
            ).fetchall()
        return [OrderRequest(*row) for row in rows]

    def outcomes(self, week: dt.date) -> list[OrderOutcome]:
        """The recorded outcomes of `week` with their fills, in the order recorded."""
        with self.db.connect(read_only=True) as con:
            orders = con.execute(
                "SELECT client_order_id, symbol, side, status, requested_qty, filled_qty, avg_price, quote_qty, "
                "exchange_order_id, reason FROM orders WHERE week = ? ORDER BY seq",
                [week],
            ).fetchall()
            fills = con.execute(
                "SELECT client_order_id, trade_id, symbol, side, quantity, price, quote_qty, fee, fee_asset "
                "FROM fills WHERE week = ? ORDER BY seq, trade_id",
                [week],
            ).fetchall()
        by_order: dict[str, list[Fill]] = {}
        for row in fills:
            by_order.setdefault(row[0], []).append(Fill(*row))
        return [OrderOutcome(*row, fills=tuple(by_order.get(row[0], ()))) for row in orders]

    # -- writing ------------------------------------------------------------------------

    def write_plan(
        self,
        week: dt.date,
        data_through: dt.date,
        equity_before: float,
        drawdown_stop: bool,
        details: Mapping[str, Any],
        intents: Sequence[OrderRequest],
    ) -> None:
        """Record `week`'s plan and its order intents together, before any order is sent.

        :raises LedgerError: the week has a plan already, or an intent is of another week
        """
        stray = [o.client_order_id for o in intents if o.week != week]
        if stray:
            raise LedgerError(f"intents {stray} are not of the week {week}")
        with self.db.connect() as con, transaction(con):
            if con.execute("SELECT count(*) FROM plans WHERE week = ?", [week]).fetchone()[0]:
                raise LedgerError(f"the week {week} is planned already: a plan is written once")
            con.execute(
                "INSERT INTO plans (week, data_through, equity_before, drawdown_stop, details) VALUES (?, ?, ?, ?, ?)",
                [week, data_through, float(equity_before), bool(drawdown_stop), json.dumps(details, sort_keys=True)],
            )
            for order in intents:
                con.execute(
                    "INSERT INTO order_intents (client_order_id, seq, week, symbol, side, quantity, price) "
                    "VALUES (?, nextval('ledger_seq'), ?, ?, ?, ?, ?)",
                    [order.client_order_id, order.week, order.symbol, order.side, order.quantity, order.price],
                )

    def record(self, outcome: OrderOutcome, *, source: str) -> bool:
        """Record the final `outcome` of an intent and its fills in one transaction.

        :param source: how it was learnt: ``"submit"``, ``"reconcile"`` or ``"abandon"``
        :return: False if the intent already had an outcome (nothing written: never twice)
        :raises LedgerError: no intent with this client order id, or a non-final outcome
        """
        if not outcome.final:
            raise LedgerError(f"{outcome.client_order_id}: {outcome.status!r} is not a final outcome")
        with self.db.connect() as con, transaction(con):
            intent = con.execute(
                "SELECT week FROM order_intents WHERE client_order_id = ?", [outcome.client_order_id]
            ).fetchone()
            if intent is None:
                raise LedgerError(f"{outcome.client_order_id}: no such order intent in the ledger")
            if con.execute("SELECT count(*) FROM orders WHERE client_order_id = ?", [outcome.client_order_id]).fetchone()[0]:
                return False
            week = intent[0]
            self._insert_outcome(con, week, outcome, source)
        return True

    @staticmethod
    def _insert_outcome(con: Any, week: dt.date, outcome: OrderOutcome, source: str) -> None:
        con.execute(
            "INSERT INTO orders (client_order_id, seq, week, symbol, side, status, requested_qty, filled_qty, avg_price, "
            "quote_qty, exchange_order_id, reason, source) VALUES (?, nextval('ledger_seq'), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [outcome.client_order_id, week, outcome.symbol, outcome.side, outcome.status, outcome.requested_qty,
             outcome.filled_qty, outcome.avg_price, outcome.quote_qty, outcome.exchange_order_id, outcome.reason, source],
        )
        for fill in outcome.fills:
            con.execute(
                "INSERT INTO fills (client_order_id, trade_id, seq, week, symbol, side, quantity, price, quote_qty, fee, "
                "fee_asset) VALUES (?, ?, nextval('ledger_seq'), ?, ?, ?, ?, ?, ?, ?, ?)",
                [fill.client_order_id, fill.trade_id, week, fill.symbol, fill.side, fill.quantity, fill.price,
                 fill.quote_qty, fill.fee, fill.fee_asset],
            )

    def complete_week(
        self,
        week: dt.date,
        prices: Mapping[str, float],
        *,
        equity_before: float,
        drawdown_stop: bool,
    ) -> tuple[float, float]:
        """Close `week`: snapshot the positions at `prices` and record equity before and after.

        :return: ``(equity_after, cash_after)`` in USDT
        :raises LedgerError: the week is complete already, or still has intents without an outcome
        """
        open_ = self.open_intents(week)
        if open_:
            raise LedgerError(f"the week {week} still has {len(open_)} order(s) without an outcome")
        positions, cash = self.book()
        values = {s: q * float(prices[s]) for s, q in positions.items()}
        equity_after = cash + sum(values.values())
        with self.db.connect() as con, transaction(con):
            if con.execute("SELECT count(*) FROM equity WHERE week = ?", [week]).fetchone()[0]:
                raise LedgerError(f"the week {week} is complete already")
            for symbol in sorted(positions):
                con.execute(
                    "INSERT INTO positions VALUES (?, ?, ?, ?, ?)",
                    [week, symbol, positions[symbol], float(prices[symbol]), values[symbol]],
                )
            con.execute(
                "INSERT INTO equity (week, equity_before, equity_after, cash_after, drawdown_stop) VALUES (?, ?, ?, ?, ?)",
                [week, float(equity_before), equity_after, cash, bool(drawdown_stop)],
            )
        return equity_after, cash

    # -- reconciliation -----------------------------------------------------------------

    def reconcile(self, broker: Broker, *, current_week: dt.date) -> Reconciliation:
        """Settle every intent without an outcome with what `broker` knows, before anything is sent.

        Each is looked up by client order id. Found with a final outcome: recorded. Found but
        still open: left open. Not found: if it belongs to a week before `current_week`, it is
        recorded as ``not_sent`` (trading last week's order at this week's prices would be
        wrong); otherwise it is left to be sent by its own week's rebalance.
        """
        recorded: list[OrderOutcome] = []
        abandoned: list[OrderRequest] = []
        unsent: list[OrderRequest] = []
        still_open: list[OrderRequest] = []
        for intent in self.open_intents():
            found = broker.lookup(intent)
            if found is not None and found.final:
                self.record(found, source="reconcile")
                recorded.append(found)
            elif found is not None:
                still_open.append(intent)
            elif intent.week < current_week:
                reason = f"never reached the broker; given up at the rebalance of {current_week}"
                self.record(OrderOutcome.rejected(intent, reason, status="not_sent"), source="abandon")
                abandoned.append(intent)
            else:
                unsent.append(intent)
        return Reconciliation(tuple(recorded), tuple(abandoned), tuple(unsent), tuple(still_open))
