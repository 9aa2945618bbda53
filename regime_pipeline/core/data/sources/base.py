"""The interface every market data source implements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import pandas as pd


@runtime_checkable
class MarketDataSource(Protocol):
    """A source of Binance spot bars.

    Both methods take UTC days as a half-open range ``[start, end)`` and return validated
    frames in the conventions of :mod:`regime_pipeline.core.data.bars` (naive UTC ``open_time``,
    ``date`` as ``datetime.date``, float64 OHLCV, base-asset volume). Bad data raises
    :class:`~regime_pipeline.core.errors.DataError` naming the file or endpoint, the row
    and the field.
    """

    name: str

    def daily_klines(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        """The exchange's own daily candles: columns ``symbol, date, open, high, low, close, volume``."""
        ...

    def minute_days(
        self, symbol: str, start: dt.date, end: dt.date
    ) -> Iterator[tuple[dt.date, pd.DataFrame]]:
        """Yield ``(day, minutes)`` for each *complete* UTC day of `symbol` in ``[start, end)``.

        `minutes` has columns ``open_time, open, high, low, close, volume``. A complete day is
        one the source covers from 00:00 to 24:00 (it may still have gaps the exchange itself
        had); partial days are never yielded. Days are yielded in order, one at a time, so a
        caller can store each before the next is fetched.
        """
        ...
