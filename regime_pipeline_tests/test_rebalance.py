"""The weekly rebalance end to end, with the paper broker and with the testnet broker against the
local fake Binance: limits applied and reported, a rerun sends nothing, a crash between the broker
and the ledger is reconciled on restart without sending anything twice, stale data is refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from regime_pipeline.configs import universe
from regime_pipeline.core.trading.brokers import BinanceTestnetBroker, PaperBroker, TestnetSettings
from regime_pipeline.core.trading.ledger import Ledger
from regime_pipeline.core.trading.orders import OrderOutcome, OrderRequest
from regime_pipeline.core.allocation.portfolio import Costs
from regime_pipeline.core.trading.rebalance import rebalance
from regime_pipeline.core.trading.risk import LookAheadError, RiskLimits, StaleDataError
from regime_pipeline_tests.fake_binance import FakeBinance, FakeSpotAccount

SYMBOLS = universe().candidates
W1 = dt.date(2024, 1, 8)  # Mondays
W2 = W1 + dt.timedelta(days=7)
W3 = W2 + dt.timedelta(days=7)
PRICES = dict(zip(SYMBOLS, [40_000.0, 2_000.0, 300.0, 0.5, 0.4, 100.0, 0.08, 0.1, 70.0, 15.0, 6.0, 30.0, 0.12]))
LIMITS = RiskLimits(
    max_weight=0.4, min_cash=0.02, max_turnover=2.0, max_drawdown=0.3, cooldown_weeks=2,
    min_order_notional=10.0, data_lag_days=1,
)
COSTS = Costs(fee_bps=10, slippage_bps=5)
CASH0 = 10_000.0


def weights(**by_base: float) -> np.ndarray:
    """Weights by base asset (``BTC=0.3``), every other asset 0, the rest cash."""
    bases = [universe()[s].base for s in SYMBOLS]
    out = np.zeros(len(SYMBOLS) + 1)
    for base, value in by_base.items():
        out[bases.index(base)] = value
    out[-1] = 1.0 - out.sum()
    return out


def scaled(prices: dict[str, float], factor: float) -> dict[str, float]:
    return {s: p * factor for s, p in prices.items()}


TARGET = weights(BTC=0.5, ETH=0.2, SOL=0.1, DOGE=0.05)


class Book:
    """A paper broker and its ledger on files under one folder; `restart()` reopens them as a
    new process would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.restart()

    def restart(self) -> None:
        self.broker = PaperBroker(self.root / "paper_exchange.duckdb", initial_cash=CASH0, costs=COSTS)
        self.ledger = Ledger(self.root / "paper.duckdb", initial_cash=CASH0)

    def run(self, week: dt.date, target: np.ndarray, prices: dict[str, float] | None = None, **kwargs: object):
        return rebalance(
            week, target, prices or PRICES, week - dt.timedelta(days=1), self.broker, self.ledger, LIMITS,
            costs=COSTS, tag="rp", **kwargs,  # type: ignore[arg-type]
        )

    def paper_orders(self) -> int:
        import duckdb

        con = duckdb.connect(self.broker.path, read_only=True)
        try:
            return con.execute("SELECT count(*) FROM paper_orders").fetchone()[0]
        finally:
            con.close()


@pytest.fixture
def book(tmp_path: Path) -> Book:
    return Book(tmp_path)


class Crash(Exception):
    """Stands for the process dying."""


def crash_after(n: int) -> Callable[[OrderRequest, OrderOutcome], None]:
    """A hook that kills the run after the broker's `n`-th answer, before it is recorded."""
    seen: list[str] = []

    def hook(order: OrderRequest, outcome: OrderOutcome) -> None:
        seen.append(order.client_order_id)
        if len(seen) == n:
            raise Crash(f"died after sending {order.client_order_id}")

    return hook


# -- paper -----------------------------------------------------------------------------------


