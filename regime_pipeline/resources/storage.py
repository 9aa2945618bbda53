"""Where the pipeline keeps what it writes: everything lives under one data location.

`local`: a folder (``data/``). `cluster`: an ``s3://bucket/prefix`` location on S3-compatible
object storage for the lake, models and reports, with the lake's manifest in Postgres
(`postgres_url`); see :mod:`regime_pipeline.resources.deployment`.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from regime_pipeline.core.data.lake import MinuteLake
from regime_pipeline.core.paths import AnyPath, is_remote, storage_path


class ProjectStorage(dg.ConfigurableResource):
    """Paths under `data_dir`: the minute lake, the DuckDB warehouse, models and reports.

    :ivar data_dir: a local folder, or an ``s3://bucket/prefix`` URL (the cluster's object storage)
    :ivar postgres_url: the database holding the object lake's manifest (object storage only)
    :ivar s3_endpoint_url: an S3-compatible server other than AWS (MinIO, a test server)
    """

    data_dir: str
    postgres_url: str = ""
    s3_endpoint_url: str = ""

    @property
    def remote(self) -> bool:
        return is_remote(self.data_dir)

    @property
    def root(self) -> AnyPath:
        return location(self.data_dir, self.s3_endpoint_url)

    @property
    def warehouse(self) -> str:
        if self.remote:
            raise ValueError(f"{self.data_dir} is object storage: the warehouse is the Postgres IO manager's")
        return str(Path(self.data_dir) / "warehouse.duckdb")

    def lake(self) -> MinuteLake:
        if self.remote:
            from regime_pipeline.core.data.object_lake import ObjectMinuteLake

            if not self.postgres_url:
                raise ValueError(f"the lake in {self.data_dir} needs postgres_url for its manifest")
            return ObjectMinuteLake(self.root / "lake" / "minute_bars", self.postgres_url)
        return MinuteLake(self.root / "lake" / "minute_bars")

    @property
    def models_dir(self) -> AnyPath:
        return self.root / "models"

    @property
    def reports_dir(self) -> AnyPath:
        return self.root / "reports"


def location(data_dir: str, s3_endpoint_url: str = "") -> AnyPath:
    """`data_dir` as a path: a local :class:`Path`, or a :class:`~upath.UPath` on S3 (at
    `s3_endpoint_url` when given; credentials from the usual AWS environment variables)."""
    options = {"endpoint_url": s3_endpoint_url} if s3_endpoint_url and is_remote(data_dir) else {}
    return storage_path(data_dir, **options)
