"""Where the pipeline keeps what it writes: everything lives under one data directory."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from regime_pipeline.core.data.lake import MinuteLake


class ProjectStorage(dg.ConfigurableResource):
    """Paths under `data_dir`: the minute lake, the DuckDB warehouse, models and reports."""

    data_dir: str

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    @property
    def warehouse(self) -> str:
        return str(self.root / "warehouse.duckdb")

    def lake(self) -> MinuteLake:
        return MinuteLake(self.root / "lake" / "minute_bars")

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"