def test_a_week_is_limited_planned_traded_and_closed(book: Book) -> None:
    result = book.run(W1, TARGET)
    assert result.status == "traded" and result.broker == "paper"
    assert [b.limit for b in result.bound] == ["max_weight_per_asset"]  # BTC 0.5 -> 0.4
    np.testing.assert_allclose(result.weights, weights(BTC=0.4, ETH=0.2, SOL=0.1, DOGE=0.05))
    assert [(o.symbol, o.side, o.status) for o in result.orders] == [
        ("BTCUSDT", "buy", "filled"), ("ETHUSDT", "buy", "filled"), ("SOLUSDT", "buy", "filled"),
        ("DOGEUSDT", "buy", "filled"),
    ]
    assert result.equity_before == CASH0
    # Valued at the reference prices, equity falls by exactly what fees and slippage cost.
    fees = sum(f.fee for f in result.fills)
    slippage = sum(f.quantity * (f.price - PRICES[f.symbol]) for f in result.fills)
    assert result.equity_after == pytest.approx(CASH0 - fees - slippage, abs=1e-9)
    assert result.cash_after == pytest.approx(book.broker.balances()["USDT"], abs=0)
    # Weights reached: the target's, less the cost set aside.
    after = np.array([result.positions_after.get(s, 0.0) * PRICES[s] for s in SYMBOLS]) / result.equity_after
    np.testing.assert_allclose(after, result.weights[:-1], atol=2e-4)
    positions, cash = book.ledger.book()
    assert positions == result.positions_after and cash == result.cash_after
    history = book.ledger.equity_history()
    assert history[["equity_before", "equity_after"]].values.tolist() == [[CASH0, result.equity_after]]
    json.dumps(result.metadata())  # metadata is plain JSON


def test_rerunning_a_week_sends_nothing_and_records_nothing_twice(book: Book) -> None:
    first = book.run(W1, TARGET)
    orders, fills, paper = len(book.ledger.orders()), len(book.ledger.fills()), book.paper_orders()
    book.restart()
    for target in (TARGET, weights(XRP=0.3)):  # even with another target: the week is done
        again = book.run(W1, target)
        assert again.status == "already_done" and again.sent == ()
        assert again.orders == first.orders and again.equity_after == first.equity_after
        np.testing.assert_array_equal(again.weights, first.weights)
    assert (len(book.ledger.orders()), len(book.ledger.fills()), book.paper_orders()) == (orders, fills, paper)


def test_the_next_week_sells_first_and_respects_the_turnover_limit(book: Book) -> None:
    book.run(W1, TARGET)
    limits = dataclasses.replace(LIMITS, max_turnover=0.5)
    result = rebalance(W2, weights(BNB=0.4, LINK=0.3), scaled(PRICES, 1.1), W1 + dt.timedelta(days=6),
                       book.broker, book.ledger, limits, costs=COSTS, tag="rp")
    assert "max_turnover" in [b.limit for b in result.bound]
    assert result.turnover == pytest.approx(0.5)
    sides = [o.side for o in result.orders]
    assert sides == sorted(sides, key=lambda side: side != "sell") and "sell" in sides
    # Equity before W2 = W1's cash and positions at W2's prices.
    held = book.ledger.position_history(W1)
    cash = book.ledger.equity_history()["cash_after"].iloc[0]
    assert result.equity_before == pytest.approx(cash + (held["value"] * 1.1).sum(), rel=1e-12)


