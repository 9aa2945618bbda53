"""Kline intervals: the ones Binance publishes, the ones the pipeline reads, and the grid bars lie on.

Every source decides here whether it can use a file or page of a given interval, and checks that
each bar opens on its interval's boundary. The pipeline builds bars from ``1m`` and ``1d`` klines
only; a file of any other interval is reported (never silently skipped) and not read.
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
# What the sources turn into bars: minutes for the lake, days for `daily_bars`.
USED_INTERVALS: tuple[str, ...] = ("1m", "1d")


def step(interval: str) -> pd.Timedelta:
    """The length of one bar of a used interval."""
    if interval not in USED_INTERVALS:
        raise ValueError(f"interval {interval!r} is not read by this pipeline (it reads {', '.join(USED_INTERVALS)})")
    length = BINANCE_INTERVALS[interval]
    assert length is not None
    return length


def unused_reason(interval: str) -> str | None:
    """None if bars of `interval` are read; else why a file of that interval is not used."""
    if interval in USED_INTERVALS:
        return None
    if interval in BINANCE_INTERVALS:
        return f"{interval} bars are not read (only {' and '.join(USED_INTERVALS)} files are used)"
    return f"{interval!r} is not a Binance kline interval"


def off_grid(open_times: pd.Series, interval: str) -> np.ndarray:
    """Mask of the bars whose open time is not on a boundary of `interval` (a whole minute, a UTC midnight)."""
    if open_times.empty:
        return np.zeros(0, dtype=bool)
    length = step(interval)
    return (open_times != open_times.dt.floor(length)).to_numpy()
