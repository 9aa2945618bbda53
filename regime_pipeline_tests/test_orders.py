"""Order planning: deterministic Binance-valid client ids, sizes as the backtest trades, sells
first, the minimum notional."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from regime_pipeline.configs import universe
from regime_pipeline.core.trading.orders import CLIENT_ORDER_ID_RE, client_order_id, current_weights, plan_orders

WEEK = dt.date(2024, 1, 8)
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
PRICES = {"BTCUSDT": 40_000.0, "ETHUSDT": 2_000.0, "SOLUSDT": 100.0}


def test_client_order_ids_are_deterministic_distinct_and_valid_for_binance() -> None:
    assert client_order_id(WEEK, "BTCUSDT", "buy", "rp") == "rp-20240108-BTCUSDT-b"
    assert client_order_id(WEEK, "BTCUSDT", "buy", "rp") == client_order_id(WEEK, "BTCUSDT", "buy", "rp")
    ids = {
        client_order_id(week, symbol, side, tag)
        for week in (WEEK, WEEK + dt.timedelta(days=7))
        for symbol in universe().candidates
        for side in ("buy", "sell")
        for tag in ("rp", "abcdefgh")
    }
    assert len(ids) == 2 * 13 * 2 * 2
    assert all(CLIENT_ORDER_ID_RE.match(i) and len(i) <= 36 for i in ids)


@pytest.mark.parametrize("tag", ["", "has space", "way-too-long-tag", "a_b"])
def test_a_tag_that_would_break_the_id_is_refused(tag: str) -> None:
    with pytest.raises(ValueError, match="tag must be 1-8 letters or digits"):
        client_order_id(WEEK, "BTCUSDT", "buy", tag)


def test_current_weights_value_positions_and_cash() -> None:
    weights, equity = current_weights(SYMBOLS, {"BTCUSDT": 0.1, "SOLUSDT": 10.0}, 5_000.0, PRICES)
    assert equity == 10_000.0
    np.testing.assert_allclose(weights, [0.4, 0.0, 0.1, 0.5])
    with pytest.raises(ValueError, match="ETHUSDT: 1.0 held but no price"):
        current_weights(SYMBOLS, {"ETHUSDT": 1.0}, 100.0, {"BTCUSDT": 1.0})


def test_orders_are_sized_as_the_backtest_trades_and_sells_come_first() -> None:
    positions = {"BTCUSDT": 0.1, "SOLUSDT": 10.0}  # 4,000 + 1,000 and 5,000 cash: equity 10,000
    target = np.array([0.1, 0.5, 0.0, 0.4])  # BTC 0.4 -> 0.1, ETH 0 -> 0.5, SOL 0.1 -> 0
    plan = plan_orders(WEEK, target, SYMBOLS, positions, 5_000.0, PRICES, cost_rate=0.0015, min_notional=10, tag="rp")
    assert plan.turnover == pytest.approx(0.3 + 0.5 + 0.1)
    investable = 10_000 * (1 - 0.0015 * 0.9)  # the cost set aside first, as portfolio.simulate
    assert plan.expected_cost == pytest.approx(10_000 * 0.0015 * 0.9)
    got = [(o.side, o.symbol, o.quantity, o.client_order_id) for o in plan.orders]
    assert got == [
        ("sell", "BTCUSDT", pytest.approx(0.1 - 0.1 * investable / 40_000), "rp-20240108-BTCUSDT-s"),
        ("sell", "SOLUSDT", 10.0, "rp-20240108-SOLUSDT-s"),  # a zero target sells exactly what is held
        ("buy", "ETHUSDT", pytest.approx(0.5 * investable / 2_000), "rp-20240108-ETHUSDT-b"),
    ]
    assert all(o.price == PRICES[o.symbol] and o.week == WEEK for o in plan.orders)
    assert plan.skipped == ()


def test_orders_below_the_minimum_notional_are_dropped_and_reported() -> None:
    positions = {"BTCUSDT": 0.1}  # 4,000 of 10,000
    target = np.array([0.4003, 0.0005, 0.0, 0.5992])  # BTC +~3 USDT, ETH +5 USDT
    plan = plan_orders(WEEK, target, SYMBOLS, positions, 6_000.0, PRICES, cost_rate=0.0, min_notional=10, tag="rp")
    assert plan.orders == ()
    assert [(s.side, s.symbol) for s in plan.skipped] == [("buy", "BTCUSDT"), ("buy", "ETHUSDT")]
    assert plan.skipped[1].notional == pytest.approx(5.0)
    assert "below the 10 USDT minimum" in plan.skipped[1].reason
    # The same ETH order passes with a lower minimum.
    plan = plan_orders(WEEK, target, SYMBOLS, positions, 6_000.0, PRICES, cost_rate=0.0, min_notional=4, tag="rp")
    assert [o.symbol for o in plan.orders] == ["ETHUSDT"]


def test_a_weight_on_an_asset_without_price_is_refused() -> None:
    prices = {"BTCUSDT": 40_000.0, "ETHUSDT": float("nan")}
    with pytest.raises(ValueError, match="ETHUSDT, which has no price"):
        plan_orders(WEEK, np.array([0.0, 0.5, 0.0, 0.5]), SYMBOLS, {}, 1_000.0, prices,
                    cost_rate=0.0, min_notional=10, tag="rp")
    # No price and no weight is fine (an asset not listed yet).
    plan = plan_orders(WEEK, np.array([0.5, 0.0, 0.0, 0.5]), SYMBOLS, {}, 1_000.0, prices,
                       cost_rate=0.0, min_notional=10, tag="rp")
    assert [o.symbol for o in plan.orders] == ["BTCUSDT"]
