"""The code location: every asset, check, job, schedule and resource of regime_pipeline."""

from __future__ import annotations

import dagster as dg

from regime_pipeline.assets import bars
from regime_pipeline.resources import build_resources

bar_assets = dg.load_assets_from_modules([bars])

bars_job = dg.define_asset_job(
    "bars_job",
    selection=dg.AssetSelection.groups(bars.GROUP),
    description="Ingest 1-minute bars and build daily bars for a range of days.",
)

defs = dg.Definitions(
    assets=[*bar_assets],
    jobs=[bars_job],
    resources=build_resources(),
)
