"""The code location: every asset, check, job, schedule and resource of regime_pipeline."""

from typing import Any

import dagster as dg

from regime_pipeline.assets import allocation, bars, detectors, features, forecasts, regimes
from regime_pipeline.resources import build_resources

all_assets = dg.load_assets_from_modules([bars, features, forecasts, regimes, detectors, allocation])

bars_job = dg.define_asset_job(
    "bars_job",
    selection=dg.AssetSelection.groups(bars.GROUP),
    description="Ingest 1-minute bars and build daily bars for a range of days.",
)
features_job = dg.define_asset_job(
    "features_job",
    selection=dg.AssetSelection.assets(features.vol_features, features.trend_features, features.cross_features),
    description="Compute the three feature groups for a range of days.",
)


def build_defs(resources: dict[str, Any] | None = None) -> dg.Definitions:
    """The definitions with `resources`, by default those the environment selects."""
    return dg.Definitions(
        assets=all_assets,
        jobs=[bars_job, features_job],
        resources=resources if resources is not None else build_resources(),
    )


defs = build_defs()
