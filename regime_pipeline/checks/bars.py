"""Checks on `daily_bars`, evaluated in the same step from the frame just built, before it is stored.

They are declared as the asset's `check_specs` rather than as separate `@asset_check`s:
a separate check would reload every partition of the table, while these see exactly the
partitions of the run, which is what a single-run backfill of 3,000 days needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

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
                      description="every listed symbol the source has data for has a bar on every day from its "
                                  "listing to its last bar, none outside; a symbol the source has nothing for is a warning"),
    dg.AssetCheckSpec("minutes_match_klines", asset=ASSET, blocking=True,
                      description="bars aggregated from intraday bars (1-minute, or 3m..12h files) equal the "
                                  "exchange's daily klines"),
]


def _sample(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.head(_SAMPLE).to_markdown(index=False))


def _result(name: str, bad: pd.DataFrame, **metadata) -> dg.AssetCheckResult:
    extra = {"violations": len(bad), **metadata}
    if not bad.empty:
        extra["examples"] = _sample(bad)
    return dg.AssetCheckResult(check_name=name, asset_key=ASSET, passed=bad.empty, metadata=extra)


def _coverage(
    bars: pd.DataFrame, absent: Sequence[str], start: dt.date, end: dt.date
) -> dg.AssetCheckResult:
    """Missing days and bars outside an asset's listing .. last bar fail the check (blocking);
    symbols the source has no data for at all only warn: they are left out, as before their
    listing, and named. A source with no data for any symbol trading in the window fails."""
    known = universe()
    listed = known.listing_dates()
    missing, outside = quality.coverage_gaps(bars, listed, start, end, known.last_bars())
    trading = known.trading(start, end)
    not_held = [s for s in absent if s in trading]
    if len(not_held) == len(trading):
        not_held = []  # no data for any symbol is an empty or wrong source, not a partial one
    missing = missing.loc[~missing["symbol"].isin(not_held)]
    bad = pd.concat(
        [missing.assign(problem="no bar"), outside[["symbol", "date"]].assign(problem="bar outside listing .. last bar")],
        ignore_index=True,
    )
    result = _result("coverage", bad, missing_days=len(missing), bars_outside_span=len(outside),
                     symbols_without_data=len(not_held))
    if not not_held:
        return result
    named = ", ".join(not_held)
    metadata = {**result.metadata, "no_data_for": named}
    if bad.empty:
        return dg.AssetCheckResult(
            check_name="coverage", asset_key=ASSET, passed=False, severity=dg.AssetCheckSeverity.WARN,
            description=f"the source has no data at all for {len(not_held)} symbols, left out as if unlisted: {named}",
            metadata=metadata,
        )
    return dg.AssetCheckResult(check_name="coverage", asset_key=ASSET, passed=False, metadata=metadata)


def daily_bar_checks(
    bars: pd.DataFrame,
    aggregated: pd.DataFrame,
    klines: pd.DataFrame,
    start: dt.date,
    end: dt.date,
    absent: Sequence[str] = (),
) -> list[dg.AssetCheckResult]:
    """Evaluate every check in :data:`DAILY_BAR_CHECK_SPECS` on the bars of ``[start, end)``.

    :param aggregated: the days built from intraday bars (``symbol, date``, OHLCV, ``n_minutes``),
        reconciled with `klines` where both exist
    :param absent: symbols the source has no data for at all (a coverage warning, not a failure)
    """
    tolerances = data_settings()["reconciliation"]
    compared, mismatches = quality.reconcile(
        aggregated, klines, price_rtol=tolerances["price_rtol"], volume_rtol=tolerances["volume_rtol"]
    )
    partial = aggregated.loc[aggregated["n_minutes"] < 1440, ["symbol", "date", "n_minutes"]] if not aggregated.empty else aggregated
    return [
        _result("ohlc_consistent", quality.ohlc_inconsistent(bars)),
        _result("positive_prices", quality.nonpositive_prices(bars)),
        _result("unique_symbol_date", quality.duplicate_keys(bars, ["symbol", "date"])),
        _coverage(bars, absent, start, end),
        _result(
            "minutes_match_klines",
            mismatches,
            days_compared=compared,
            minute_days_under_1440_bars=len(partial),
            **({"short_minute_days": _sample(partial)} if len(partial) else {}),
        ),
    ]
