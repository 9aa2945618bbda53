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
    """Reads ``daily_klines.parquet`` and ``minute_bars.parquet`` (see ``data/PROVENANCE.md``).

    The minute file is the raw window as downloaded (2021-09-17 22:22 .. 2021-10-17 22:21 UTC
    for most assets); its first and last days are partial and are therefore never yielded.
    """

    name = "embedded"

    def __init__(self, daily_klines_path: str | Path, minute_bars_path: str | Path) -> None:
        self.daily_klines_path = Path(daily_klines_path)
        self.minute_bars_path = Path(minute_bars_path)
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
