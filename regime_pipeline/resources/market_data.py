"""The `market_data` resource: one switch between the embedded data, Binance files and live ccxt."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import dagster as dg

from regime_pipeline.configs import PROJECT_ROOT, data_settings, universe
from regime_pipeline.core.data.sources.base import MarketDataSource


class MarketData(dg.ConfigurableResource):
    """Where bars come from.

    * ``embedded``: the real Binance klines shipped in ``data/embedded/`` (the default);
    * ``binance_files``: a folder (`files_dir`) of Binance bulk kline CSV/zip files or
      freqtrade json/feather files;
    * ``ccxt``: live Binance spot through ccxt, paginated, rate-limited and retried;
      `api_url` overrides the REST endpoint (a mirror, or a local test server).
    """

    source: Literal["embedded", "binance_files", "ccxt"] = "embedded"
    files_dir: str = ""
    api_url: str = ""
    timeout_ms: int = 10_000
    max_retries: int = 5

    def open(self, log: Any | None = None) -> MarketDataSource:
        """Build the configured source."""
        if self.source == "embedded":
            from regime_pipeline.core.data.sources.embedded import EmbeddedSource

            paths = data_settings()["embedded"]
            return EmbeddedSource(PROJECT_ROOT / paths["daily_klines"], PROJECT_ROOT / paths["minute_bars"],
                                  PROJECT_ROOT / paths["daily_closes"])
        if self.source == "binance_files":
            from regime_pipeline.core.data.sources.binance_files import BinanceFilesSource

            if not self.files_dir:
                raise ValueError("market_data: source 'binance_files' needs files_dir (env REGIME_FILES_DIR)")
            if not Path(self.files_dir).is_dir():
                raise FileNotFoundError(f"market_data: files_dir {self.files_dir!r} is not a directory (REGIME_FILES_DIR)")
            return BinanceFilesSource(self.files_dir, symbols=universe().symbols, log=log)
        from regime_pipeline.core.data.sources.ccxt_source import CcxtSource

        return CcxtSource(
            api_url=self.api_url or None, timeout_ms=self.timeout_ms, max_retries=self.max_retries, log=log
        )