def test_a_crash_between_broker_and_ledger_is_reconciled_on_restart(book: Book) -> None:
    with pytest.raises(Crash):
        book.run(W1, TARGET, after_submit=crash_after(2))
    # The broker filled two orders; the ledger knows the plan but only the first outcome.
    assert book.paper_orders() == 2
    assert len(book.ledger.orders()) == 1 and len(book.ledger.open_intents()) == 3
    book.restart()
    result = book.run(W1, TARGET)
    assert result.status == "resumed"
    assert [o.client_order_id for o in result.reconciliation.recorded] == ["rp-20240108-ETHUSDT-b"]
    assert result.sent == ("rp-20240108-SOLUSDT-b", "rp-20240108-DOGEUSDT-b")
    # Every order traded once, recorded once; the ledger's book is the account's, exactly.
    assert book.paper_orders() == 4 and len(book.ledger.orders()) == 4 and len(book.ledger.fills()) == 4
    assert book.ledger.orders()["client_order_id"].is_unique
    positions, cash = book.ledger.book()
    balances = book.broker.balances()
    assert cash == balances["USDT"]
    assert {s.removesuffix("USDT"): q for s, q in positions.items()} == {a: q for a, q in balances.items() if a != "USDT"}
    # The same as a run that never crashed.
    clean = Book(book.root / "clean")
    np.testing.assert_array_equal(clean.run(W1, TARGET).equity_after, result.equity_after)


def test_a_crash_before_an_order_reached_the_broker_sends_it_on_restart(book: Book) -> None:
    class DiesOnThirdSend:
        name = "paper"

        def __init__(self, inner: PaperBroker) -> None:
            self.inner, self.calls = inner, 0

        def submit(self, order: OrderRequest) -> OrderOutcome:
            self.calls += 1
            if self.calls == 3:
                raise Crash("died before sending")
            return self.inner.submit(order)

        def lookup(self, order: OrderRequest) -> OrderOutcome | None:
            return self.inner.lookup(order)

        def balances(self) -> dict[str, float]:
            return self.inner.balances()

    with pytest.raises(Crash):
        rebalance(W1, TARGET, PRICES, W1 - dt.timedelta(days=1), DiesOnThirdSend(book.broker), book.ledger, LIMITS,
                  costs=COSTS, tag="rp")
    book.restart()
    result = book.run(W1, TARGET)
    assert result.reconciliation.recorded == ()  # both sent orders were recorded before the crash
    assert [o.client_order_id for o in result.reconciliation.unsent] == ["rp-20240108-SOLUSDT-b", "rp-20240108-DOGEUSDT-b"]
    assert result.sent == ("rp-20240108-SOLUSDT-b", "rp-20240108-DOGEUSDT-b")
    assert book.paper_orders() == 4 and len(book.ledger.fills()) == 4


def test_an_unfinished_week_is_settled_by_the_next_one(book: Book) -> None:
    with pytest.raises(Crash):
        book.run(W1, TARGET, after_submit=crash_after(1))
    result = book.run(W2, TARGET, scaled(PRICES, 1.05))
    assert [o.client_order_id for o in result.reconciliation.recorded] == ["rp-20240108-BTCUSDT-b"]
    assert {o.client_order_id for o in result.reconciliation.abandoned} == {
        "rp-20240108-ETHUSDT-b", "rp-20240108-SOLUSDT-b", "rp-20240108-DOGEUSDT-b"}
    statuses = book.ledger.orders(W1).set_index("client_order_id")["status"].to_dict()
    assert sorted(statuses.values()) == ["filled", "not_sent", "not_sent", "not_sent"]
    # W2 planned from the real book: the BTC bought in W1 is held.
    assert result.equity_before > 0 and result.status == "traded"
    assert book.paper_orders() == 1 + len(result.orders)
    # W1 is never resumed now.
    again = book.run(W1, TARGET)
    assert again.status == "superseded" and again.sent == ()


def test_stale_or_look_ahead_data_is_refused_before_anything_is_written(book: Book) -> None:
    with pytest.raises(StaleDataError, match=r"week of 2024-01-08 \(Monday\): the latest data is through 2024-01-05"):
        rebalance(W1, TARGET, PRICES, dt.date(2024, 1, 5), book.broker, book.ledger, LIMITS, costs=COSTS, tag="rp")
    with pytest.raises(LookAheadError):
        rebalance(W1, TARGET, PRICES, W1, book.broker, book.ledger, LIMITS, costs=COSTS, tag="rp")
    assert book.ledger.equity_history().empty and book.ledger.intents().empty and book.paper_orders() == 0


