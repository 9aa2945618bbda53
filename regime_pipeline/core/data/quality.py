"""Data-quality rules: for daily bars, each returns the offending rows (empty means it holds);
for a day of 1-minute bars, whether the source shows the day complete."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from regime_pipeline.core.data.bars import DAY, MINUTE, OHLCV_COLUMNS, PRICE_COLUMNS, days_in

MINUTES_PER_DAY = 1440


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


def _gap_minutes(day: dt.date, gaps: Sequence[tuple[dt.datetime, dt.datetime]]) -> pd.DatetimeIndex:
    """The minutes of `day` that lie in one of the exchange's known `gaps` (``[from, to)``, naive UTC)."""
    lo, hi = pd.Timestamp(day), pd.Timestamp(day) + DAY
    parts = [
        pd.date_range(max(lo, pd.Timestamp(a)), min(hi, pd.Timestamp(b)), freq=MINUTE, inclusive="left")
        for a, b in gaps
        if pd.Timestamp(a) < hi and lo < pd.Timestamp(b)
    ]
    return parts[0].append(parts[1:]) if parts else pd.DatetimeIndex([])


def minute_day_problem(
    day: dt.date,
    minutes: pd.DataFrame,
    kline: Mapping[str, float] | None,
    gaps: Sequence[tuple[dt.datetime, dt.datetime]],
    *,
    price_rtol: float,
    volume_rtol: float,
) -> str | None:
    """Why one symbol's 1-minute bars of `day` must not be stored as a complete day; None if they may.

    A day of minutes is complete when the source shows the day closed: its bars cover every
    minute, or each missing minute lies in a known exchange gap (`gaps`), or the bars add up to
    the exchange's own daily candle for the day (`kline`: open, high, low, close, volume). Where
    the kline exists the bars must reproduce it (relative tolerances `price_rtol`, `volume_rtol`),
    whatever their count: minutes and kline are the same trades.

    :param minutes: ``open_time`` (naive UTC, on the minute grid, unique) and OHLCV, of `day` only
    """
    if minutes.empty:
        return "no bars"
    times = minutes["open_time"].sort_values()
    if kline is not None:
        ordered = minutes.sort_values("open_time")
        aggregated = {
            "open": float(ordered["open"].iloc[0]),
            "high": float(ordered["high"].max()),
            "low": float(ordered["low"].min()),
            "close": float(ordered["close"].iloc[-1]),
            "volume": float(ordered["volume"].sum()),
        }
        for field in OHLCV_COLUMNS:
            expected = float(kline[field])
            rtol = volume_rtol if field == "volume" else price_rtol
            if abs(aggregated[field] - expected) > rtol * max(abs(expected), np.finfo(float).tiny):
                return (
                    f"{len(minutes)} bars from {times.iloc[0]:%H:%M} to {times.iloc[-1]:%H:%M} add up to "
                    f"{field} {aggregated[field]!r}, but the exchange's daily kline says {expected!r}: "
                    "a partial or altered download"
                )
        return None
    if len(minutes) == MINUTES_PER_DAY:
        return None
    every = pd.date_range(pd.Timestamp(day), pd.Timestamp(day) + DAY, freq=MINUTE, inclusive="left")
    missing = every.difference(pd.DatetimeIndex(times)).difference(_gap_minutes(day, gaps))
    if missing.empty:
        return None
    return (
        f"{len(missing)} of {MINUTES_PER_DAY} minutes missing (first {missing[0]:%H:%M}; bars run "
        f"{times.iloc[0]:%H:%M}..{times.iloc[-1]:%H:%M}), not a known exchange gap (configs/data.yaml "
        "known_gaps) and no daily kline to prove the day closed: a partial download"
    )
