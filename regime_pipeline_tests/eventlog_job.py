"""A small daily-partitioned job for comparing event log storages, and a process to kill.

Two single-run assets like the pipeline's per-day assets: `upstream` (with a range-wide
check, as `check_specs` declares the project's) and `downstream`, which can fail on chosen
partitions or stop and wait to be killed. ``python -m regime_pipeline_tests.eventlog_job HOME
FIRST LAST [--hold MARKER] [--stall-batch-after N MARKER]`` materializes both over FIRST..LAST
against the instance in HOME:

* ``--hold MARKER``: `downstream` writes MARKER once it starts and then waits, so a kill lands
  between the two steps, after `upstream`'s materializations were stored;
* ``--stall-batch-after N MARKER``: the event log writes MARKER and waits once N materializations
  are written, so a kill lands inside a batch's transactions (or, on the stock storage, after
  the Nth materialization was stored).
"""


import argparse
import time
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.assets.metadata import add_run_metadata

DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-03-01")
CHECK = "rows_positive"


class DownstreamConfig(dg.Config):
    fail_partitions: list[str] = []
    """Fail the step when its partitions include one of these."""
    hold_marker: str = ""
    """Write this file on start, then wait (to be killed)."""


@dg.asset(
    partitions_def=DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=[dg.AssetCheckSpec(CHECK, asset="upstream", blocking=True)],
)
def upstream(context: dg.AssetExecutionContext):
    keys = context.partition_keys
    add_run_metadata(context, {"rows": 13 * len(keys), "first": keys[0], "last": keys[-1]})
    yield dg.MaterializeResult(asset_key="upstream")
    yield dg.AssetCheckResult(check_name=CHECK, passed=True, metadata={"rows": 13 * len(keys)})


@dg.asset(partitions_def=DAYS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[upstream])
def downstream(context: dg.AssetExecutionContext, config: DownstreamConfig) -> dg.MaterializeResult:
    if config.hold_marker:
        Path(config.hold_marker).write_text("started")
        time.sleep(600)
    failing = sorted(set(context.partition_keys) & set(config.fail_partitions))
    if failing:
        raise ValueError(f"downstream refuses {', '.join(failing)}")
    add_run_metadata(context, {"days": len(context.partition_keys)})
    return dg.MaterializeResult()


ASSETS = [upstream, downstream]


def run_range(instance: dg.DagsterInstance, first: str, last: str, **config) -> dg.ExecuteInProcessResult:
    """Materialize both assets over ``first..last`` in one run (a single-run backfill)."""
    return dg.materialize(
        ASSETS, instance=instance, raise_on_error=False,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        run_config=dg.RunConfig(ops={"downstream": DownstreamConfig(**config)}),
    )


def run_partition(instance: dg.DagsterInstance, key: str, **config) -> dg.ExecuteInProcessResult:
    """Materialize both assets for one partition."""
    return dg.materialize(
        ASSETS, instance=instance, partition_key=key, raise_on_error=False,
        run_config=dg.RunConfig(ops={"downstream": DownstreamConfig(**config)}),
    )


def _stall_inside_batches(after: int, marker: Path) -> None:
    """Make the event log write `marker` and wait once `after` materializations are written:
    the stock storage after storing the `after`-th (each event is committed on its own), the
    batching storage inside a batch of at least `after`, its rows inserted but not committed."""
    from dagster._core.events import DagsterEventType
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    def stall():
        marker.write_text("stalled")
        time.sleep(600)

    def materializations(events) -> int:
        return sum(e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION for e in events)

    store, store_tags, stored = SqliteEventLogStorage.store_event, SqlEventLogStorage._store_asset_event_tags, [0]

    def store_then_stall(self, event):
        store(self, event)
        stored[0] += materializations([event])
        if stored[0] == after:
            stall()

    def store_tags_then_stall(self, conn, events, event_ids):
        store_tags(self, conn, events, event_ids)
        if len(events) > 1 and materializations(events) >= after:
            stall()

    SqliteEventLogStorage.store_event = store_then_stall
    SqlEventLogStorage._store_asset_event_tags = store_tags_then_stall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("home")
    parser.add_argument("first")
    parser.add_argument("last")
    parser.add_argument("--hold", default="")
    parser.add_argument("--stall-batch-after", nargs=2, metavar=("N", "MARKER"))
    args = parser.parse_args(argv)
    if args.stall_batch_after:
        _stall_inside_batches(int(args.stall_batch_after[0]), Path(args.stall_batch_after[1]))
    with dg.DagsterInstance.from_config(args.home) as instance:
        run_range(instance, args.first, args.last, hold_marker=args.hold)


if __name__ == "__main__":
    main()
