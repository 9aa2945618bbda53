"""Kline intervals: the ones Binance publishes, the ones the pipeline reads, and the grid bars lie on.

Every source decides here whether it can use a file or page of a given interval, and checks that
each bar opens on its interval's boundary. The pipeline reads every interval from a minute to a
day: ``1m`` bars go to the minute lake, bars of ``3m`` to ``12h`` are aggregated to UTC days, and
``1d`` bars are the exchange's own daily candles. A file of any other interval (``1s``, ``3d``,
``1w``, ``1M``) is reported (never silently skipped) and not read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Binance's kline intervals (GET /api/v3/klines `interval`, and the bulk file names), with their
# length where it is fixed. Weeks open on Mondays and months on the 1st: no fixed step from the epoch.
BINANCE_INTERVALS: dict[str, pd.Timedelta | None] = {
    "1s": pd.Timedelta(seconds=1),
    "1m": pd.Timedelta(minutes=1),
    "3m": pd.Timedelta(minutes=3),
    "5m": pd.Timedelta(minutes=5),
    "15m": pd.Timedelta(minutes=15),
    "30m": pd.Timedelta(minutes=30),
    "1h": pd.Timedelta(hours=1),
    "2h": pd.Timedelta(hours=2),
    "4h": pd.Timedelta(hours=4),
    "6h": pd.Timedelta(hours=6),
    "8h": pd.Timedelta(hours=8),
    "12h": pd.Timedelta(hours=12),
    "1d": pd.Timedelta(days=1),
    "3d": pd.Timedelta(days=3),
    "1w": None,
    "1M": None,
    "1mo": None,  # the bulk download's spelling of 1M
}
DAY = pd.Timedelta(days=1)
# What the sources read, finest first: every interval that divides a UTC day.
USED_INTERVALS: tuple[str, ...] = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
# Bars finer than a day: aggregated to UTC days where a day is complete.
INTRADAY_INTERVALS: tuple[str, ...] = USED_INTERVALS[:-1]


def step(interval: str) -> pd.Timedelta:
    """The length of one bar of a used interval."""
    if interval not in USED_INTERVALS:
        raise ValueError(f"interval {interval!r} is not read by this pipeline (it reads {', '.join(USED_INTERVALS)})")
    length = BINANCE_INTERVALS[interval]
    assert length is not None
    return length


def bars_per_day(interval: str) -> int:
    """How many bars of `interval` a complete UTC day has (1,440 minutes, 288 5m bars, 2 12h bars)."""
    return DAY // step(interval)


def unused_reason(interval: str) -> str | None:
    """None if bars of `interval` are read; else why a file of that interval is not used."""
    if interval in USED_INTERVALS:
        return None
    if interval in BINANCE_INTERVALS:
        return f"{interval} bars are not read (only intervals from 1m to 1d that divide a day are used)"
    return f"{interval!r} is not a Binance kline interval"


def off_grid(open_times: pd.Series, interval: str) -> np.ndarray:
    """Mask of the bars whose open time is not on a boundary of `interval` (a whole minute, a UTC midnight)."""
    if open_times.empty:
        return np.zeros(0, dtype=bool)
    length = step(interval)
    return (open_times != open_times.dt.floor(length)).to_numpy()
