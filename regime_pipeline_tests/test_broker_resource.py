"""The `broker` resource: paper by default, the testnet only when asked for explicitly, keys from
the environment only, one ledger per mode, and an asset that rebalances through it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from regime_pipeline.configs import universe
from regime_pipeline.core.trading.brokers import BinanceTestnetBroker, BrokerError, PaperBroker, SandboxViolation
from regime_pipeline.core.trading.rebalance import rebalance
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.broker import BrokerResource, broker_from_env
from regime_pipeline_tests.fake_binance import FakeBinance, FakeSpotAccount

KEYS = {"BINANCE_TESTNET_API_KEY": "resource-test-key", "BINANCE_TESTNET_API_SECRET": "resource-test-secret"}
WEEK = dt.date(2024, 1, 8)


def test_paper_is_the_default_and_keeps_its_files_under_the_data_dir(tmp_path: Path) -> None:
    trading = BrokerResource(data_dir=str(tmp_path)).open()
    assert isinstance(trading.broker, PaperBroker)
    assert Path(trading.ledger.path) == tmp_path / "ledger" / "paper.duckdb"
    assert Path(trading.broker.path) == tmp_path / "ledger" / "paper_exchange.duckdb"
    assert trading.ledger.cash() == 10_000.0 and trading.broker.balances() == {"USDT": 10_000.0}  # configs/broker.yaml


def test_keys_in_the_environment_do_not_switch_to_the_testnet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REGIME_BROKER", raising=False)
    assert broker_from_env(str(tmp_path)).mode == "paper"
    assert build_resources(str(tmp_path))["broker"].mode == "paper"
    monkeypatch.setenv("REGIME_BROKER", "binance_testnet")
    assert broker_from_env(str(tmp_path)).mode == "binance_testnet"
    monkeypatch.setenv("REGIME_BROKER", "binance_live")
    with pytest.raises(ValueError, match="REGIME_BROKER='binance_live': expected one of"):
        broker_from_env(str(tmp_path))


def test_the_testnet_mode_needs_the_keys_and_never_shows_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)
    resource = BrokerResource(mode="binance_testnet", data_dir=str(tmp_path))
    with pytest.raises(BrokerError, match="BINANCE_TESTNET_API_KEY, BINANCE_TESTNET_API_SECRET"):
        resource.open()
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    trading = resource.open()
    assert isinstance(trading.broker, BinanceTestnetBroker)
    assert trading.broker.api_url == "https://testnet.binance.vision/api/v3"
    assert Path(trading.ledger.path) == tmp_path / "ledger" / "binance_testnet.duckdb"
    shown = repr(resource) + repr(trading) + str(resource.model_dump())
    assert all(value not in shown for value in KEYS.values())
    with pytest.raises(SandboxViolation):
        BrokerResource(mode="binance_testnet", data_dir=str(tmp_path), api_url="https://api.binance.com").open()


def test_an_asset_rebalances_through_the_resource(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    symbols = universe().candidates
    prices = dict(zip(symbols, [40_000.0, 2_000.0, 300.0, 0.5, 0.4, 100.0, 0.08, 0.1, 70.0, 15.0, 6.0, 30.0, 0.12]))
    target = np.zeros(len(symbols) + 1)
    target[[0, 1, -1]] = [0.3, 0.3, 0.4]

    @dg.asset
    def rebalanced(context, broker: BrokerResource) -> dg.MaterializeResult:  # noqa: ANN001 - dagster's context
        trading = broker.open(log=context.log)
        result = rebalance(WEEK, target, prices, WEEK - dt.timedelta(days=1), trading.broker, trading.ledger,
                           log=context.log)
        return dg.MaterializeResult(metadata=result.metadata())

    account = FakeSpotAccount({"USDT": "10000"}, {s: str(p) for s, p in prices.items()},
                              api_key=KEYS["BINANCE_TESTNET_API_KEY"], secret=KEYS["BINANCE_TESTNET_API_SECRET"])
    assert dg.materialize([rebalanced], resources={"broker": BrokerResource(data_dir=str(tmp_path))}).success
    with FakeBinance(account=account) as fake:
        testnet = BrokerResource(mode="binance_testnet", data_dir=str(tmp_path), api_url=fake.url)
        for _ in range(2):  # the second run finds the week done
            outcome = dg.materialize([rebalanced], resources={"broker": testnet})
            assert outcome.success
    metadata = outcome.asset_materializations_for_node("rebalanced")[0].metadata
    assert metadata["status"].value == "already_done" and metadata["orders"].value == 2
    assert len(account.orders) == 2
    # Each mode kept its own book.
    assert {p.name for p in (tmp_path / "ledger").glob("*.duckdb")} == {
        "paper.duckdb", "paper_exchange.duckdb", "binance_testnet.duckdb"}


def test_the_code_location_has_the_broker_resource() -> None:
    from regime_pipeline.definitions import defs

    dg.Definitions.validate_loadable(defs)
    assert isinstance(defs.resources["broker"], BrokerResource)
