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
from regime_pipeline.core.data.intraday import daily_from_intraday
from regime_pipeline.core.plots import plot_daily_bars
from regime_pipeline.partitions import DAILY
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.storage import ProjectStorage
from regime_pipeline.resources.warehouse import stored_values

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
    known = universe()
    summary = ingest_minutes(
        source, lake, known.trading(start, end), start, end,
        gaps=[(gap.start, gap.end) for gap in known_gaps()],
        price_rtol=tolerances["price_rtol"], volume_rtol=tolerances["volume_rtol"],
        refetch=config.refetch, spans={a.symbol: (a.listed, a.last_bar) for a in known.assets}, log=context.log,
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


def within_spans(frame: pd.DataFrame, log) -> pd.DataFrame:
    """The rows of each symbol from its listing to its last bar (configs/universe.yaml). A row the
    source has after an asset's last bar is another asset under the same symbol (LUNAUSDT from
    2022-05-31 is Terra 2.0) and is never joined to it: it is dropped, and the drop logged."""
    known = universe()
    first = frame["symbol"].map(known.listing_dates())
    last = frame["symbol"].map(known.last_bars())
    after = last.notna() & (frame["date"] > last)
    if after.any():
        counts = frame.loc[after].groupby("symbol").size()
        log.warning("rows after the asset's last bar not used (another asset under the symbol): "
                    + ", ".join(f"{s} {n}" for s, n in counts.items()))
    # Rows before the listing day stay: the coverage check refuses them, naming the days.
    keep = ~after | first.isna()
    return frame.loc[keep].reset_index(drop=True)


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
    """UTC daily OHLCV per asset, one row per (date, symbol) for every listed asset the source has data for.

    Aggregated in DuckDB from the lake's 1-minute bars where a complete minute day exists, else
    from the source's coarser intraday bars (3m .. 12h files) where they make a complete day,
    else the source's own daily kline; `source` says which (`minutes`, the interval, `klines`)
    and `n_minutes` how many minutes a bar was built from. Assets are absent before their listing
    day, never filled, and so is a symbol the source has no data for at all (a folder of files
    for only some of the universe): the coverage check names it, as a warning, unless bars of it
    are stored for these days, which leaving it out would delete (then the check fails). The
    checks run on the bars before they are stored: a failing one fails the step and keeps the
    stored rows.
    """
    start, end = window_days(context)
    source = market_data.open(log=context.log)
    known = universe()
    symbols = known.trading(start, end)
    held = source.available_symbols(symbols)
    absent = [s for s in symbols if s not in held]
    # Leaving out a symbol whose bars are stored for these days would delete them: that is a gap.
    stored = stored_values(storage.warehouse, "daily_bars", "symbol", "date >= ? AND date < ?", [start, end],
                           log=context.log) if absent else set()
    absent_stored = [s for s in absent if s in stored]
    if absent:
        context.log.warning(
            f"daily_bars: the {market_data.source} source has no data at all for {', '.join(absent)}: "
            "left out, as if not listed (the coverage check names them)"
            + (f"; {', '.join(absent_stored)} have bars stored for these days, which this run must not "
               "delete: the coverage check fails" if absent_stored else "")
        )
    klines = within_spans(source.daily_klines(held, start, end), context.log)
    minute_daily = within_spans(storage.lake().daily_aggregate(start, end, held), context.log)
    tolerances = data_settings()["reconciliation"]
    intraday_daily = within_spans(daily_from_intraday(
        source, held, start, end, klines,
        gaps=[(gap.start, gap.end) for gap in known_gaps()],
        price_rtol=tolerances["price_rtol"], volume_rtol=tolerances["volume_rtol"],
        skip=set(zip(minute_daily["symbol"], minute_daily["date"])), log=context.log,
    ), context.log)
    bars = combine_daily(minute_daily, klines, intraday_daily)
    counts = bars["source"].value_counts()
    from_minutes, from_klines = int(counts.get("minutes", 0)), int(counts.get("klines", 0))
    from_intraday = len(bars) - from_minutes - from_klines
    context.log.info(
        f"daily_bars {start}..{end - dt.timedelta(days=1)}: {len(bars)} bars ({from_minutes} from minutes, "
        f"{from_intraday} from 3m..12h bars, {from_klines} from klines)"
    )
    last = end - dt.timedelta(days=1)
    metadata = {
        "first_date": str(start),
        "last_date": str(last),
        "bars_from_minutes": from_minutes,
        "bars_from_intraday": from_intraday,
        "bars_from_klines": from_klines,
        "symbols": int(bars["symbol"].nunique()),
    }
    if absent:
        metadata["symbols_without_data"] = ", ".join(absent)
    if not bars.empty:
        metadata.update(plot_metadata(plot_daily_bars(bars, f"daily bars {start} .. {last}"), "daily_bars"))
    add_run_metadata(context, metadata)
    # Checked before the IO manager sees the frame: a failing blocking check leaves the stored slice as it was.
    parts = [f for f in (minute_daily, intraday_daily) if not f.empty]
    aggregated = pd.concat(parts, ignore_index=True) if parts else minute_daily
    results = daily_bar_checks(bars, aggregated, klines, start, end, absent=[s for s in absent if s not in stored])
    yield from checked_output(dg.Output(bars), results, DAILY_BAR_CHECK_SPECS)


CLOSES_CHECK = dg.AssetCheckSpec(
    "closes_only_where_configured", asset="daily_closes", blocking=True,
    description="every close-only day lies after its asset's last full bar and by its last day (configs/universe.yaml)",
)


@dg.asset(group_name=GROUP, check_specs=[CLOSES_CHECK], kinds={"duckdb"}, pool="warehouse")
def daily_closes(context: dg.AssetExecutionContext, market_data: MarketData):
    """Days on which an asset has a close but no full bar (``date, symbol, close``): in the
    embedded data FTT 2022-10-11 .. 2022-11-14, after its last full bar. Backtests value a held
    asset at these closes and never trade it on them. Live and file sources deliver full bars
    only, so for them this table is empty."""
    source = market_data.open(log=context.log)
    known = universe()
    reader = getattr(source, "daily_closes", None)
    closes = reader(known.symbols) if reader is not None else pd.DataFrame(columns=["symbol", "date", "close"])
    closes = closes.astype({"close": "float64"})[["date", "symbol", "close"]]
    last_bar = closes["symbol"].map(known.last_bars())
    last_day = closes["symbol"].map({a.symbol: a.last_day for a in known.assets if a.last_day})
    bad = closes.loc[last_bar.isna() | (closes["date"] <= last_bar) | (closes["date"] > last_day)]
    check = dg.AssetCheckResult(
        asset_key="daily_closes", check_name=CLOSES_CHECK.name, passed=bad.empty,
        metadata={"violations": len(bad), **({"examples": dg.MetadataValue.md(bad.head(10).to_markdown(index=False))}
                                              if len(bad) else {})},
    )
    summary = closes.groupby("symbol")["date"].agg(["min", "max", "size"]).reset_index() if len(closes) else None
    output = dg.Output(closes, metadata={
        "rows": len(closes),
        "by_symbol": dg.MetadataValue.md(summary.to_markdown(index=False) if summary is not None else "no close-only days"),
    })
    yield from checked_output(output, [check], [CLOSES_CHECK])
