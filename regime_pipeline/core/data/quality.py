"""Data-quality rules: for daily bars, each returns the offending rows (empty means it holds);
for a day of intraday bars (1-minute to 12-hour), whether the source shows the day complete."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from regime_pipeline.core.data import intervals
from regime_pipeline.core.data.bars import DAY, OHLCV_COLUMNS, PRICE_COLUMNS, aggregate_day, days_in

def ohlc_inconsistent(bars: pd.DataFrame) -> pd.DataFrame:
    """Rows where high < low, high < max(open, close) or low > min(open, close)."""
    hi_oc = bars[["open", "close"]].max(axis=1)
    lo_oc = bars[["open", "close"]].min(axis=1)
    bad = (bars["high"] < bars["low"]) | (bars["high"] < hi_oc) | (bars["low"] > lo_oc)
    return bars.loc[bad]


def nonpositive_prices(bars: pd.DataFrame) -> pd.DataFrame:
    """Rows with a price <= 0 or a negative volume."""
    bad = (bars[PRICE_COLUMNS] <= 0).any(axis=1) | (bars["volume"] < 0)
    return bars.loc[bad]


def duplicate_keys(bars: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Every row whose `keys` appear more than once."""
    return bars.loc[bars.duplicated(keys, keep=False)]


def coverage_gaps(
    bars: pd.DataFrame,
    listed: Mapping[str, dt.date],
    start: dt.date,
    end: dt.date,
    last_bar: Mapping[str, dt.date] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Days in ``[start, end)`` on which a listed symbol has no bar, and bars outside a symbol's
    span: before its listing, or after its last bar (`last_bar`, for the assets whose data end).

    :return: ``(missing, outside)``; `missing` has columns ``symbol, date``, `outside` is the
        offending rows of `bars`
    """
    last_bar = last_bar or {}
    present = set(zip(bars["symbol"], bars["date"]))
    missing = [
        (symbol, day)
        for symbol, first in listed.items()
        for day in days_in(max(start, first), min(end, last_bar[symbol] + dt.timedelta(days=1)) if symbol in last_bar else end)
        if (symbol, day) not in present
    ]
    first_day = bars["symbol"].map(listed)
    final_day = bars["symbol"].map(last_bar)
    outside = (first_day.notna() & (bars["date"] < first_day)) | (final_day.notna() & (bars["date"] > final_day))
    return pd.DataFrame(missing, columns=["symbol", "date"]), bars.loc[outside]


def reconcile(
    minute_daily: pd.DataFrame, klines: pd.DataFrame, *, price_rtol: float, volume_rtol: float
) -> tuple[int, pd.DataFrame]:
    """Compare bars aggregated from minutes with the exchange's daily klines where both exist.

    :return: ``(n_compared, mismatches)``; `mismatches` has ``symbol, date, field, minutes,
        klines, rel_diff`` for every value outside its relative tolerance.
    """
    both = minute_daily.merge(klines, on=["symbol", "date"], suffixes=("_m", "_k"))
    rows = []
    for field in OHLCV_COLUMNS:
        m, k = both[f"{field}_m"].to_numpy(float), both[f"{field}_k"].to_numpy(float)
        rtol = volume_rtol if field == "volume" else price_rtol
        rel = np.abs(m - k) / np.maximum(np.abs(k), np.finfo(float).tiny)
        for i in np.flatnonzero(rel > rtol):
            rows.append((both["symbol"].iat[i], both["date"].iat[i], field, m[i], k[i], rel[i]))
    columns = ["symbol", "date", "field", "minutes", "klines", "rel_diff"]
    return len(both), pd.DataFrame(rows, columns=columns)


def _gap_bars(day: dt.date, gaps: Sequence[tuple[dt.datetime, dt.datetime]], length: pd.Timedelta) -> pd.DatetimeIndex:
    """Open times of the bars of `day` (of `length`) that lie wholly in one of the exchange's known
    `gaps` (``[from, to)``, naive UTC): bars the exchange never made. A bar that overlaps a gap only
    in part had trades outside it, and exists."""
    lo, hi = pd.Timestamp(day), pd.Timestamp(day) + DAY
    parts = []
    for a, b in gaps:
        a, b = max(lo, pd.Timestamp(a)), min(hi, pd.Timestamp(b))
        if a >= b:
            continue
        first = a.ceil(length)
        if first + length <= b:
            parts.append(pd.date_range(first, b - length, freq=length))
    return parts[0].append(parts[1:]) if parts else pd.DatetimeIndex([])


def intraday_day_problem(
    day: dt.date,
    bars: pd.DataFrame,
    kline: Mapping[str, float] | None,
    gaps: Sequence[tuple[dt.datetime, dt.datetime]],
    *,
    interval: str = "1m",
    price_rtol: float,
    volume_rtol: float,
) -> str | None:
    """Why one symbol's `interval` bars of `day` must not be used as a complete day; None if they may.

    A day of bars is complete when the source shows the day closed: its bars cover every
    interval of the day (1,440 minutes, 288 5-minute bars, ..., 2 12-hour bars), or each missing
    bar lies wholly in a known exchange gap (`gaps`), or the bars add up to the exchange's own
    daily candle for the day (`kline`: open, high, low, close, volume). Where the kline exists
    the bars must reproduce it (relative tolerances `price_rtol`, `volume_rtol`), whatever
    their count: bars and kline are the same trades.

    :param bars: ``open_time`` (naive UTC, on the interval's grid, unique) and OHLCV, of `day` only
    :param interval: one of :data:`intervals.INTRADAY_INTERVALS`
    """
    if bars.empty:
        return "no bars"
    times = bars["open_time"].sort_values()
    if kline is not None:
        aggregated = aggregate_day(bars)
        for field in OHLCV_COLUMNS:
            expected = float(kline[field])
            rtol = volume_rtol if field == "volume" else price_rtol
            if abs(aggregated[field] - expected) > rtol * max(abs(expected), np.finfo(float).tiny):
                return (
                    f"{len(bars)} {_what(interval)} from {times.iloc[0]:%H:%M} to {times.iloc[-1]:%H:%M} add up to "
                    f"{field} {aggregated[field]!r}, but the exchange's daily kline says {expected!r}: "
                    "a partial or altered download"
                )
        return None
    expected_bars = intervals.bars_per_day(interval)
    if len(bars) == expected_bars:
        return None
    length = intervals.step(interval)
    every = pd.date_range(pd.Timestamp(day), pd.Timestamp(day) + DAY, freq=length, inclusive="left")
    missing = every.difference(pd.DatetimeIndex(times)).difference(_gap_bars(day, gaps, length))
    if missing.empty:
        return None
    return (
        f"{len(missing)} of {expected_bars} {_what(interval)} missing (first {missing[0]:%H:%M}; bars run "
        f"{times.iloc[0]:%H:%M}..{times.iloc[-1]:%H:%M}), not a known exchange gap (configs/data.yaml "
        "known_gaps) and no daily kline to prove the day closed: a partial download"
    )


def _what(interval: str) -> str:
    return "minutes" if interval == "1m" else f"{interval} bars"
