"""The real Binance data shipped in ``data/embedded/``: daily klines and a 1-minute window."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from regime_pipeline.core.data import intervals
from regime_pipeline.core.data.bars import DAILY_KLINE_COLUMNS, MINUTE, MINUTE_COLUMNS, complete_days, validate_ohlcv
from regime_pipeline.core.errors import DataError


class EmbeddedSource:
    """Reads ``daily_klines.parquet``, ``minute_bars.parquet`` and ``daily_closes.parquet`` (see
    ``data/PROVENANCE.md``).

    The minute file is the raw window as downloaded (2021-09-17 22:22 .. 2021-10-17 22:21 UTC
    for most assets); its first and last days are partial and are therefore never yielded.
    """

    name = "embedded"

    def __init__(
        self, daily_klines_path: str | Path, minute_bars_path: str | Path, daily_closes_path: str | Path | None = None
    ) -> None:
        self.daily_klines_path = Path(daily_klines_path)
        self.minute_bars_path = Path(minute_bars_path)
        self.daily_closes_path = Path(daily_closes_path) if daily_closes_path else None
        self._minutes: pd.DataFrame | None = None
        self._klines: pd.DataFrame | None = None

    def _load_klines(self) -> pd.DataFrame:
        if self._klines is None:
            frame = pd.read_parquet(self.daily_klines_path)[DAILY_KLINE_COLUMNS]
            frame["date"] = pd.to_datetime(frame["date"]).dt.date
            self._klines = validate_ohlcv(frame, str(self.daily_klines_path), "date")
        return self._klines

    def _load_minutes(self) -> pd.DataFrame:
        if self._minutes is None:
            source = str(self.minute_bars_path)
            frame = pd.read_parquet(self.minute_bars_path)[MINUTE_COLUMNS]
            stamps = frame["open_time"].astype("datetime64[ns]")
            off_grid = intervals.off_grid(stamps, "1m")
            if off_grid.any():
                i = int(np.flatnonzero(off_grid)[0])
                message = f"open_time {stamps.iloc[i]} is not on a 1m boundary"
                raise DataError(source, message, row=i + 1, field="open_time")
            frame["open_time"] = stamps.astype("datetime64[ms]")
            self._minutes = validate_ohlcv(frame, source, "open_time")
        return self._minutes

    def daily_klines(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        klines = self._load_klines()
        mask = klines["symbol"].isin(list(symbols)) & (klines["date"] >= start) & (klines["date"] < end)
        return klines.loc[mask].reset_index(drop=True)

    def daily_closes(self, symbols: Sequence[str]) -> pd.DataFrame:
        """Close-only days (a close and no full bar): columns ``symbol, date, close``.

        :raises DataError: a close that is not a positive number, or a duplicate day, naming the file
        """
        if self.daily_closes_path is None:
            return pd.DataFrame({"symbol": pd.Series(dtype=object), "date": pd.Series(dtype=object),
                                 "close": pd.Series(dtype="float64")})
        source = str(self.daily_closes_path)
        frame = pd.read_parquet(self.daily_closes_path)[["symbol", "date", "close"]]
        frame["date"] = pd.to_datetime(frame["date"]).dt.date
        bad = ~(frame["close"] > 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(source, f"close {frame['close'].iloc[i]!r} is not a positive price", row=i + 1, field="close")
        dup = frame.duplicated(["symbol", "date"])
        if dup.any():
            i = int(np.flatnonzero(dup.to_numpy())[0])
            raise DataError(source, f"duplicate day {frame['date'].iloc[i]} of {frame['symbol'].iloc[i]}", row=i + 1, field="date")
        return frame.loc[frame["symbol"].isin(list(symbols))].sort_values(["symbol", "date"]).reset_index(drop=True)

    def minute_days(self, symbol: str, start: dt.date, end: dt.date) -> Iterator[tuple[dt.date, pd.DataFrame]]:
        minutes = self._load_minutes()
        own = minutes.loc[minutes["symbol"] == symbol, MINUTE_COLUMNS[1:]]
        if own.empty:
            return
        # The file covers exactly its first to its last bar (the download window).
        covered_from = own["open_time"].iloc[0]
        covered_to = own["open_time"].iloc[-1] + MINUTE
        window = own[(own["open_time"] >= pd.Timestamp(start)) & (own["open_time"] < pd.Timestamp(end))]
        yield from complete_days(window, covered_from, covered_to, str(self.minute_bars_path))

    def intraday_days(self, symbol: str, start: dt.date, end: dt.date) -> Iterator[tuple[dt.date, str, pd.DataFrame]]:
        """None: the embedded intraday data is the 1-minute window, which ingestion stores in the lake."""
        return iter(())

    def available_symbols(self, symbols: Sequence[str]) -> list[str]:
        """Those of `symbols` with daily klines in the embedded file."""
        held = set(self._load_klines()["symbol"])
        return [s for s in symbols if s in held]
