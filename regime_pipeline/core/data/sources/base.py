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
        """Yield ``(day, minutes)`` for each UTC day of `symbol` in ``[start, end)`` the source covers.

        `minutes` has columns ``open_time, open, high, low, close, volume`` and names where it
        came from in ``attrs["source"]`` (files, endpoint). A covered day is one the source read
        from 00:00 to 24:00: days cut by the ends of a download are never yielded. Minutes missing
        inside a covered day are judged before storing
        (:func:`regime_pipeline.core.data.quality.intraday_day_problem`). Days are yielded in order,
        one at a time, so a caller can store each before the next is fetched.
        """
        ...

    def intraday_days(self, symbol: str, start: dt.date, end: dt.date) -> Iterator[tuple[dt.date, str, pd.DataFrame]]:
        """Yield ``(day, interval, bars)`` for the UTC days of `symbol` in ``[start, end)`` that the
        source holds as bars of an interval from ``3m`` to ``12h`` (see
        :mod:`regime_pipeline.core.data.intervals`): interval by interval, finest first.

        `bars` is as for :meth:`minute_days`, on the interval's grid; covered days only, judged
        before use (:func:`regime_pipeline.core.data.quality.intraday_day_problem`). A source
        without such bars yields nothing.
        """
        ...

    def available_symbols(self, symbols: Sequence[str]) -> list[str]:
        """Those of `symbols` the source has any data for at all, in the order given.

        A symbol it has nothing for is absent from its bars, as before its listing, and is
        reported as such (a warning) rather than as missing days.
        """
        ...
