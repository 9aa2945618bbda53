"""The trade ledger: the book from fills, never a duplicate, intents before outcomes, and
reconciliation with a broker after a crash."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from regime_pipeline.core.trading.brokers import PaperBroker
from regime_pipeline.core.trading.ledger import Ledger, LedgerError
from regime_pipeline.core.trading.orders import Fill, OrderOutcome, OrderRequest
from regime_pipeline.core.allocation.portfolio import Costs

WEEK = dt.date(2024, 1, 8)
NEXT = WEEK + dt.timedelta(days=7)


def intent(symbol: str, side: str, qty: float, price: float, week: dt.date = WEEK) -> OrderRequest:
    return OrderRequest(f"rp-{week:%Y%m%d}-{symbol}-{side[0]}", week, symbol, side, qty, price)  # type: ignore[arg-type]


def filled(o: OrderRequest, price: float, fee: float, fee_asset: str, trades: int = 1) -> OrderOutcome:
    q = o.quantity / trades
    fills = tuple(Fill(o.client_order_id, str(i), o.symbol, o.side, q, price, q * price, fee / trades, fee_asset)
                  for i in range(trades))
    return OrderOutcome(o.client_order_id, o.symbol, o.side, "filled", o.quantity, o.quantity, price,
                        o.quantity * price, "42", "", fills)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.duckdb", initial_cash=10_000.0)


def plan(ledger: Ledger, *intents: OrderRequest, week: dt.date = WEEK) -> None:
    ledger.write_plan(week, week - dt.timedelta(days=1), 10_000.0, False, {"note": "test"}, intents)


def test_the_opening_capital_is_deposited_once(tmp_path: Path) -> None:
    path = tmp_path / "l.duckdb"
    assert Ledger(path, initial_cash=10_000.0).cash() == 10_000.0
    assert Ledger(path, initial_cash=5.0).cash() == 10_000.0
    assert Ledger(path, initial_cash=5.0).positions() == {}


def test_the_book_follows_fills_and_fees_in_their_asset(ledger: Ledger) -> None:
    buy_btc, buy_bnb, sell_btc = intent("BTCUSDT", "buy", 0.1, 40_000), intent("BNBUSDT", "buy", 2.0, 300), intent(
        "BTCUSDT", "sell", 0.04, 41_000, week=NEXT)
    plan(ledger, buy_btc, buy_bnb)
    ledger.record(filled(buy_btc, 40_000, 0.0001, "BTC", trades=2), source="submit")  # Binance: a buy's fee in base
    ledger.record(filled(buy_bnb, 300, 0.6, "USDT"), source="submit")
    plan(ledger, sell_btc, week=NEXT)
    ledger.record(filled(sell_btc, 41_000, 0.001, "BNB"), source="submit")  # the BNB discount
    positions, cash = ledger.book()
    assert positions == {"BTCUSDT": pytest.approx(0.1 - 0.0001 - 0.04), "BNBUSDT": pytest.approx(2.0 - 0.001)}
    assert cash == pytest.approx(10_000 - 4_000 - 600 - 0.6 + 0.04 * 41_000)
    fills = ledger.fills(WEEK)
    assert list(fills["trade_id"]) == ["0", "1", "0"] and list(fills["fee_asset"]) == ["BTC", "BTC", "USDT"]


def test_an_outcome_is_recorded_once(ledger: Ledger) -> None:
    o = intent("ETHUSDT", "buy", 1.0, 2_000)
    plan(ledger, o)
    assert ledger.record(filled(o, 2_000, 2.0, "USDT"), source="submit") is True
    assert ledger.record(filled(o, 2_000, 2.0, "USDT"), source="reconcile") is False
    assert len(ledger.orders()) == 1 and len(ledger.fills()) == 1
    assert ledger.cash() == 10_000 - 2_000 - 2.0


def test_writes_that_would_contradict_the_record_are_refused(ledger: Ledger) -> None:
    o = intent("ETHUSDT", "buy", 1.0, 2_000)
    with pytest.raises(LedgerError, match="no such order intent"):
        ledger.record(filled(o, 2_000, 0.0, "USDT"), source="submit")
    plan(ledger, o)
    with pytest.raises(LedgerError, match="planned already"):
        plan(ledger, o)
    with pytest.raises(LedgerError, match="not a final outcome"):
        ledger.record(OrderOutcome(o.client_order_id, o.symbol, o.side, "open", 1.0, 0.0, None, 0.0, "1"), source="submit")
    with pytest.raises(LedgerError, match="1 order\\(s\\) without an outcome"):
        ledger.complete_week(WEEK, {"ETHUSDT": 2_000.0}, equity_before=10_000.0, drawdown_stop=False)
    ledger.record(filled(o, 2_000, 0.0, "USDT"), source="submit")
    assert ledger.complete_week(WEEK, {"ETHUSDT": 2_100.0}, equity_before=10_000.0, drawdown_stop=False) == (
        10_100.0, 8_000.0)
    with pytest.raises(LedgerError, match="complete already"):
        ledger.complete_week(WEEK, {"ETHUSDT": 2_100.0}, equity_before=10_000.0, drawdown_stop=False)
    history = ledger.equity_history()
    assert history[["equity_before", "equity_after", "cash_after"]].values.tolist() == [[10_000.0, 10_100.0, 8_000.0]]
    assert ledger.position_history(WEEK)[["symbol", "quantity", "value"]].values.tolist() == [["ETHUSDT", 1.0, 2_100.0]]


TABLES = ("deposits", "plans", "order_intents", "orders", "fills", "positions", "equity")


def snapshot(ledger: Ledger) -> dict[str, set[tuple]]:
    con = duckdb.connect(ledger.path, read_only=True)
    try:
        return {t: set(con.execute(f"SELECT * FROM {t}").fetchall()) for t in TABLES}
    finally:
        con.close()


def test_rows_once_written_are_never_changed(ledger: Ledger) -> None:
    first = intent("ETHUSDT", "buy", 1.0, 2_000)
    plan(ledger, first)
    ledger.record(filled(first, 2_000, 2.0, "USDT"), source="submit")
    ledger.complete_week(WEEK, {"ETHUSDT": 2_000.0}, equity_before=10_000.0, drawdown_stop=False)
    before = snapshot(ledger)
    second = intent("ETHUSDT", "sell", 1.0, 2_200, week=NEXT)
    plan(ledger, second, week=NEXT)
    ledger.record(filled(second, 2_200, 2.2, "USDT"), source="submit")
    ledger.reconcile(StubBroker({}), current_week=NEXT)
    ledger.complete_week(NEXT, {"ETHUSDT": 2_200.0}, equity_before=10_198.0, drawdown_stop=False)
    after = snapshot(ledger)
    assert all(before[t] <= after[t] for t in TABLES)  # every earlier row still there, unchanged
    assert sum(len(after[t]) - len(before[t]) for t in TABLES) == 5  # plan, intent, order, fill, equity


def test_one_rebalance_at_a_time(ledger: Ledger) -> None:
    other = Ledger(ledger.path, initial_cash=1.0)  # as another process would open it
    with ledger.exclusive():
        with pytest.raises(LedgerError, match="held by another rebalance"):
            with other.exclusive(wait_s=0.1):
                pass
    with other.exclusive(wait_s=0.1):  # free again
        pass


class StubBroker:
    """Answers lookups from a table of client order id -> outcome."""

    name = "stub"

    def __init__(self, known: dict[str, OrderOutcome]) -> None:
        self.known = known
        self.submitted: list[str] = []

    def lookup(self, order: OrderRequest) -> OrderOutcome | None:
        return self.known.get(order.client_order_id)

    def submit(self, order: OrderRequest) -> OrderOutcome:  # pragma: no cover - reconcile never sends
        self.submitted.append(order.client_order_id)
        raise AssertionError("reconcile must not send")

    def balances(self) -> dict[str, float]:
        return {}


def test_reconcile_settles_every_open_intent_before_anything_is_sent(ledger: Ledger) -> None:
    old_sent, old_lost = intent("BTCUSDT", "buy", 0.1, 40_000), intent("ETHUSDT", "buy", 1.0, 2_000)
    plan(ledger, old_sent, old_lost)
    now_sent, now_open, now_lost = (intent("SOLUSDT", "buy", 5.0, 100, week=NEXT), intent("XRPUSDT", "buy", 10.0, 0.5, week=NEXT),
                                    intent("ADAUSDT", "buy", 20.0, 0.4, week=NEXT))
    plan(ledger, now_sent, now_open, now_lost, week=NEXT)
    still_open = OrderOutcome(now_open.client_order_id, "XRPUSDT", "buy", "open", 10.0, 0.0, None, 0.0, "7")
    broker = StubBroker({
        old_sent.client_order_id: filled(old_sent, 40_000, 4.0, "USDT"),
        now_sent.client_order_id: filled(now_sent, 100, 0.5, "USDT"),
        now_open.client_order_id: still_open,
    })
    report = ledger.reconcile(broker, current_week=NEXT)
    assert [o.client_order_id for o in report.recorded] == [old_sent.client_order_id, now_sent.client_order_id]
    assert report.abandoned == (old_lost,)  # last week's order is not traded at this week's prices
    assert report.unsent == (now_lost,)  # this week's: left for the rebalance to send
    assert report.still_open == (now_open,)
    assert broker.submitted == []
    statuses = dict(zip(ledger.orders()["client_order_id"], zip(ledger.orders()["status"], ledger.orders()["source"])))
    assert statuses == {
        old_sent.client_order_id: ("filled", "reconcile"),
        old_lost.client_order_id: ("not_sent", "abandon"),
        now_sent.client_order_id: ("filled", "reconcile"),
    }
    assert ledger.open_intents() == [now_open, now_lost]
    # Nothing left to settle for the old week; a second reconcile records nothing new.
    again = ledger.reconcile(broker, current_week=NEXT)
    assert again.recorded == () and again.abandoned == () and len(ledger.orders()) == 3


def test_reconciling_an_earlier_week_never_gives_up_a_later_weeks_order(ledger: Ledger) -> None:
    later = intent("SOLUSDT", "buy", 5.0, 100, week=NEXT)
    plan(ledger, later, week=NEXT)
    report = ledger.reconcile(StubBroker({}), current_week=WEEK)
    assert report.unsent == (later,) and report.abandoned == ()


def test_the_book_matches_the_paper_account_bit_for_bit(ledger: Ledger, tmp_path: Path) -> None:
    broker = PaperBroker(tmp_path / "paper.duckdb", initial_cash=10_000.0, costs=Costs(10, 5))
    orders = [intent("BTCUSDT", "buy", 0.0123, 40_001.17), intent("ETHUSDT", "buy", 1.37, 2_003.3),
              intent("SOLUSDT", "buy", 7.77, 101.1)]
    plan(ledger, *orders)
    for o in orders:
        ledger.record(broker.submit(o), source="submit")
    sells = [intent("BTCUSDT", "sell", 0.0123 / 3, 41_234.5, week=NEXT), intent("ETHUSDT", "sell", 1.37, 2_100.9, week=NEXT)]
    plan(ledger, *sells, week=NEXT)
    for o in sells:
        ledger.record(broker.submit(o), source="submit")
    positions, cash = ledger.book()
    balances = broker.balances()
    assert cash == balances["USDT"]  # exactly
    assert {s.removesuffix("USDT"): q for s, q in positions.items()} == {a: q for a, q in balances.items() if a != "USDT"}


def test_the_ledger_is_its_own_duckdb_file(ledger: Ledger) -> None:
    con = duckdb.connect(ledger.path, read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    con.close()
    assert tables == set(TABLES)
