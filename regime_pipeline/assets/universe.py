"""Stage 0b, universe: which candidates the portfolio may hold on each day (configs/universe.yaml).

`point_in_time` (the default) ranks the candidates by trailing quote volume at each weekly
rebalance decision, from bars up to that day only; `fixed` keeps the 13 survivors of the
original study. Everything downstream (cross features, labels, detectors, probabilities,
benchmarks, the policy, the weekly rebalance) reads the members from this table.
"""

import datetime as dt

import dagster as dg
import pandas as pd

from regime_pipeline.assets.bars import window_days
from regime_pipeline.assets.metadata import add_run_metadata, plot_metadata
from regime_pipeline.checks.gate import checked_output
from regime_pipeline.configs import load_yaml, universe as universe_config
from regime_pipeline.core.data import universe as pit
from regime_pipeline.core.plots import plot_membership
from regime_pipeline.partitions import DAILY
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "universe"
LOOKBACK = dg.TimeWindowPartitionMapping(
    start_offset=-pit.lookback_days(universe_config().quote_volume_window_days), allow_nonexistent_upstream_partitions=True,
)
SIZE_CHECK = dg.AssetCheckSpec(
    "at_most_size_members", asset="universe", blocking=True,
    description="no day has more members than configs/universe.yaml `size`, and every member has a bar that day",
)


def _changes_metadata(rows: pd.DataFrame, storage: ProjectStorage, start: dt.date, end: dt.date) -> dict:
    """The membership changes of the run, in the metadata and in data/reports/universe_changes.md."""
    table = pit.changes(rows)
    text = table.to_markdown(index=False) if len(table) else "no change"
    path = storage.reports_dir / "universe_changes.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Universe membership changes, {start} .. {end - dt.timedelta(days=1)} "
                    f"({universe_config().mode})\n\n{text}\n")
    return {"changes": dg.MetadataValue.md(text), "changes_file": dg.MetadataValue.path(str(path))}


@dg.asset(
    group_name=GROUP,
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    ins={"daily_bars": dg.AssetIn(partition_mapping=LOOKBACK)},
    metadata={"partition_expr": "date"},
    check_specs=[SIZE_CHECK],
    kinds={"duckdb"},
    pool="warehouse",
)
def universe(context: dg.AssetExecutionContext, storage: ProjectStorage, daily_bars: pd.DataFrame):
    """Per (date, symbol) of every candidate with a bar: its trailing mean quote volume (USDT) and
    rank at the decision in force, whether it is a member that day, and the decision day the
    membership comes from. Changes are listed with their dates; the plot shows membership over time."""
    start, end = window_days(context)
    config = universe_config()
    weekday = int(load_yaml("backtest")["rebalance_weekday"])
    rows = pit.membership(daily_bars, start, end, config, weekday)
    per_day = rows.loc[rows["member"]].groupby("date").size()
    too_many = per_day[per_day > config.size]
    check = dg.AssetCheckResult(
        asset_key="universe", check_name=SIZE_CHECK.name, passed=too_many.empty,
        metadata={"violations": len(too_many), "most_members": int(per_day.max()) if len(per_day) else 0},
    )
    context.log.info(f"universe ({config.mode}) {start}..{end - dt.timedelta(days=1)}: {len(rows)} rows, "
                     f"{int(rows['member'].sum())} member-days")
    metadata = {
        "mode": config.mode,
        "size": config.size,
        "quote_volume_window_days": config.quote_volume_window_days,
        "member_days": int(rows["member"].sum()),
        "members_last_day": ", ".join(sorted(s.removesuffix("USDT") for s in rows.loc[
            rows["member"] & (rows["date"] == rows["date"].max()), "symbol"])) if len(rows) else "",
        **_changes_metadata(rows, storage, start, end),
    }
    if len(rows):
        fig = plot_membership(rows, f"universe ({config.mode}) {start} .. {end - dt.timedelta(days=1)}")
        metadata.update(plot_metadata(fig, "universe"))
    add_run_metadata(context, metadata)
    yield from checked_output(dg.Output(rows), [check], [SIZE_CHECK])
