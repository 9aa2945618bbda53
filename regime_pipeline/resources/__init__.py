"""Dagster resources: storage, the warehouse IO manager, market data sources, the broker.

:func:`build_resources` is the one place resources are assembled, for the code location
(from environment variables) and for tests (from arguments). The deployment profile
(:mod:`~regime_pipeline.resources.deployment`, ``REGIME_DEPLOYMENT``) swaps what is under the
same assets: DuckDB files and a local folder, or Postgres and object storage.
"""

from __future__ import annotations

import os
from typing import Any

from regime_pipeline.configs import PROJECT_ROOT
from regime_pipeline.resources.artifacts import JsonArtifactIOManager
from regime_pipeline.resources.broker import BrokerResource, broker_from_env
from regime_pipeline.resources.deployment import Deployment, deployment_from_env
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.storage import ProjectStorage
from regime_pipeline.resources.warehouse import DuckDBTableIOManager


def default_data_dir() -> str:
    """``$REGIME_DATA_DIR``, else ``data/`` in the project root."""
    return os.environ.get("REGIME_DATA_DIR") or str(PROJECT_ROOT / "data")


def market_data_from_env() -> MarketData:
    """The `market_data` resource as selected by ``REGIME_MARKET_DATA`` (default ``embedded``)."""
    return MarketData(
        source=os.environ.get("REGIME_MARKET_DATA", "embedded"),
        files_dir=os.environ.get("REGIME_FILES_DIR", ""),
        api_url=os.environ.get("REGIME_BINANCE_API_URL", ""),
    )


def build_resources(
    data_dir: str | None = None,
    market_data: MarketData | None = None,
    broker: BrokerResource | None = None,
    deployment: Deployment | None = None,
) -> dict[str, Any]:
    deployment = deployment or deployment_from_env()
    data_dir = data_dir or default_data_dir()
    if not deployment.cluster:
        storage = ProjectStorage(data_dir=data_dir)
        return {
            "io_manager": DuckDBTableIOManager(database=storage.warehouse),
            "model_io_manager": JsonArtifactIOManager(root=str(storage.models_dir)),
            "storage": storage,
            "market_data": market_data or market_data_from_env(),
            "broker": broker or broker_from_env(storage.data_dir),
        }
    from regime_pipeline.resources.warehouse_postgres import PostgresTableIOManager

    deployment.check_data_dir(data_dir)
    storage = ProjectStorage(
        data_dir=data_dir, postgres_url=deployment.postgres_url, s3_endpoint_url=deployment.s3_endpoint_url
    )
    return {
        "io_manager": PostgresTableIOManager(url=deployment.postgres_url),
        "model_io_manager": JsonArtifactIOManager(
            root=f"{data_dir.rstrip('/')}/models", s3_endpoint_url=deployment.s3_endpoint_url
        ),
        "storage": storage,
        "market_data": market_data or market_data_from_env(),
        "broker": broker or broker_from_env(data_dir, postgres_url=deployment.postgres_url),
    }
