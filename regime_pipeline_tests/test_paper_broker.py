"""The paper broker: hand-computed fills with fees and slippage, cash never negative, idempotent
by client order id, and an account that survives a restart."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from regime_pipeline.core.trading.brokers import Broker, PaperBroker
from regime_pipeline.core.trading.orders import OrderRequest
from regime_pipeline.core.allocation.portfolio import Costs

WEEK = dt.date(2024, 1, 8)
COSTS = Costs(fee_bps=10, slippage_bps=5)  # configs/backtest.yaml's values


def order(symbol: str, side: str, qty: float, price: float, cid: str | None = None) -> OrderRequest:
    return OrderRequest(cid or f"t-{symbol}-{side}", WEEK, symbol, side, qty, price)  # type: ignore[arg-type]


@pytest.fixture
def broker(tmp_path: Path) -> PaperBroker:
    return PaperBroker(tmp_path / "paper.duckdb", initial_cash=10_000.0, costs=COSTS)


def test_it_is_a_broker_with_the_configured_costs(tmp_path: Path) -> None:
    default = PaperBroker(tmp_path / "p.duckdb", initial_cash=1.0)
    assert isinstance(default, Broker)
    assert (default.costs.fee_bps, default.costs.slippage_bps) == (10.0, 5.0)


def test_buy_then_sell_hand_computed(broker: PaperBroker) -> None:
    bought = broker.submit(order("BTCUSDT", "buy", 0.1, 40_000.0))
    # 40,000 x 1.0005 = 40,020; 0.1 BTC = 4,002 USDT; fee 10 bps = 4.002
    assert bought.status == "filled" and bought.filled_qty == 0.1
    (fill,) = bought.fills
    assert fill.price == pytest.approx(40_020.0, rel=1e-15)
    assert fill.quote_qty == pytest.approx(4_002.0, rel=1e-15)
    assert (fill.fee, fill.fee_asset) == (pytest.approx(4.002, rel=1e-15), "USDT")
    assert broker.balances() == {"BTC": 0.1, "USDT": pytest.approx(5_993.998, abs=1e-9)}

    sold = broker.submit(order("BTCUSDT", "sell", 0.05, 42_000.0))
    # 42,000 x 0.9995 = 41,979; 0.05 BTC = 2,098.95 USDT; fee 2.09895
    (fill,) = sold.fills
    assert fill.price == pytest.approx(41_979.0, rel=1e-15)
    assert fill.quote_qty == pytest.approx(2_098.95, rel=1e-15)
    assert fill.fee == pytest.approx(2.09895, rel=1e-15)
    assert broker.balances() == {"BTC": pytest.approx(0.05), "USDT": pytest.approx(8_090.84905, abs=1e-9)}


def test_a_buy_beyond_the_cash_is_scaled_down_and_cash_never_goes_negative(tmp_path: Path) -> None:
    broker = PaperBroker(tmp_path / "p.duckdb", initial_cash=1_000.0, costs=COSTS)
    outcome = broker.submit(order("BTCUSDT", "buy", 1.0, 40_000.0))
    assert outcome.status == "filled" and "scaled down from 1.0" in outcome.reason
    assert outcome.requested_qty == 1.0
    assert outcome.filled_qty == pytest.approx(1_000.0 / (40_020.0 * 1.001), rel=1e-12)
    cash = broker.balances().get("USDT", 0.0)
    assert 0.0 <= cash < 1e-9
    # With no cash left, a further buy is rejected rather than filled at zero.
    broke = PaperBroker(tmp_path / "broke.duckdb", initial_cash=1.0, costs=COSTS)
    broke.submit(order("ETHUSDT", "buy", 1.0, 1.0, cid="a"))
    rejected = broke.submit(order("ETHUSDT", "buy", 1.0, 1.0, cid="b"))
    assert rejected.status == "rejected" and "insufficient balance" in rejected.reason
    assert rejected.fills == ()


def test_selling_more_than_held_is_rejected_but_float_dust_sells_the_holding(broker: PaperBroker) -> None:
    broker.submit(order("SOLUSDT", "buy", 3.0, 100.0))
    rejected = broker.submit(order("SOLUSDT", "sell", 3.5, 100.0))
    assert rejected.status == "rejected" and "insufficient balance: 3.0 SOL held" in rejected.reason
    dust = broker.submit(order("SOLUSDT", "sell", 3.0 * (1 + 1e-12), 100.0, cid="dust"))
    assert dust.status == "filled" and dust.filled_qty == 3.0
    assert "SOL" not in broker.balances()


def test_the_same_client_order_id_never_fills_twice(broker: PaperBroker) -> None:
    first = broker.submit(order("ETHUSDT", "buy", 1.0, 2_000.0))
    balances = broker.balances()
    again = broker.submit(order("ETHUSDT", "buy", 1.0, 2_100.0))  # even with another price
    assert again == first
    assert broker.balances() == balances
    assert broker.lookup(order("ETHUSDT", "buy", 1.0, 2_000.0)) == first
    assert broker.lookup(order("ETHUSDT", "buy", 1.0, 2_000.0, cid="never-sent")) is None


def test_the_account_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "p.duckdb"
    first = PaperBroker(path, initial_cash=10_000.0, costs=COSTS)
    filled = first.submit(order("BTCUSDT", "buy", 0.1, 40_000.0))
    restarted = PaperBroker(path, initial_cash=99.0, costs=COSTS)  # the opening cash is paid in once
    assert restarted.balances() == first.balances()
    assert restarted.lookup(order("BTCUSDT", "buy", 0.1, 40_000.0)) == filled
    assert restarted.submit(order("BTCUSDT", "buy", 0.1, 40_000.0)) == filled
