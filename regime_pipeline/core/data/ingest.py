"""Ingestion of 1-minute bars: complete UTC days from a source into the lake, one day at a time.

Each day is verified before it is written (see :func:`quality.intraday_day_problem`) and written as
soon as it is verified, so an interrupted ingestion resumes at the first day not stored, and a
refused day stops the run before anything stored for it is replaced.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from regime_pipeline.core.data import quality
from regime_pipeline.core.data.bars import days_in
from regime_pipeline.core.data.lake import MinuteLake
from regime_pipeline.core.data.sources.base import MarketDataSource
from regime_pipeline.core.errors import DataError


@dataclass
class IngestSummary:
    """What an ingestion stored: days and rows per symbol, and days skipped as already stored."""

    days_written: dict[str, int] = field(default_factory=dict)
    rows_written: int = 0
    days_already_stored: int = 0
    seconds: float = 0.0

    def table(self) -> pd.DataFrame:
        """Days written per symbol: columns ``symbol, days_written``."""
        return pd.DataFrame({"symbol": list(self.days_written), "days_written": list(self.days_written.values())})


def ingest_minutes(
    source: MarketDataSource,
    lake: MinuteLake,
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    *,
    gaps: Sequence[tuple[dt.datetime, dt.datetime]],
    price_rtol: float,
    volume_rtol: float,
    refetch: bool = False,
    spans: Mapping[str, tuple[dt.date, dt.date | None]] | None = None,
    log: Any | None = None,
) -> IngestSummary:
    """Store every complete UTC day of 1-minute bars the source has for `symbols` in ``[start, end)``.

    A day already in the lake is kept and not fetched again unless `refetch`. The source's own
    daily klines of the symbols with days to fetch are read first: a day whose minutes are short of 1,440 is stored
    only if they add up to its kline or miss only minutes of a known exchange gap (`gaps`), and
    wherever a kline exists the minutes must reproduce it (`price_rtol`, `volume_rtol`).

    `spans` gives a symbol's first and last day of trading (None: still trading): no day outside
    it is fetched, since a symbol can be reused by another asset after its last day (LUNAUSDT).

    :raises DataError: naming the symbol, the day, the files or endpoint it came from and what is
        wrong; days verified before it are stored, nothing stored for it or after it is touched
    """
    log = log if log is not None else logging.getLogger(__name__)
    began = time.monotonic()
    summary = IngestSummary()
    stored = lake.stored_days(symbols)
    stored_keys = set(zip(stored["symbol"], stored["date"]))
    spans = spans or {}

    def traded(symbol: str, day: dt.date) -> bool:
        first, last = spans.get(symbol, (None, None))
        return (first is None or day >= first) and (last is None or day <= last)

    todo = {s: [d for d in days_in(start, end) if traded(s, d) and (refetch or (s, d) not in stored_keys)] for s in symbols}
    summary.days_already_stored = sum(
        sum(1 for d in days_in(start, end) if traded(s, d)) - len(days) for s, days in todo.items()
    )
    wanted = [s for s in symbols if todo[s]]
    klines = source.daily_klines(wanted, start, end) if wanted else None
    kline_of = {} if klines is None else {
        (s, d): row for s, d, row in zip(klines["symbol"], klines["date"], klines.to_dict("records"))
    }
    for symbol in wanted:
        for day, minutes in source.minute_days(symbol, todo[symbol][0], todo[symbol][-1] + dt.timedelta(days=1)):
            if not traded(symbol, day) or (not refetch and (symbol, day) in stored_keys):
                continue
            problem = quality.intraday_day_problem(
                day, minutes, kline_of.get((symbol, day)), gaps, price_rtol=price_rtol, volume_rtol=volume_rtol
            )
            if problem is not None:
                origin = minutes.attrs.get("source") or getattr(source, "name", "source")
                raise DataError(origin, f"{symbol} {day} not stored: {problem}")
            lake.write_day(symbol, day, minutes)
            summary.days_written[symbol] = summary.days_written.get(symbol, 0) + 1
            summary.rows_written += len(minutes)
        if summary.days_written.get(symbol):
            log.info(f"{symbol}: {summary.days_written[symbol]} days of 1-minute bars stored")
    summary.seconds = time.monotonic() - began
    return summary