def test_the_drawdown_stop_sells_everything_and_holds_cash_for_the_cooldown(book: Book) -> None:
    book.run(W1, weights(BTC=0.4, ETH=0.4))
    crashed = scaled(PRICES, 0.5)  # -50 % on 80 % invested: a 40 % drawdown
    stop = book.run(W2, weights(BTC=0.4, ETH=0.4), crashed)
    assert [b.limit for b in stop.bound] == ["drawdown_stop"] and stop.drawdown.stop
    assert stop.drawdown.drawdown == pytest.approx(0.4, abs=0.01)
    assert {o.side for o in stop.orders} == {"sell"} and stop.positions_after == {}
    np.testing.assert_array_equal(stop.weights, weights())
    held = book.run(W3, weights(BTC=0.4), crashed)  # second week of the cooldown
    assert [b.limit for b in held.bound] == ["drawdown_stop"] and held.orders == ()
    resumed = book.run(W3 + dt.timedelta(days=7), weights(BTC=0.4), crashed)
    assert "drawdown_stop" not in [b.limit for b in resumed.bound] and resumed.orders[0].symbol == "BTCUSDT"
    assert book.ledger.equity_history()["drawdown_stop"].tolist() == [False, True, True, False]


def test_orders_under_the_minimum_notional_are_dropped_and_reported(book: Book) -> None:
    result = book.run(W1, weights(BTC=0.3, ADA=0.0005))  # ADA: ~5 USDT
    assert [o.symbol for o in result.orders] == ["BTCUSDT"]
    assert [(s.symbol, s.side) for s in result.skipped] == [("ADAUSDT", "buy")]
    assert "min_order_notional_usdt" in [b.limit for b in result.bound]
    assert result.metadata()["skipped"][0].startswith("buy ADAUSDT: notional")


def test_bad_requests_are_refused(book: Book) -> None:
    with pytest.raises(ValueError, match="is a Tuesday"):
        book.run(W1 + dt.timedelta(days=1), TARGET)
    with pytest.raises(ValueError, match="SOLUSDT, which cannot be traded at that open"):
        book.run(W1, TARGET, {s: p for s, p in PRICES.items() if s != "SOLUSDT"})
    book.run(W2, TARGET)
    with pytest.raises(ValueError, match="the book only moves forward"):
        book.run(W1, TARGET)


def test_a_second_rebalance_waits_for_the_first(book: Book) -> None:
    from regime_pipeline.core.trading.ledger import LedgerError

    with book.ledger.exclusive():  # another run of the week, still going
        with pytest.raises(LedgerError, match="held by another rebalance"):
            book.run(W1, TARGET, lock_wait_s=0.1)
    assert book.ledger.intents().empty and book.paper_orders() == 0


def test_same_inputs_same_result(tmp_path: Path) -> None:
    a, b = Book(tmp_path / "a"), Book(tmp_path / "b")
    for book in (a, b):
        book.run(W1, TARGET)
        book.run(W2, weights(BNB=0.3, SOL=0.3), scaled(PRICES, 0.97))
    assert a.ledger.fills().equals(b.ledger.fills())
    assert a.ledger.equity_history().equals(b.ledger.equity_history())


# -- testnet against the fake Binance -----------------------------------------------------------

API_KEY, API_SECRET = "rebalance-test-key", "rebalance-test-secret"
SETTINGS = TestnetSettings(
    timeout_ms=800, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02, max_wait_s=10.0,
    max_create_attempts=3, absent_confirmations=2,
)


