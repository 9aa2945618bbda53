"""Data-quality rules for daily bars; each returns the offending rows (empty means it holds)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pandas as pd

from regime_pipeline.core.data.bars import OHLCV_COLUMNS, PRICE_COLUMNS, days_in


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
    bars: pd.DataFrame, listed: Mapping[str, dt.date], start: dt.date, end: dt.date
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Days in ``[start, end)`` on which a listed symbol has no bar, and bars dated before listing.

    :return: ``(missing, before_listing)``; `missing` has columns ``symbol, date``.
    """
    present = set(zip(bars["symbol"], bars["date"]))
    missing = [
        (symbol, day)
        for symbol, first in listed.items()
        for day in days_in(max(start, first), end)
        if (symbol, day) not in present
    ]
    first_day = bars["symbol"].map(listed)
    before = bars.loc[first_day.notna() & (bars["date"] < first_day)]
    return pd.DataFrame(missing, columns=["symbol", "date"]), before


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
