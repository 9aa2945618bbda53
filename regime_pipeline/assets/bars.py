"""Stage 0, bars: 1-minute bars into the Parquet lake, and UTC daily bars into the warehouse."""

import datetime as dt

import dagster as dg
import pandas as pd

from regime_pipeline.checks.bars import DAILY_BAR_CHECK_SPECS, daily_bar_checks
from regime_pipeline.checks.gate import checked_output
from regime_pipeline.configs import data_settings, known_gaps, universe
from regime_pipeline.core.data.bars import combine_daily
from regime_pipeline.core.data.ingest import ingest_minutes
from regime_pipeline.assets.metadata import add_run_metadata, plot_metadata
from regime_pipeline.core.plots import plot_daily_bars
from regime_pipeline.partitions import DAILY
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "bars"


def window_days(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date]:
    """The run's UTC days as ``[start, end)``, for one partition or a single-run range."""
    window = context.partition_time_window
    return window.start.date(), window.end.date()


class MinuteBarsConfig(dg.Config):
    refetch: bool = False
    """Download days already in the lake again. Closed 1-minute candles never change, so by
    default a stored day is kept and ingestion resumes at the first day not stored."""


@dg.asset(
    group_name=GROUP,
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    kinds={"parquet", "duckdb"},
)
def minute_bars(
    context: dg.AssetExecutionContext, config: MinuteBarsConfig, market_data: MarketData, storage: ProjectStorage
) -> dg.MaterializeResult:
    """1-minute Binance OHLCV in the hive-partitioned Parquet lake
    (``lake/minute_bars/symbol=<S>/month=<YYYY-MM>/data.parquet``, one file per symbol and UTC month).

    Only complete UTC days are stored (every minute present, or the missing minutes a known
    exchange gap, or the day's minutes equal to the exchange's daily kline), each verified and
    written as soon as it is fetched: an interrupted ingestion resumes where it stopped, and a
    refused day fails the run naming the file or endpoint. Days the source has no minutes for
    (the embedded data has a 2021 window) are simply absent; `daily_bars` then uses the
    exchange's daily klines.
    """
    start, end = window_days(context)
    source = market_data.open(log=context.log)
    lake = storage.lake()
    tolerances = data_settings()["reconciliation"]
    summary = ingest_minutes(
        source, lake, universe().symbols, start, end,
        gaps=[(gap.start, gap.end) for gap in known_gaps()],
        price_rtol=tolerances["price_rtol"], volume_rtol=tolerances["volume_rtol"],
        refetch=config.refetch, log=context.log,
    )
    days_written = sum(summary.days_written.values())
    context.log.info(f"minute_bars: {summary.rows_written} rows in {days_written} days, {summary.seconds:.1f}s")
    table = summary.table()
    add_run_metadata(
        context,
        {
            "source": market_data.source,
            "rows_written": summary.rows_written,
            "days_written": days_written,
            "days_already_stored": summary.days_already_stored,
            "lake": dg.MetadataValue.path(str(lake.root)),
            "by_symbol": dg.MetadataValue.md(table.to_markdown(index=False) if len(table) else "no minutes in this range"),
        },
    )
    return dg.MaterializeResult()


@dg.asset(
    group_name=GROUP,
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[minute_bars],
    check_specs=DAILY_BAR_CHECK_SPECS,
    metadata={"partition_expr": "date"},
    kinds={"duckdb"},
    pool="warehouse",
)
def daily_bars(context: dg.AssetExecutionContext, market_data: MarketData, storage: ProjectStorage):
    """UTC daily OHLCV per asset, one row per (date, symbol) for every listed asset.

    Aggregated in DuckDB from the lake's 1-minute bars where a complete minute day exists,
    else the source's own daily kline; `source` says which and `n_minutes` how many minutes
    a bar was built from. Assets are absent before their listing day, never filled. The checks
    run on the bars before they are stored: a failing one fails the step and keeps the stored rows.
    """
    start, end = window_days(context)
    source = market_data.open(log=context.log)
    symbols = universe().symbols
    klines = source.daily_klines(symbols, start, end)
    minute_daily = storage.lake().daily_aggregate(start, end, symbols)
    bars = combine_daily(minute_daily, klines)
    context.log.info(
        f"daily_bars {start}..{end - dt.timedelta(days=1)}: {len(bars)} bars "
        f"({int((bars['source'] == 'minutes').sum())} from minutes, {int((bars['source'] == 'klines').sum())} from klines)"
    )
    last = end - dt.timedelta(days=1)
    metadata = {
        "first_date": str(start),
        "last_date": str(last),
        "bars_from_minutes": int((bars["source"] == "minutes").sum()),
        "bars_from_klines": int((bars["source"] == "klines").sum()),
        "symbols": int(bars["symbol"].nunique()),
    }
    if not bars.empty:
        metadata.update(plot_metadata(plot_daily_bars(bars, f"daily bars {start} .. {last}"), "daily_bars"))
    add_run_metadata(context, metadata)
    # Checked before the IO manager sees the frame: a failing blocking check leaves the stored slice as it was.
    results = daily_bar_checks(bars, minute_daily, klines, start, end)
    yield from checked_output(dg.Output(bars), results, DAILY_BAR_CHECK_SPECS)
