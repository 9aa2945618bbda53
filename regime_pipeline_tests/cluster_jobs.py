"""Jobs the cluster tests run out of process, on the resources the environment selects.

``week_job``: a week of the daily pipeline (bars, features, probabilities); ``rebalance_job``: the
weekly rebalance; ``bars_job``: bars only; ``bars_reader_job``: a step that reads every stored
daily bar; ``seed_job``: one walk-forward PPO seed (``2025|0``) with the `fast` PPO profile. Each is rebuilt in every process from ``REGIME_DEPLOYMENT`` and the other variables
(:func:`regime_pipeline.resources.build_resources`), as a code location would be.

``python -m regime_pipeline_tests.cluster_jobs JOB FIRST LAST`` runs JOB over FIRST..LAST (the
weekly ``rebalance_job``: the week FIRST) against the instance in ``$DAGSTER_HOME`` and exits 0 if
the run succeeded (``week_and_rebalance``: the week's days, then the rebalance of the Monday after
them). A process per profile: the step processes fork from a server that keeps the
environment it started with.
"""


import sys

import dagster as dg
import pandas as pd
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.market_data import MarketData

WEEK = ["minute_bars", "daily_bars", "vol_features", "trend_features", "cross_features", "regime_probabilities"]
# Two steps at once, each in a process forked from a server that imported the project once (a
# fresh interpreter per step would import torch and Dagster again for every step).
TWO_AT_ONCE = {"execution": {"config": {"multiprocess": {
    "max_concurrent": 2,
    "start_method": {"forkserver": {"preload_modules": ["regime_pipeline.definitions"]}},
}}}}


@dg.asset(ins={"daily_bars": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def daily_bars_count(context: dg.AssetExecutionContext, daily_bars: pd.DataFrame) -> dg.MaterializeResult:
    """How many daily bars are stored (a reader of the table while others write it)."""
    context.log.info(f"daily_bars_count: {len(daily_bars)} rows")
    return dg.MaterializeResult(metadata={"rows": len(daily_bars)})


def _job(name: str, selection: list[str]) -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=[*all_assets, daily_bars_count],
        jobs=[dg.define_asset_job(name, selection=selection)],
        resources=build_resources(market_data=MarketData(source="embedded")),
    )
    return defs.resolve_job_def(name)


def week_job() -> dg.JobDefinition:
    return _job("week_job", WEEK)


def rebalance_job() -> dg.JobDefinition:
    return _job("rebalance_job", ["weekly_rebalance"])


def bars_job() -> dg.JobDefinition:
    return _job("bars_job", ["minute_bars", "daily_bars"])


def bars_reader_job() -> dg.JobDefinition:
    return _job("bars_reader_job", ["daily_bars_count"])


def seed_job() -> dg.JobDefinition:
    return _job("seed_job", ["walk_forward_seed_policy"])


JOBS = {"week_job": week_job, "rebalance_job": rebalance_job, "bars_job": bars_job, "bars_reader_job": bars_reader_job,
        "seed_job": seed_job}
# The `fast` PPO profile, for the step each of these jobs runs.
FAST_PPO = {"seed_job": "walk_forward_seed_policy"}


def run(instance: dg.DagsterInstance, job: str, first: str | None = None, last: str | None = None,
        partition: str | None = None) -> dg.ExecuteInProcessResult:
    """Run `job` on the multiprocess executor (two steps at once) over ``first..last`` (a range
    of daily partitions in one run) or one `partition`."""
    tags = {}
    if first is not None:
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last or first}
    if partition is not None:
        tags = {"dagster/partition": partition}
    config = dict(TWO_AT_ONCE)
    if job in FAST_PPO:
        config["ops"] = {FAST_PPO[job]: {"config": {"profile": "fast"}}}
    return dg.execute_job(dg.reconstructable(JOBS[job]), instance=instance, tags=tags, run_config=config)


def main(argv: list[str]) -> int:
    job, first, last = argv
    with dg.DagsterInstance.get() as instance:
        if job in ("rebalance_job", "seed_job"):  # one partition
            result = run(instance, job, partition=first)
        elif job == "week_and_rebalance":  # the week's days, then the Monday after
            monday = (pd.Timestamp(last) + pd.Timedelta(days=1)).date().isoformat()
            result = run(instance, "week_job", first, last)
            result = result if not result.success else run(instance, "rebalance_job", partition=monday)
        else:
            result = run(instance, job, first, last)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
