"""The Binance testnet broker: the real ccxt client against a local fake Binance that trades.

Accepted, rejected (insufficient balance), rate-limited then accepted, Binance's duplicate
answer, a timeout on an order that was placed (looked up, not resent), a reused id of a filled
order (never traded twice), sandbox-only endpoints, keys kept out of logs, reprs and errors.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Iterator
from decimal import Decimal

import ccxt
import pytest

from regime_pipeline.core.trading.brokers import BinanceTestnetBroker, Broker, BrokerError, SandboxViolation, TestnetSettings
from regime_pipeline.core.trading.brokers import binance_testnet
from regime_pipeline.core.trading.orders import OrderRequest
from regime_pipeline.core.data.sources.ccxt_source import point_at
from regime_pipeline_tests.fake_binance import (
    ORDER_DOES_NOT_EXIST,
    FakeBinance,
    FakeSpotAccount,
    Scripted,
    lost_response,
    rate_limited,
    unavailable,
)

ORDER = "/api/v3/order"
WEEK = dt.date(2024, 1, 8)
API_KEY = "tEsTkEy0123456789abcdefGHIJKLMNOPqrstuvwxyz"
API_SECRET = "sEcReT9876543210zyxwvuTSRQPONMlkjihgfedcba"
SETTINGS = TestnetSettings(
    timeout_ms=800, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05, max_wait_s=60.0,
    max_create_attempts=3, absent_confirmations=2,
)


def order(symbol: str = "BTCUSDT", side: str = "buy", qty: float = 0.0123456, price: float = 40_000.0) -> OrderRequest:
    return OrderRequest(f"rp-{WEEK:%Y%m%d}-{symbol}-{side[0]}", WEEK, symbol, side, qty, price)  # type: ignore[arg-type]


def make_account(**kwargs: object) -> FakeSpotAccount:
    return FakeSpotAccount(
        balances={"USDT": "10000", "ETH": "2"},
        prices={"BTCUSDT": "40000", "ETHUSDT": "2000", "SOLUSDT": "100"},
        api_key=API_KEY, secret=API_SECRET, commission="0.001", **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def account() -> FakeSpotAccount:
    return make_account()


@pytest.fixture
def fake(account: FakeSpotAccount) -> Iterator[FakeBinance]:
    with FakeBinance(account=account) as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_broker(fake: FakeBinance, sleeps: list[float], **kwargs: object) -> BinanceTestnetBroker:
    options = {"sandbox_api_url": fake.url, "settings": SETTINGS, "sleep": sleeps.append, "rng": random.Random(0)}
    options.update(kwargs)
    return BinanceTestnetBroker(API_KEY, API_SECRET, **options)  # type: ignore[arg-type]


def posts(fake: FakeBinance) -> list[object]:
    return [r for r in fake.requests_to(ORDER) if r.method == "POST"]


# -- orders ---------------------------------------------------------------------------------


def test_a_market_order_is_filled_rounded_to_the_lot_size_with_its_fee(
    fake: FakeBinance, account: FakeSpotAccount, sleeps: list[float]
) -> None:
    broker = make_broker(fake, sleeps)
    assert isinstance(broker, Broker)
    outcome = broker.submit(order(qty=0.0123456))
    assert outcome.status == "filled" and outcome.requested_qty == 0.01234  # BTCUSDT step 0.00001
    assert outcome.filled_qty == 0.01234 and outcome.avg_price == 40_000.0
    (fill,) = outcome.fills
    assert (fill.quantity, fill.price, fill.quote_qty) == (0.01234, 40_000.0, pytest.approx(493.6))
    assert (fill.fee, fill.fee_asset) == (pytest.approx(0.00001234), "BTC")  # Binance: a buy's fee in base
    assert account.balances["BTC"] == Decimal("0.01232766") and account.balances["USDT"] == Decimal("9506.4")
    # Looked up first (unknown), then one signed POST carrying the client order id.
    assert [(r.method, r.path) for r in fake.requests if r.path == ORDER] == [("GET", ORDER), ("POST", ORDER)]
    (post,) = posts(fake)
    assert post.params["newClientOrderId"] == "rp-20240108-BTCUSDT-b"
    assert (post.params["type"], post.params["side"], post.params["quantity"]) == ("MARKET", "BUY", "0.01234")
    assert {"timestamp", "recvWindow", "signature"} <= set(post.params)
    assert post.headers["x-mbx-apikey"] == API_KEY


def test_a_looked_up_order_gets_its_fees_from_its_trades(fake: FakeBinance, sleeps: list[float]) -> None:
    broker = make_broker(fake, sleeps)
    placed = broker.submit(order("ETHUSDT", "sell", 1.5, 2_000.0))
    found = broker.lookup(order("ETHUSDT", "sell", 1.5, 2_000.0))
    assert found == placed
    assert [(f.fee, f.fee_asset) for f in found.fills] == [(pytest.approx(3.0), "USDT")]  # a sell's fee in quote
    assert fake.requests_to("/api/v3/myTrades")


def test_insufficient_balance_is_a_rejected_order_not_a_crash(
    fake: FakeBinance, account: FakeSpotAccount, sleeps: list[float]
) -> None:
    broker = make_broker(fake, sleeps)
    rejected = broker.submit(order(qty=1.0))  # 40,000 USDT with 10,000
    assert rejected.status == "rejected" and rejected.fills == () and rejected.exchange_order_id is None
    assert "insufficient balance" in rejected.reason and "Account has insufficient balance" in rejected.reason
    assert account.orders == [] and len(posts(fake)) == 1  # refused once, not retried
    assert broker.submit(order("SOLUSDT", qty=10.0, price=100.0)).status == "filled"  # the next one goes on


def test_a_rate_limited_order_waits_as_told_then_goes_through(
    fake: FakeBinance, account: FakeSpotAccount, sleeps: list[float]
) -> None:
    fake.script(ORDER, rate_limited(retry_after_s=3), method="POST")
    outcome = make_broker(fake, sleeps).submit(order())
    assert outcome.status == "filled"
    assert sleeps[0] == 3.0  # Retry-After honoured
    assert len(posts(fake)) == 2 and len(account.orders_for(order().client_order_id)) == 1
    # Looked up between the refusal and the resend.
    methods = [r.method for r in fake.requests_to(ORDER)]
    assert methods[:2] == ["GET", "POST"] and methods[-1] == "POST" and "GET" in methods[2:-1]


def test_binance_duplicate_answer_returns_the_existing_order(sleeps: list[float], caplog: pytest.LogCaptureFixture) -> None:
    account = make_account(duplicate_ids="any")
    with FakeBinance(account=account) as fake:
        broker = make_broker(fake, sleeps)
        first = broker.submit(order())
        # The next lookup misses (the first order still in flight, say): the POST is answered
        # "Duplicate order sent." and the broker fetches the existing order instead.
        fake.script(ORDER, Scripted(status=400, body=ORDER_DOES_NOT_EXIST), method="GET")
        with caplog.at_level(logging.WARNING, logger=binance_testnet.__name__):
            again = broker.submit(order())
        assert [r.method for r in fake.requests_to(ORDER)][-3:] == ["GET", "POST", "GET"]
    assert "Binance answers 'Duplicate order sent.'" in caplog.text
    assert again == first and len(account.orders_for(order().client_order_id)) == 1


def test_a_timeout_on_an_order_that_was_placed_is_looked_up_not_resent(
    fake: FakeBinance, account: FakeSpotAccount, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(ORDER, lost_response(hold_s=2.0), method="POST")  # placed, answer never arrives in time
    with caplog.at_level(logging.INFO, logger=binance_testnet.__name__):
        outcome = make_broker(fake, sleeps).submit(order())
    assert outcome.status == "filled" and outcome.filled_qty == 0.01234
    assert len(posts(fake)) == 1 and len(account.orders_for(order().client_order_id)) == 1
    assert "RequestTimeout, outcome unknown; looking it up" in caplog.text
    assert "placed after all (filled); not resent" in caplog.text
    assert [(f.fee, f.fee_asset) for f in outcome.fills] == [(pytest.approx(0.00001234), "BTC")]


def test_an_order_that_never_reached_the_exchange_is_resent_with_the_same_id(
    fake: FakeBinance, account: FakeSpotAccount, sleeps: list[float]
) -> None:
    fake.script(ORDER, unavailable(503), method="POST")  # the edge refused it: nothing placed
    outcome = make_broker(fake, sleeps).submit(order())
    assert outcome.status == "filled"
    sent = posts(fake)
    assert len(sent) == 2 and {r.params["newClientOrderId"] for r in sent} == {order().client_order_id}
    assert len(account.orders_for(order().client_order_id)) == 1
    # Two lookups missed (absent_confirmations) before the resend.
    assert [r.method for r in fake.requests_to(ORDER)] == ["GET", "POST", "GET", "GET", "POST"]


def test_reusing_the_id_of_a_filled_order_never_trades_twice(
    fake: FakeBinance, account: FakeSpotAccount, sleeps: list[float]
) -> None:
    # Binance (and the fake) accept a reused newClientOrderId once the first order is filled...
    raw = ccxt.binance({"apiKey": API_KEY, "secret": API_SECRET})
    raw.set_sandbox_mode(True)
    point_at(raw, fake.url)
    raw.create_order("SOL/USDT", "market", "buy", 1.0, None, {"newClientOrderId": "reuse-me"})
    raw.create_order("SOL/USDT", "market", "buy", 1.0, None, {"newClientOrderId": "reuse-me"})
    assert len(account.orders_for("reuse-me")) == 2
    # ... so the broker looks the id up before every send.
    broker = make_broker(fake, sleeps)
    first = broker.submit(order())
    assert broker.submit(order()) == first
    assert make_broker(fake, sleeps).submit(order()) == first  # a fresh process too
    assert len(account.orders_for(order().client_order_id)) == 1


def test_orders_under_the_pairs_minimum_are_rejected_without_being_sent(fake: FakeBinance, sleeps: list[float]) -> None:
    broker = make_broker(fake, sleeps)
    tiny = broker.submit(order(qty=0.0001))  # 4 USDT < 5 USDT NOTIONAL filter
    assert tiny.status == "rejected" and "under the pair's minimum of 5.0 USDT" in tiny.reason
    dust = broker.submit(order(qty=0.000001))  # rounds to 0 at the 0.00001 step
    assert dust.status == "rejected" and dust.reason.startswith("not sent")
    assert posts(fake) == []


def test_reads_are_retried_with_backoff(fake: FakeBinance, sleeps: list[float]) -> None:
    fake.script(ORDER, unavailable(503), unavailable(500, {"code": -1001, "msg": "Internal error"}), method="GET")
    assert make_broker(fake, sleeps).lookup(order()) is None
    assert len(sleeps) == 2 and all(0 < s <= SETTINGS.backoff_max_s for s in sleeps)
    assert len(fake.requests_to(ORDER)) == 3


def test_balances(fake: FakeBinance, sleeps: list[float]) -> None:
    assert make_broker(fake, sleeps).balances() == {"USDT": 10_000.0, "ETH": 2.0}


def test_the_fake_checks_signatures(fake: FakeBinance, sleeps: list[float]) -> None:
    broker = BinanceTestnetBroker(API_KEY, "not-the-secret", sandbox_api_url=fake.url, settings=SETTINGS, sleep=sleeps.append)
    with pytest.raises(BrokerError, match="Signature for this request is not valid"):
        broker.submit(order())
    assert posts(fake) == []


# -- sandbox only ---------------------------------------------------------------------------------


def test_the_default_endpoint_is_the_testnet() -> None:
    broker = BinanceTestnetBroker(API_KEY, API_SECRET, settings=SETTINGS)
    assert broker.api_url == "https://testnet.binance.vision/api/v3"


@pytest.mark.parametrize("url", ["https://api.binance.com", "https://api1.binance.com/api/v3", "http://10.0.0.5:8080"])
def test_a_non_local_url_is_refused(url: str) -> None:
    with pytest.raises(SandboxViolation, match="not a local server"):
        BinanceTestnetBroker(API_KEY, API_SECRET, sandbox_api_url=url, settings=SETTINGS)


def test_a_client_not_in_sandbox_mode_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if ccxt's sandbox switch did nothing: the endpoints stay api.binance.com.
    monkeypatch.setattr(binance_testnet._SandboxedBinance, "set_sandbox_mode", lambda self, enabled: None)
    with pytest.raises(SandboxViolation, match=r"'public' endpoint is 'https://api.binance.com/api/v3', not a sandbox"):
        BinanceTestnetBroker(API_KEY, API_SECRET, settings=SETTINGS)


def test_production_cannot_be_reached_even_if_the_urls_change_later(fake: FakeBinance, sleeps: list[float]) -> None:
    broker = make_broker(fake, sleeps)
    exchange = broker._exchange
    exchange.urls = {**exchange.urls, "api": {**exchange.urls["api"], "private": "https://api.binance.com/api/v3"}}
    with pytest.raises(SandboxViolation, match=r"refusing GET https://api.binance.com/api/v3/order: not a sandbox"):
        broker.submit(order())
    assert fake.requests_to(ORDER) == []


# -- keys -----------------------------------------------------------------------------------------


def test_keys_never_appear_in_logs_reprs_or_errors(
    fake: FakeBinance, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        broker = make_broker(fake, sleeps)
        broker.submit(order())
        broker.submit(order(qty=1.0, side="buy", symbol="ETHUSDT", price=2_000.0))  # rejected
        fake.script(ORDER, rate_limited(1), method="POST")
        broker.submit(order("SOLUSDT", qty=1.0, price=100.0))
        broker.balances()
        wrong = BinanceTestnetBroker("wrong-key", API_SECRET, sandbox_api_url=fake.url, settings=SETTINGS)
        with pytest.raises(BrokerError) as info:
            wrong.submit(order())
        errors.append(str(info.value))
        errors.append(repr(info.value.__cause__))
        for url in ("https://api.binance.com", None):
            try:
                BinanceTestnetBroker(API_KEY, API_SECRET, sandbox_api_url=url, settings=SETTINGS, log=logging.getLogger("x"))
            except SandboxViolation as exc:
                errors.append(str(exc))
    # ccxt's debug lines (request headers included) were captured, masked.
    assert "X-MBX-APIKEY" in caplog.text and "***" in caplog.text
    texts = [caplog.text, repr(broker), str(vars(broker)), *errors]
    for text in texts:
        assert API_KEY not in text and API_SECRET not in text
    assert "Invalid API-key" in errors[0]


def test_keys_come_from_the_environment(fake: FakeBinance, sleeps: list[float]) -> None:
    with pytest.raises(BrokerError, match="BINANCE_TESTNET_API_KEY, BINANCE_TESTNET_API_SECRET") as info:
        BinanceTestnetBroker.from_env({}, settings=SETTINGS)
    with pytest.raises(BrokerError, match="BINANCE_TESTNET_API_SECRET") as info:
        BinanceTestnetBroker.from_env({"BINANCE_TESTNET_API_KEY": API_KEY}, settings=SETTINGS)
    assert API_KEY not in str(info.value)
    env = {"BINANCE_TESTNET_API_KEY": API_KEY, "BINANCE_TESTNET_API_SECRET": API_SECRET}
    broker = BinanceTestnetBroker.from_env(env, sandbox_api_url=fake.url, settings=SETTINGS, sleep=sleeps.append)
    assert broker.submit(order()).status == "filled"
    assert repr(broker) == f"BinanceTestnetBroker(api_url='{fake.url}/api/v3')"


def test_settings_come_from_the_config() -> None:
    settings = TestnetSettings.from_config()
    assert settings.max_create_attempts >= 1 and settings.absent_confirmations >= 1 and settings.timeout_ms > 0
