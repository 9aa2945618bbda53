"""OHLCV bar schemas, validation, and the rules that turn minute bars into daily bars.

Conventions used throughout the project:

* timestamps are naive ``datetime64[ms]`` in UTC, the candle's *open* time;
* a day is a UTC calendar day, stored as ``datetime.date`` / DuckDB ``DATE``;
* prices are in the quote currency (USDT), ``volume`` is in base-asset units.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from regime_pipeline.core.errors import DataError

PRICE_COLUMNS = ["open", "high", "low", "close"]
OHLCV_COLUMNS = [*PRICE_COLUMNS, "volume"]
MINUTE_COLUMNS = ["symbol", "open_time", *OHLCV_COLUMNS]
DAILY_KLINE_COLUMNS = ["symbol", "date", *OHLCV_COLUMNS]
# `source` is "minutes" (aggregated from 1-minute bars), the interval of the coarser intraday bars
# a day was aggregated from ("3m" .. "12h"), or "klines" (the exchange's own daily candle);
# `n_minutes` is how many minutes of the day the bars behind a row span (1-minute bars: their
# count; 5-minute bars: 5 per bar), empty for a kline.
DAILY_BAR_COLUMNS = ["date", "symbol", *OHLCV_COLUMNS, "source", "n_minutes"]

MINUTE = pd.Timedelta(minutes=1)
DAY = pd.Timedelta(days=1)

# Epoch bounds that any Binance candle must fall inside: 2017-01-01 .. 2100-01-01.
_EPOCH_S_MIN, _EPOCH_S_MAX = 1_483_228_800, 4_102_444_800
_ROW = "_row"


def _rows(frame: pd.DataFrame) -> np.ndarray:
    """1-based row numbers for error messages: the `_row` column if a parser kept one."""
    if _ROW in frame.columns:
        return frame[_ROW].to_numpy()
    return np.arange(1, len(frame) + 1)


def to_numeric(frame: pd.DataFrame, columns: Sequence[str], source: str) -> pd.DataFrame:
    """Convert `columns` to float64; raise naming the first row and field that is not a number."""
    out = frame.copy()
    rows = _rows(frame)
    for column in columns:
        if column not in out.columns:
            raise DataError(source, "missing column", field=column)
        raw = out[column]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                source, f"not a finite number: {raw.iloc[i]!r}", row=int(rows[i]), field=column
            )
        out[column] = values.astype("float64")
    return out


def epoch_to_timestamp(values: pd.Series, source: str, field: str, rows: np.ndarray | None = None) -> pd.Series:
    """Decode epoch integers in milliseconds or microseconds into ``datetime64[ms]``.

    Binance bulk spot files switched from milliseconds to microseconds on 2025-01-01, so the
    unit is decided per value by its magnitude. Seconds, nanoseconds or anything outside
    2017..2100 is refused with the row and field named.
    """
    rows = np.arange(1, len(values) + 1) if rows is None else rows
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any():
        i = int(np.flatnonzero(numbers.isna().to_numpy())[0])
        raise DataError(source, f"not an epoch timestamp: {values.iloc[i]!r}", row=int(rows[i]), field=field)
    ints = numbers.to_numpy(dtype="float64")
    is_ms = (ints >= _EPOCH_S_MIN * 1e3) & (ints < _EPOCH_S_MAX * 1e3)
    is_us = (ints >= _EPOCH_S_MIN * 1e6) & (ints < _EPOCH_S_MAX * 1e6)
    bad = ~(is_ms | is_us)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = int(ints[i])
        hint = ""
        if _EPOCH_S_MIN <= value < _EPOCH_S_MAX:
            hint = " (looks like seconds; expected milliseconds or microseconds)"
        elif _EPOCH_S_MIN * 1e9 <= value < _EPOCH_S_MAX * 1e9:
            hint = " (looks like nanoseconds; expected milliseconds or microseconds)"
        raise DataError(
            source, f"timestamp {value} is not a 2017..2100 epoch in ms or µs{hint}", row=int(rows[i]), field=field
        )
    # Flooring a fraction of a millisecond away would move the bar silently onto the grid.
    fractional = (ints != np.floor(ints)) | (is_us & (np.mod(ints, 1000) != 0))
    if fractional.any():
        i = int(np.flatnonzero(fractional)[0])
        raise DataError(
            source,
            f"timestamp {values.iloc[i]!r} is not a whole millisecond: off the bar grid",
            row=int(rows[i]),
            field=field,
        )
    millis = np.where(is_us, ints // 1000, ints).astype("int64")
    return pd.Series(pd.to_datetime(millis, unit="ms").astype("datetime64[ms]"), index=values.index)


def validate_ohlcv(frame: pd.DataFrame, source: str, time_col: str) -> pd.DataFrame:
    """Check OHLCV rows and return them sorted by (symbol, time) without the `_row` column.

    Raises :class:`DataError` naming the first offending row and field for: a price that is not
    positive, high below low/open/close, low above open/close, negative volume, or a
    duplicate (symbol, time).
    """
    rows = _rows(frame)
    checks: list[tuple[str, str, np.ndarray]] = [
        ("open", "price is not positive", (frame[PRICE_COLUMNS] <= 0).any(axis=1).to_numpy()),
        ("high", "high < low", (frame["high"] < frame["low"]).to_numpy()),
        ("high", "high < max(open, close)", (frame["high"] < frame[["open", "close"]].max(axis=1)).to_numpy()),
        ("low", "low > min(open, close)", (frame["low"] > frame[["open", "close"]].min(axis=1)).to_numpy()),
        ("volume", "volume is negative", (frame["volume"] < 0).to_numpy()),
    ]
    for field, message, bad in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            values = ", ".join(f"{c}={frame[c].iloc[i]}" for c in OHLCV_COLUMNS)
            raise DataError(source, f"{message} ({values})", row=int(rows[i]), field=field)
    keys = ["symbol", time_col] if "symbol" in frame.columns else [time_col]
    dup = frame.duplicated(keys, keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        same = (frame[keys] == frame[keys].iloc[i]).all(axis=1).to_numpy()
        first = int(rows[np.flatnonzero(same)[0]])
        raise DataError(
            source,
            f"duplicate {time_col} {frame[time_col].iloc[i]} (first seen at row {first})",
            row=int(rows[i]),
            field=time_col,
        )
    out = frame.drop(columns=[_ROW], errors="ignore").sort_values(keys, kind="stable")
    return out.reset_index(drop=True)


def complete_days(
    frame: pd.DataFrame, covered_from: pd.Timestamp, covered_to: pd.Timestamp, source: str = ""
) -> Iterator[tuple[dt.date, pd.DataFrame]]:
    """Yield ``(day, minutes)`` for every UTC day wholly inside ``[covered_from, covered_to)``.

    `covered_from`/`covered_to` is the span the source has read: a day cut by the span's ends
    is partial and is not yielded, so a partial day can never masquerade as a daily bar. A day
    inside it may still lack minutes, an exchange gap (e.g. 2021-09-29 07:00-08:59) or a hole
    in the data; :func:`regime_pipeline.core.data.quality.intraday_day_problem` tells them apart
    before anything is stored. Days with no rows are not yielded. Each frame's
    ``attrs["source"]`` is `source` (the files or endpoint it came from), for error messages.
    """
    if frame.empty:
        return
    first_day = covered_from.ceil("D")
    last_end = covered_to.floor("D")
    if last_end <= first_day:
        return
    mask = (frame["open_time"] >= first_day) & (frame["open_time"] < last_end)
    inside = frame.loc[mask]
    if inside.empty:
        return
    days = inside["open_time"].dt.floor("D")
    for day, group in inside.groupby(days, sort=True):
        minutes = group.reset_index(drop=True)
        minutes.attrs["source"] = source
        yield day.date(), minutes


def aggregate_day(bars: pd.DataFrame) -> dict[str, float]:
    """One day's OHLCV from its intraday bars (``open_time`` + OHLCV, any order): the first open,
    the highest high, the lowest low, the last close and the summed volume."""
    ordered = bars.sort_values("open_time")
    return {
        "open": float(ordered["open"].iloc[0]),
        "high": float(ordered["high"].max()),
        "low": float(ordered["low"].min()),
        "close": float(ordered["close"].iloc[-1]),
        "volume": float(ordered["volume"].sum()),
    }


def aggregate_minutes_pandas(minutes: pd.DataFrame) -> pd.DataFrame:
    """Reference daily aggregation of 1-minute bars with pandas (tests and benchmarks).

    Returns columns ``symbol, date, open, high, low, close, volume, n_minutes``.
    """
    day = minutes["open_time"].dt.floor("D")
    grouped = minutes.sort_values("open_time").groupby([minutes["symbol"], day], sort=True)
    out = grouped.agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
        n_minutes=("open", "size"),
    ).reset_index()
    out = out.rename(columns={"open_time": "date"})
    out["date"] = out["date"].dt.date
    return out


def combine_daily(minute_daily: pd.DataFrame, klines: pd.DataFrame, intraday_daily: pd.DataFrame | None = None) -> pd.DataFrame:
    """Daily bars from the best source of each (symbol, date): aggregated minutes where a complete
    minute day exists, else a day aggregated from coarser intraday bars, else the exchange's kline.

    :param minute_daily: ``symbol, date, open, high, low, close, volume, n_minutes``
    :param klines: ``symbol, date, open, high, low, close, volume``
    :param intraday_daily: ``symbol, date, open, high, low, close, volume, n_minutes, source`` with
        `source` the interval the day was aggregated from (``3m`` .. ``12h``)
    :return: frame with :data:`DAILY_BAR_COLUMNS`, sorted by (date, symbol)
    """
    parts = [minute_daily.assign(source="minutes")]
    if intraday_daily is not None:
        parts.append(intraday_daily)
    parts.append(klines.assign(source="klines", n_minutes=pd.NA))
    taken: set[tuple[str, dt.date]] = set()
    kept = []
    for part in parts:
        if part.empty:
            continue
        keys = list(zip(part["symbol"], part["date"]))
        keep = [k not in taken for k in keys]
        taken.update(keys)
        kept.append(part.loc[keep, DAILY_BAR_COLUMNS].astype({"n_minutes": "Int32"}))
    kept = [p for p in kept if not p.empty]
    if not kept:
        return empty_daily_bars()
    out = pd.concat(kept, ignore_index=True)
    out["date"] = pd.to_datetime(out["date"]).dt.date
    return out.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


def empty_daily_bars() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in DAILY_BAR_COLUMNS})
    frame["date"] = frame["date"].astype("object")
    frame["symbol"] = frame["symbol"].astype("object")
    frame["source"] = frame["source"].astype("object")
    frame["n_minutes"] = frame["n_minutes"].astype("Int32")
    return frame


def days_in(start: dt.date, end: dt.date) -> list[dt.date]:
    """The UTC days in ``[start, end)``."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]
