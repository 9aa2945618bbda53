"""The `broker` resource: builds the broker the weekly rebalance trades through, and its ledger.

``mode`` picks the broker: ``paper`` (the default) or ``binance_testnet``. The testnet is used
only when configured so explicitly (``REGIME_BROKER=binance_testnet`` for the code location):
API keys being present in the environment is not enough. Its keys are read from
``BINANCE_TESTNET_API_KEY`` / ``BINANCE_TESTNET_API_SECRET`` when the broker is opened, never
stored in the resource's config (which Dagster shows in the UI). There is no live mode.

Files, under ``<data_dir>/<ledger_dir>/`` (``configs/broker.yaml``): the ledger of each mode in
``<mode>.duckdb``, and the paper broker's account in ``paper_exchange.duckdb``. With
``postgres_url`` set (the `cluster` deployment) they are Postgres schemas instead:
``ledger_<mode>`` and ``paper_exchange``, the rebalance lock an advisory lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg

from regime_pipeline.configs import load_yaml

if TYPE_CHECKING:  # imported when opened: the code location loads without ccxt
    from regime_pipeline.core.database import Database
    from regime_pipeline.core.trading.brokers import Broker
    from regime_pipeline.core.trading.ledger import Ledger

BROKER_MODE_ENV = "REGIME_BROKER"
MODES = ("paper", "binance_testnet")


@dataclass(frozen=True)
class Trading:
    """What the resource opens: the broker and the ledger of its mode."""

    broker: Broker
    ledger: Ledger


class BrokerResource(dg.ConfigurableResource):
    """Where the weekly rebalance's orders go, and the book they are recorded in.

    :ivar mode: ``paper`` (simulated fills at the week's open) or ``binance_testnet``
    :ivar data_dir: the project's data directory (the ledger files live under it)
    :ivar api_url: tests only: a local fake Binance (loopback address) the testnet broker talks
        to instead of testnet.binance.vision
    :ivar postgres_url: the cluster's database: the ledger and the paper account live there
        (``postgresql+psycopg2://...``) instead of in files under `data_dir`
    """

    mode: Literal["paper", "binance_testnet"] = "paper"
    data_dir: str
    api_url: str = ""
    postgres_url: str = ""

    def ledger_dir(self) -> Path:
        return Path(self.data_dir) / str(load_yaml("broker")["ledger_dir"])

    def ledger_path(self) -> Path:
        return self.ledger_dir() / f"{self.mode}.duckdb"

    def ledger_database(self) -> Database:
        """Where the ledger of this mode lives: its DuckDB file, or its Postgres schema."""
        from regime_pipeline.core.database import DuckDBFile, PostgresSchema

        if self.postgres_url:
            return PostgresSchema(self.postgres_url, f"ledger_{self.mode}")
        return DuckDBFile(self.ledger_path())

    def paper_account_database(self) -> Database:
        from regime_pipeline.core.database import DuckDBFile, PostgresSchema

        if self.postgres_url:
            return PostgresSchema(self.postgres_url, "paper_exchange")
        return DuckDBFile(self.ledger_dir() / "paper_exchange.duckdb")

    def open(self, log: Any | None = None) -> Trading:
        """Build the configured broker and open its ledger."""
        from regime_pipeline.core.trading.brokers import BinanceTestnetBroker, PaperBroker
        from regime_pipeline.core.trading.ledger import Ledger
        from regime_pipeline.core.allocation.portfolio import Costs

        settings = load_yaml("broker")
        initial_cash = float(settings["initial_cash_usdt"])
        if self.mode == "paper":
            broker: Broker = PaperBroker(
                self.paper_account_database(), initial_cash=initial_cash, costs=Costs.from_config()
            )
        else:
            broker = BinanceTestnetBroker.from_env(sandbox_api_url=self.api_url or None, log=log)
        return Trading(broker=broker, ledger=Ledger(self.ledger_database(), initial_cash=initial_cash))


def broker_from_env(data_dir: str, postgres_url: str = "") -> BrokerResource:
    """The `broker` resource as ``REGIME_BROKER`` selects (default ``paper``)."""
    mode = os.environ.get(BROKER_MODE_ENV, "paper") or "paper"
    if mode not in MODES:
        raise ValueError(f"{BROKER_MODE_ENV}={mode!r}: expected one of {list(MODES)}")
    return BrokerResource(mode=mode, data_dir=data_dir, postgres_url=postgres_url)
