"""Daily bars from intraday bars coarser than a minute (3m .. 12h): complete UTC days, verified, aggregated.

A user may hold 5-minute or hourly files rather than 1-minute ones. Such a day becomes a daily
bar under the rules a day of minutes is stored by (:func:`quality.intraday_day_problem`): every
bar of the day is there (288 five-minute bars, 24 hourly bars, ...), or the missing bars lie
wholly in a known exchange gap, or the bars add up to the exchange's own daily kline; wherever
that kline exists they must reproduce it. A day that fails is an error naming its files, never
a silently short daily bar.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Sequence
from typing import Any

import pandas as pd

from regime_pipeline.core.data import intervals, quality
from regime_pipeline.core.data.bars import aggregate_day
from regime_pipeline.core.data.sources.base import MarketDataSource
from regime_pipeline.core.errors import DataError

# The columns of `daily_bars` (core/data/bars.py DAILY_BAR_COLUMNS), keyed by symbol first.
INTRADAY_DAILY_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "volume", "n_minutes", "source"]


def daily_from_intraday(
    source: MarketDataSource,
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    klines: pd.DataFrame,
    *,
    gaps: Sequence[tuple[dt.datetime, dt.datetime]],
    price_rtol: float,
    volume_rtol: float,
    skip: Collection[tuple[str, dt.date]] = (),
    log: Any | None = None,
) -> pd.DataFrame:
    """One daily bar per (symbol, UTC day) in ``[start, end)`` that the source holds as 3m..12h bars.

    Where a day is held at several intervals the finest is used. Days in `skip` (already built
    from 1-minute bars) are not read.

    :param klines: the source's daily klines of the window (``symbol, date``, OHLCV) to verify against
    :return: columns ``symbol, date``, OHLCV (prices in the quote currency, volume in base-asset
        units), ``n_minutes`` (bars × the interval's minutes) and ``source`` (the interval, e.g. ``5m``)
    :raises DataError: naming the symbol, the day, its files and what is wrong, for a day whose bars
        are not the whole day or disagree with its kline
    """
    log = log if log is not None else logging.getLogger(__name__)
    kline_of = {(s, d): row for s, d, row in zip(klines["symbol"], klines["date"], klines.to_dict("records"))}
    done = set(skip)
    rows = []
    for symbol in symbols:
        used: dict[str, int] = {}
        for day, interval, bars in source.intraday_days(symbol, start, end):
            if (symbol, day) in done:
                continue
            problem = quality.intraday_day_problem(
                day, bars, kline_of.get((symbol, day)), gaps, interval=interval,
                price_rtol=price_rtol, volume_rtol=volume_rtol,
            )
            if problem is not None:
                origin = bars.attrs.get("source") or getattr(source, "name", "source")
                raise DataError(origin, f"{symbol} {day} not used: {problem}")
            minutes = int(intervals.step(interval) / pd.Timedelta(minutes=1))
            rows.append({"symbol": symbol, "date": day, **aggregate_day(bars), "n_minutes": len(bars) * minutes,
                         "source": interval})
            done.add((symbol, day))
            used[interval] = used.get(interval, 0) + 1
        if used:
            log.info(f"{symbol}: daily bars from " + ", ".join(f"{n} days of {i} bars" for i, n in used.items()))
    if not rows:
        frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in INTRADAY_DAILY_COLUMNS})
        return frame.astype({"symbol": "object", "date": "object", "source": "object", "n_minutes": "Int32"})
    out = pd.DataFrame(rows, columns=INTRADAY_DAILY_COLUMNS)
    out["n_minutes"] = out["n_minutes"].astype("Int32")
    return out.sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)

