"""The code location: every asset, check, job, schedule and resource of regime_pipeline."""

from typing import Any

import dagster as dg

from regime_pipeline.assets import (
    allocation, bars, detectors, features, forecasts, regimes, trading, universe, walk_forward, walk_forward_allocation,
)
from regime_pipeline.recovery import dead_run_sensor
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.deployment import executor_from_env

all_assets = dg.load_assets_from_modules(
    [bars, universe, features, forecasts, regimes, detectors, walk_forward, allocation, walk_forward_allocation, trading]
)

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

# Trading. One job cannot span daily and weekly partitions, so the week's data is brought up to
# date by a daily job (yesterday's bars, features, forecasts and probabilities, at 00:15 UTC) and
# the rebalance runs at 01:00 UTC on Mondays; it refuses to trade when Sunday's data is missing.
daily_update_job = dg.define_asset_job(
    "daily_update_job",
    selection=dg.AssetSelection.assets(
        "minute_bars", "daily_bars", "universe", "vol_features", "trend_features", "cross_features", "vol_forecasts",
        "regime_probabilities",
    ),
    description="Ingest a day of 1-minute bars and compute its daily bar, features, forecasts and regime probabilities.",
)
weekly_rebalance_job = dg.define_asset_job(
    "weekly_rebalance_job",
    selection=dg.AssetSelection.assets(trading.weekly_rebalance),
    description="Rebalance the book for a Monday week: policy -> risk limits -> orders -> broker -> ledger.",
    # The cluster's run queue lets one run with this tag trade at a time (deploy/cluster/dagster.yaml).
    tags={"regime/books": "ledger"},
)
daily_update_schedule = dg.build_schedule_from_partitioned_job(
    daily_update_job, name="daily_update_schedule", hour_of_day=0, minute_of_hour=15,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
weekly_rebalance_schedule = dg.build_schedule_from_partitioned_job(
    weekly_rebalance_job, name="weekly_rebalance_schedule", hour_of_day=1, minute_of_hour=0, day_of_week=1,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def build_defs(resources: dict[str, Any] | None = None) -> dg.Definitions:
    """The definitions with `resources`, by default those the environment selects."""
    return dg.Definitions(
        assets=all_assets,
        jobs=[bars_job, features_job, daily_update_job, weekly_rebalance_job],
        schedules=[daily_update_schedule, weekly_rebalance_schedule],
        sensors=[dead_run_sensor],
        resources=resources if resources is not None else build_resources(),
        executor=executor_from_env(),
    )


defs = build_defs()
