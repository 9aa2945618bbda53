"""Checks on `daily_bars`, evaluated in the same step from the frame just built, before it is stored.

They are declared as the asset's `check_specs` rather than as separate `@asset_check`s:
a separate check would reload every partition of the table, while these see exactly the
partitions of the run, which is what a single-run backfill of 3,000 days needs.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pandas as pd

from regime_pipeline.configs import data_settings, universe
from regime_pipeline.core.data import quality

ASSET = "daily_bars"
_SAMPLE = 10  # offending rows shown in a failed check's metadata

DAILY_BAR_CHECK_SPECS = [
    dg.AssetCheckSpec("ohlc_consistent", asset=ASSET, blocking=True,
                      description="high >= max(open, close), low <= min(open, close), high >= low"),
    dg.AssetCheckSpec("positive_prices", asset=ASSET, blocking=True,
                      description="every price > 0 and volume >= 0"),
    dg.AssetCheckSpec("unique_symbol_date", asset=ASSET, blocking=True,
                      description="at most one bar per (symbol, date)"),
    dg.AssetCheckSpec("coverage", asset=ASSET, blocking=True,
                      description="every listed symbol has a bar on every day from its listing to its last bar, none outside"),
    dg.AssetCheckSpec("minutes_match_klines", asset=ASSET, blocking=True,
                      description="bars aggregated from 1-minute bars equal the exchange's daily klines"),
]


def _sample(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.head(_SAMPLE).to_markdown(index=False))


def _result(name: str, bad: pd.DataFrame, **metadata) -> dg.AssetCheckResult:
    extra = {"violations": len(bad), **metadata}
    if not bad.empty:
        extra["examples"] = _sample(bad)
    return dg.AssetCheckResult(check_name=name, asset_key=ASSET, passed=bad.empty, metadata=extra)


def daily_bar_checks(
    bars: pd.DataFrame, minute_daily: pd.DataFrame, klines: pd.DataFrame, start: dt.date, end: dt.date
) -> list[dg.AssetCheckResult]:
    """Evaluate every check in :data:`DAILY_BAR_CHECK_SPECS` on the bars of ``[start, end)``."""
    known = universe()
    missing, outside = quality.coverage_gaps(bars, known.listing_dates(), start, end, known.last_bars())
    coverage_bad = pd.concat(
        [missing.assign(problem="no bar"), outside[["symbol", "date"]].assign(problem="bar outside listing .. last bar")],
        ignore_index=True,
    )
    tolerances = data_settings()["reconciliation"]
    compared, mismatches = quality.reconcile(
        minute_daily, klines, price_rtol=tolerances["price_rtol"], volume_rtol=tolerances["volume_rtol"]
    )
    partial = minute_daily.loc[minute_daily["n_minutes"] < 1440, ["symbol", "date", "n_minutes"]] if not minute_daily.empty else minute_daily
    return [
        _result("ohlc_consistent", quality.ohlc_inconsistent(bars)),
        _result("positive_prices", quality.nonpositive_prices(bars)),
        _result("unique_symbol_date", quality.duplicate_keys(bars, ["symbol", "date"])),
        _result("coverage", coverage_bad, missing_days=len(missing), bars_outside_span=len(outside)),
        _result(
            "minutes_match_klines",
            mismatches,
            days_compared=compared,
            minute_days_under_1440_bars=len(partial),
            **({"short_minute_days": _sample(partial)} if len(partial) else {}),
        ),
    ]