@pytest.fixture
def exchange() -> Iterator[tuple[FakeBinance, FakeSpotAccount]]:
    account = FakeSpotAccount({"USDT": str(CASH0)}, {s: str(p) for s, p in PRICES.items()},
                              api_key=API_KEY, secret=API_SECRET, commission="0.001")
    with FakeBinance(account=account) as fake:
        yield fake, account


def run_on_testnet(fake: FakeBinance, ledger: Ledger, week: dt.date, target: np.ndarray, **kwargs: object):
    broker = BinanceTestnetBroker(API_KEY, API_SECRET, sandbox_api_url=fake.url, settings=SETTINGS,
                                  sleep=lambda s: None, rng=random.Random(0))
    return rebalance(week, target, PRICES, week - dt.timedelta(days=1), broker, ledger, LIMITS, costs=COSTS, tag="rp",
                     **kwargs)  # type: ignore[arg-type]


def test_testnet_rerun_sends_nothing(exchange: tuple[FakeBinance, FakeSpotAccount], tmp_path: Path) -> None:
    fake, account = exchange
    ledger = Ledger(tmp_path / "binance_testnet.duckdb", initial_cash=CASH0)
    first = run_on_testnet(fake, ledger, W1, TARGET)
    assert first.status == "traded" and first.broker == "binance_testnet"
    assert [o.status for o in first.orders] == ["filled"] * 4
    posts = len([r for r in fake.requests_to("/api/v3/order") if r.method == "POST"])
    assert posts == 4
    # Fees were taken in the base asset: the book holds what the account holds.
    positions, cash = ledger.book()
    for symbol, qty in positions.items():
        assert qty == pytest.approx(float(account.balances[symbol.removesuffix("USDT")]), abs=1e-12)
    assert cash == pytest.approx(float(account.balances["USDT"]), abs=1e-9)
    again = run_on_testnet(fake, ledger, W1, TARGET)
    assert again.status == "already_done" and again.sent == ()
    assert len([r for r in fake.requests_to("/api/v3/order") if r.method == "POST"]) == posts
    assert len(account.orders) == 4 and len(ledger.orders()) == 4


def test_testnet_crash_and_restart_records_the_fill_once_and_resends_nothing(
    exchange: tuple[FakeBinance, FakeSpotAccount], tmp_path: Path
) -> None:
    fake, account = exchange
    path = tmp_path / "binance_testnet.duckdb"
    with pytest.raises(Crash):
        run_on_testnet(fake, Ledger(path, initial_cash=CASH0), W1, TARGET, after_submit=crash_after(2))
    assert len(account.orders) == 2
    result = run_on_testnet(fake, Ledger(path, initial_cash=CASH0), W1, TARGET)
    assert result.status == "resumed"
    assert [o.client_order_id for o in result.reconciliation.recorded] == ["rp-20240108-ETHUSDT-b"]
    recovered = result.reconciliation.recorded[0]
    assert recovered.fills and recovered.fills[0].fee_asset == "ETH"  # fees from the looked-up trades
    assert all(len(account.orders_for(o.client_order_id)) == 1 for o in result.orders)
    assert len(account.orders) == 4 and len(Ledger(path, initial_cash=CASH0).fills()) == 4


def test_testnet_insufficient_balance_rejects_orders_not_the_rebalance(tmp_path: Path) -> None:
    # The account holds less than the book believes: some buys are refused by the exchange.
    account = FakeSpotAccount({"USDT": "4500"}, {s: str(p) for s, p in PRICES.items()}, api_key=API_KEY, secret=API_SECRET)
    with FakeBinance(account=account) as fake:
        result = run_on_testnet(fake, Ledger(tmp_path / "t.duckdb", initial_cash=CASH0), W1, TARGET)
    statuses = [(o.symbol, o.status) for o in result.orders]
    assert statuses[0] == ("BTCUSDT", "filled") and ("ETHUSDT", "rejected") in statuses
    assert result.status == "traded" and result.equity_after is not None
    assert any("insufficient balance" in line for line in result.metadata()["rejected"])
