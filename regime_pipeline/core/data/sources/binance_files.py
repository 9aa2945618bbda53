"""Market data from files a user drops in a folder: Binance bulk kline CSV/zip files and freqtrade data.

Two families of file names are recognised, anywhere under the folder:

* Binance bulk downloads (data.binance.vision, spot klines):
  ``<SYMBOL>-<interval>-<YYYY-MM-DD>.csv|.zip`` (one day) and ``<SYMBOL>-<interval>-<YYYY-MM>.csv|.zip``
  (one month). Rows are the 12-column kline layout, open time in epoch milliseconds, or
  microseconds from 2025-01-01 on; an optional header line is skipped. A ``.CHECKSUM`` file
  next to a data file, as published by Binance, is used to verify it.
* freqtrade data files: ``<BASE>_<QUOTE>-<interval>.json`` (a list of
  ``[open_time_ms, open, high, low, close, volume]``) and ``<BASE>_<QUOTE>-<interval>.feather``
  (columns ``date`` as tz-aware UTC datetimes, ``open, high, low, close, volume``).

`interval` is any Binance interval from ``1m`` to ``1d`` that divides a day (``1m, 3m, 5m, 15m,
30m, 1h, 2h, 4h, 6h, 8h, 12h, 1d``; see :mod:`regime_pipeline.core.data.intervals`): ``1m`` bars
are what ingestion stores in the minute lake, ``3m`` to ``12h`` bars are aggregated to UTC days
(:func:`regime_pipeline.core.data.intraday.daily_from_intraday`), ``1d`` bars are the exchange's
daily klines. These files are not read, each reported as a warning naming it: a file of another
interval (``1s``, ``3d``, ``1w``, ``1M``), and a file for a symbol outside the universe (the
folder may hold more than the pipeline trades). Other files (README, ``.CHECKSUM``) are ignored. Prices are in
the quote currency, volume in base-asset units, times are candle open times in UTC. Errors name
the file, the 1-based row (CSV line number with any header counted; record index + 1 for JSON
and feather) and the field.

A file vouches only for the bars it holds: an empty file is an error, a bulk file whose bars stop
before the end of the period its name declares is reported, and a freqtrade file's last candle
is used only if it had closed when the file was written (its modification time).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from regime_pipeline.configs import universe
from regime_pipeline.core.data import intervals
from regime_pipeline.core.data.bars import (
    DAILY_KLINE_COLUMNS,
    DAY,
    OHLCV_COLUMNS,
    complete_days,
    epoch_to_timestamp,
    to_numeric,
    validate_ohlcv,
)
from regime_pipeline.core.errors import DataError

KLINE_CSV_COLUMNS = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_asset_volume",
    "number_of_trades",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
    "ignore",
]
FREQTRADE_JSON_COLUMNS = ["open_time", *OHLCV_COLUMNS]

_ROW = "_row"
# Any interval-like part is matched, so that a file of an interval the pipeline does not read is
# reported rather than passed over (see core/data/intervals.py).
_INTERVAL = r"(?P<interval>\d+(?:mo|[smhdwM]))"
_BULK_NAME = re.compile(
    rf"(?P<symbol>[A-Z0-9]+)-{_INTERVAL}-(?P<period>\d{{4}}-\d{{2}}(?:-\d{{2}})?)\.(?P<ext>csv|zip)"
)
_FREQTRADE_NAME = re.compile(rf"(?P<base>[A-Z0-9]+)_(?P<quote>[A-Z0-9]+)-{_INTERVAL}\.(?P<ext>json|feather)")
# A header is a line of 12 column names; anything else is data and must parse as numbers.
_HEADER_FIELD = re.compile(r"[A-Za-z_ ]+")
# Parsed 1-minute files are large (a month is ~45k rows); keep only the few a sequential
# day-by-day walk revisits, so reading years of history does not hold it all in memory.
_MINUTE_CACHE_FILES = 16


@dataclass(frozen=True)
class DataFile:
    """One recognised file: what its name declares.

    ``period_from``/``period_to`` is the half-open UTC span a bulk file's name declares (a day
    or a month); freqtrade names declare no period, so both are None.
    """

    path: Path
    family: str  # "binance" or "freqtrade"
    symbol: str
    interval: str  # as the name spells it; only intervals.USED_INTERVALS are read
    period_from: pd.Timestamp | None = None
    period_to: pd.Timestamp | None = None

    def may_overlap(self, start: pd.Timestamp, end: pd.Timestamp) -> bool:
        """Whether the file can hold rows in ``[start, end)`` (always true without a declared period)."""
        if self.period_from is None or self.period_to is None:
            return True
        return self.period_from < end and start < self.period_to


@dataclass(frozen=True)
class ParsedFile:
    """A file's validated rows and the span it vouches for.

    `frame` has columns ``open_time`` (naive UTC ``datetime64[ms]``), OHLCV as float64 and
    ``_row`` (1-based row in the file), sorted by ``open_time``. ``covered_from``/``covered_to``
    is the half-open span the file was meant to hold (see :func:`parse_file`).
    """

    file: DataFile
    frame: pd.DataFrame
    covered_from: pd.Timestamp
    covered_to: pd.Timestamp


# --------------------------------------------------------------------------- file names


def declared_period(period: str, source: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The UTC span ``[from, to)`` of a ``YYYY-MM-DD`` (a day) or ``YYYY-MM`` (a month) name part."""
    try:
        if len(period) == len("YYYY-MM-DD"):
            start = pd.Timestamp(dt.date.fromisoformat(period))
            return start, start + DAY
        start = pd.Timestamp(dt.date.fromisoformat(f"{period}-01"))
    except ValueError as exc:
        raise DataError(source, f"file name declares an invalid period {period!r}") from exc
    return start, start + pd.offsets.MonthBegin(1)


def classify(path: Path) -> DataFile | None:
    """Recognise a data file by its name; None for any other file (README, .CHECKSUM, ...).

    Files of intervals the pipeline does not read, and for any symbol, are returned as well:
    the caller decides what it uses and reports the rest.
    """
    if match := _BULK_NAME.fullmatch(path.name):
        symbol, interval = match["symbol"], match["interval"]
        if intervals.unused_reason(interval) is not None:
            return DataFile(path, "binance", symbol, interval)
        period_from, period_to = declared_period(match["period"], str(path))
        return DataFile(path, "binance", symbol, interval, period_from, period_to)
    if match := _FREQTRADE_NAME.fullmatch(path.name):
        return DataFile(path, "freqtrade", match["base"] + match["quote"], match["interval"])
    return None


# --------------------------------------------------------------------------- raw bytes


def verify_checksum(path: Path) -> None:
    """Compare `path` with the sha256 in a sibling ``<name>.CHECKSUM`` file, if there is one."""
    checksum = path.with_name(path.name + ".CHECKSUM")
    if not checksum.is_file():
        return
    fields = checksum.read_text(errors="replace").split()
    if not fields:
        raise DataError(str(checksum), "empty checksum file")
    expected = fields[0].lower()
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise DataError(
            str(path), f"sha256 {actual} does not match {checksum.name} ({expected}): incomplete or altered download"
        )


def _truncated_zip_error(path: Path, data: bytes) -> DataError:
    """Explain an unreadable zip, naming the row where a partially written archive breaks off.

    The archive's central directory is written last, so a partial zip has none; its first local
    entry can still be inflated as far as it goes to count the complete CSV lines.
    """
    source = str(path)
    # Local file header: signature, version, flags, method, time, date, crc, sizes, name and extra lengths.
    header = struct.Struct("<4s2x2xH2x2x4x4x4xHH")
    if len(data) < header.size or data[:4] != b"PK\x03\x04":
        return DataError(source, "not a zip archive (empty or partially written file?)", row=1)
    _, method, name_len, extra_len = header.unpack_from(data)
    payload = data[header.size + name_len + extra_len :]
    try:
        text = zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload) if method == 8 else payload
    except zlib.error:
        return DataError(source, "zip archive is corrupt (compressed data is damaged)")
    complete_lines = text.count(b"\n")
    return DataError(
        source,
        f"zip archive is truncated (partially written or interrupted download): data ends inside row "
        f"{complete_lines + 1}",
        row=complete_lines + 1,
    )


def read_bulk_text(path: Path) -> str:
    """The CSV text of a bulk file, unpacking a zip, which must hold one CSV named like the zip."""
    source = str(path)
    verify_checksum(path)
    data = path.read_bytes()
    if path.suffix == ".zip":
        expected = path.stem + ".csv"
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = archive.namelist()
                if names != [expected]:
                    raise DataError(source, f"zip holds {names}, expected exactly [{expected!r}]")
                data = archive.read(expected)
        except zipfile.BadZipFile as exc:
            if "CRC" in str(exc):
                raise DataError(source, f"zip archive is corrupt: {exc}") from exc
            raise _truncated_zip_error(path, data) from exc
        except (zlib.error, EOFError) as exc:
            raise DataError(source, f"zip archive is corrupt: {exc}") from exc
    # Undecodable bytes become U+FFFD so the number parser reports the row and field they are in.
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- parsing


def split_csv_lines(text: str, source: str) -> tuple[list[str], int]:
    """Data lines of a bulk kline CSV and the 1-based line number of the first of them.

    Skips a header line if present and refuses any line without exactly 12 fields, which is
    how a file cut short mid-line is caught.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    first_line = 1
    if lines and all(_HEADER_FIELD.fullmatch(field.strip()) for field in lines[0].split(",")) and (
        lines[0].count(",") == len(KLINE_CSV_COLUMNS) - 1
    ):
        lines = lines[1:]
        first_line = 2
    expected = len(KLINE_CSV_COLUMNS) - 1
    for offset, line in enumerate(lines):
        commas = line.count(",")
        if commas != expected:
            row = first_line + offset
            hint = " (truncated file?)" if commas < expected and offset == len(lines) - 1 else ""
            raise DataError(
                source, f"expected {expected + 1} comma-separated fields, found {commas + 1}{hint}", row=row
            )
    return lines, first_line


def finish_frame(raw: pd.DataFrame, file: DataFile, time_field: str = "open_time") -> pd.DataFrame:
    """Decode ``open_time`` and OHLCV of `raw` (keeping ``_row``), check them and sort by time.

    Checks that each bar opens on its interval's boundary and, for a file whose name declares a
    period, inside that period: a row outside it means a wrong timestamp unit or a misnamed file.
    `time_field` is what the file calls the open time, for error messages.
    """
    source = str(file.path)
    rows = raw[_ROW].to_numpy()
    frame = raw[[_ROW, "open_time", *OHLCV_COLUMNS]].copy()
    frame["open_time"] = epoch_to_timestamp(raw["open_time"], source, time_field, rows)
    frame = to_numeric(frame, OHLCV_COLUMNS, source)
    off_grid = intervals.off_grid(frame["open_time"], file.interval)
    if off_grid.any():
        i = int(np.flatnonzero(off_grid)[0])
        raise DataError(
            source,
            f"{time_field} {frame['open_time'].iloc[i]} is not on a {file.interval} boundary",
            row=int(rows[i]),
            field=time_field,
        )
    if file.period_from is not None and file.period_to is not None:
        outside = ((frame["open_time"] < file.period_from) | (frame["open_time"] >= file.period_to)).to_numpy()
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise DataError(
                source,
                f"open_time {frame['open_time'].iloc[i]} is outside the period "
                f"[{file.period_from}, {file.period_to}) the file name declares "
                "(wrong timestamp unit or misnamed file?)",
                row=int(rows[i]),
                field="open_time",
            )
    # validate_ohlcv drops `_row` and sorts stably; sorting first keeps the row numbers aligned.
    frame = frame.sort_values("open_time", kind="stable").reset_index(drop=True)
    checked = validate_ohlcv(frame, source, "open_time")
    checked[_ROW] = frame[_ROW].to_numpy()
    return checked


def parse_bulk(file: DataFile) -> pd.DataFrame:
    """Rows of a Binance bulk kline CSV or zip (see :func:`finish_frame` for the columns)."""
    source = str(file.path)
    lines, first_line = split_csv_lines(read_bulk_text(file.path), source)
    if not lines:
        raise DataError(source, "no bars: the file is empty (an interrupted download?)")
    raw = pd.read_csv(
        io.StringIO("\n".join(lines)),
        header=None,
        names=KLINE_CSV_COLUMNS,
        usecols=range(6),
        dtype=str,
        keep_default_na=False,
        na_filter=False,
    )
    raw[_ROW] = np.arange(first_line, first_line + len(raw))
    return finish_frame(raw, file)


def _json_records(file: DataFile) -> list[object]:
    """The records of a freqtrade JSON file; a cut-off file names the record it breaks in."""
    source = str(file.path)
    text = file.path.read_text(errors="replace")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        # Every complete record closed one "]" before the error: the next record is the broken one.
        row = text[: exc.pos].count("]") + 1
        raise DataError(source, f"not valid JSON (truncated file?): {exc.msg}", row=row) from exc
    if not isinstance(records, list):
        raise DataError(source, "expected a JSON list of [open_time_ms, open, high, low, close, volume] records")
    width = len(FREQTRADE_JSON_COLUMNS)
    for i, record in enumerate(records):
        if not isinstance(record, list) or len(record) != width:
            raise DataError(source, f"expected a list of {width} values, got {record!r}", row=i + 1)
    return records


def parse_freqtrade_json(file: DataFile) -> pd.DataFrame:
    """Rows of a freqtrade ``.json`` file (open time in epoch milliseconds)."""
    records = _json_records(file)
    raw = pd.DataFrame(records, columns=FREQTRADE_JSON_COLUMNS, dtype=object)
    raw[_ROW] = np.arange(1, len(raw) + 1)
    return finish_frame(raw, file)


def parse_freqtrade_feather(file: DataFile) -> pd.DataFrame:
    """Rows of a freqtrade ``.feather`` file (``date`` as tz-aware datetimes, converted to UTC)."""
    source = str(file.path)
    try:
        table = pd.read_feather(file.path)
    except Exception as exc:  # pyarrow raises a variety of types for damaged files
        raise DataError(source, f"not a readable feather file (truncated?): {exc}") from exc
    for column in ["date", *OHLCV_COLUMNS]:
        if column not in table.columns:
            raise DataError(source, "missing column", field=column)
    dates = table["date"]
    rows = np.arange(1, len(table) + 1)
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        if dates.isna().any():
            i = int(np.flatnonzero(dates.isna().to_numpy())[0])
            raise DataError(source, "missing date", row=int(rows[i]), field="date")
        # Back to epoch microseconds so the same 2017..2100 range check, and the refusal of a
        # fraction of a millisecond, apply as for the other files; a finer part is refused here.
        nanos = dates.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]").astype("int64")
        finer = (nanos % 1000 != 0).to_numpy()
        if finer.any():
            i = int(np.flatnonzero(finer)[0])
            message = f"date {dates.iloc[i]} is not a whole millisecond: off the bar grid"
            raise DataError(source, message, row=int(rows[i]), field="date")
        epoch = nanos // 1000
    elif pd.api.types.is_datetime64_dtype(dates):
        raise DataError(source, "date has no time zone; freqtrade writes UTC-aware dates", field="date")
    else:
        epoch = dates
    raw = table[OHLCV_COLUMNS].copy()
    raw["open_time"] = epoch.to_numpy()
    raw[_ROW] = rows
    return finish_frame(raw, file, time_field="date")


def written_at(path: Path) -> pd.Timestamp:
    """When `path` was last written (its modification time), naive UTC."""
    return pd.Timestamp(path.stat().st_mtime, unit="s")


def parse_file(file: DataFile, log: Any | None = None) -> ParsedFile:
    """Parse and validate one file and work out the span it covers.

    A bulk file covers the period its name declares; bars missing inside it are judged day by
    day when they are stored, and bars that stop before the period's end are reported to `log`.
    A freqtrade file covers its first bar to the end of its last closed one: its last candle is
    dropped, with a warning, if it had not closed when the file was written (a download taken
    while that candle was still open holds its partial values).

    :raises DataError: naming the file, for a file without bars
    """
    log = log if log is not None else logging.getLogger(__name__)
    step = intervals.step(file.interval)
    if file.family == "binance":
        frame = parse_bulk(file)
        assert file.period_from is not None and file.period_to is not None
        last = frame["open_time"].iloc[-1]
        if last + step < file.period_to:
            log.warning(
                f"{file.path}: bars stop at {last} (open time), before the end of the period its name declares "
                f"({file.period_to - step}); the days after it are not in the file"
            )
        return ParsedFile(file, frame, file.period_from, file.period_to)
    frame = parse_freqtrade_json(file) if file.path.suffix == ".json" else parse_freqtrade_feather(file)
    if frame.empty:
        raise DataError(str(file.path), "no bars: the file holds no candle (an interrupted download?)")
    written = written_at(file.path)
    last = frame["open_time"].iloc[-1]
    if last + step > written:
        log.warning(
            f"{file.path}: last candle {last} not used: it closes at {last + step}, after the file was "
            f"written ({written:%Y-%m-%d %H:%M:%S} UTC), so it holds partial values"
        )
        frame = frame.iloc[:-1]
        if frame.empty:
            raise DataError(str(file.path), "no closed candle: its one candle was still open when the file was written")
    return ParsedFile(file, frame, frame["open_time"].iloc[0], frame["open_time"].iloc[-1] + step)


# --------------------------------------------------------------------------- combining files


def rows_between(parsed: ParsedFile, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The rows of a parsed file with ``open_time`` in ``[start, end)``."""
    times = parsed.frame["open_time"].to_numpy()
    lo, hi = np.searchsorted(times, np.datetime64(start, "ms")), np.searchsorted(times, np.datetime64(end, "ms"))
    return parsed.frame.iloc[lo:hi]


def merge_files(parts: Sequence[tuple[ParsedFile, pd.DataFrame]]) -> pd.DataFrame:
    """Combine rows from overlapping files: identical bars count once, differing ones are an error.

    :return: columns ``open_time`` and OHLCV, sorted by ``open_time``
    :raises DataError: naming both files, the row in the first and the first field that differs
    """
    columns = ["open_time", *OHLCV_COLUMNS]
    frames = [rows for _, rows in parts if not rows.empty]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="datetime64[ms]" if c == "open_time" else "float64") for c in columns})
    if len(frames) == 1:
        return frames[0][columns].reset_index(drop=True)
    tagged = pd.concat(
        [rows.assign(_file=i) for i, (_, rows) in enumerate(parts) if not rows.empty], ignore_index=True
    ).sort_values(["open_time", "_file"], kind="stable")
    first = tagged.groupby("open_time", sort=False)[[*OHLCV_COLUMNS, _ROW, "_file"]].transform("first")
    differs = tagged[OHLCV_COLUMNS].ne(first[OHLCV_COLUMNS])
    bad = differs.any(axis=1).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        field = OHLCV_COLUMNS[int(np.flatnonzero(differs.iloc[i].to_numpy())[0])]
        here, there = parts[int(first["_file"].iloc[i])][0], parts[int(tagged["_file"].iloc[i])][0]
        raise DataError(
            str(here.file.path),
            f"open_time {tagged['open_time'].iloc[i]} conflicts with {there.file.path} row "
            f"{int(tagged[_ROW].iloc[i])}: {field} {first[field].iloc[i]} vs {tagged[field].iloc[i]}",
            row=int(first[_ROW].iloc[i]),
            field=field,
        )
    merged = tagged.drop_duplicates("open_time", keep="first")
    return merged[columns].reset_index(drop=True)


def union_spans(spans: Sequence[tuple[pd.Timestamp, pd.Timestamp]]) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The union of half-open ``[from, to)`` spans as disjoint, sorted spans (touching spans join)."""
    merged: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def empty_daily_klines() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in DAILY_KLINE_COLUMNS})
    return frame.astype({"symbol": "object", "date": "object"})


# --------------------------------------------------------------------------- the source


class BinanceFilesSource:
    """Bars from a folder of Binance bulk kline files and freqtrade data files.

    The folder is scanned once, on first use, including sub-folders. A file is parsed only
    when a request reaches into the period its name declares (freqtrade files declare none and
    are parsed on the first request for their symbol and interval), and parsed files are cached.
    The folder may hold files for only some of the symbols: :meth:`available_symbols` says which.

    :param folder: where the files are
    :param symbols: the symbols whose files are read; defaults to ``configs/universe.yaml``
    :param log: receives a warning for each file that is not used, or not used whole
    """

    name = "binance_files"

    def __init__(self, folder: str | Path, symbols: Sequence[str] | None = None, log: Any | None = None) -> None:
        self.folder = Path(folder)
        self.symbols = list(universe().symbols if symbols is None else symbols)
        self.log = log if log is not None else logging.getLogger(__name__)
        self._files: dict[tuple[str, str], list[DataFile]] | None = None
        self._daily_cache: dict[Path, ParsedFile] = {}
        self._minute_cache: OrderedDict[Path, ParsedFile] = OrderedDict()

    def files(self, symbol: str, interval: str) -> list[DataFile]:
        """The recognised files for `symbol` at `interval` (one of ``intervals.USED_INTERVALS``),
        ordered by declared period."""
        if self._files is None:
            self._files = self._scan()
        return self._files.get((symbol, interval), [])

    def available_symbols(self, symbols: Sequence[str]) -> list[str]:
        """Those of `symbols` the folder has at least one file for, of any interval it reads."""
        if self._files is None:
            self._files = self._scan()
        held = {symbol for symbol, _ in self._files}
        return [s for s in symbols if s in held]

    def _scan(self) -> dict[tuple[str, str], list[DataFile]]:
        if not self.folder.is_dir():
            raise DataError(str(self.folder), "not a folder")
        index: dict[tuple[str, str], list[DataFile]] = {}
        for path in sorted(self.folder.rglob("*")):
            if not path.is_file() or (found := classify(path)) is None:
                continue
            if (reason := intervals.unused_reason(found.interval)) is not None:
                self.log.warning(f"{path}: not used: {reason}")
                continue
            if found.symbol not in self.symbols:
                self.log.warning(f"{path}: not used: {found.symbol} is not in the universe (configs/universe.yaml)")
                continue
            index.setdefault((found.symbol, found.interval), []).append(found)
        epoch = pd.Timestamp(0)
        for files in index.values():
            files.sort(key=lambda f: (f.period_from if f.period_from is not None else epoch, str(f.path)))
        return index

    def _parsed(self, file: DataFile) -> ParsedFile:
        # Daily files are small and every request reads them; intraday files are large and read in order.
        if file.interval == "1d":
            if file.path not in self._daily_cache:
                self._daily_cache[file.path] = parse_file(file, self.log)
            return self._daily_cache[file.path]
        cache = self._minute_cache
        if file.path in cache:
            cache.move_to_end(file.path)
        else:
            cache[file.path] = parse_file(file, self.log)
            while len(cache) > _MINUTE_CACHE_FILES:
                cache.popitem(last=False)
        return cache[file.path]

    def daily_klines(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        """Daily candles from ``1d`` files: columns ``symbol, date, open, high, low, close, volume``.

        Prices in the quote currency, volume in base-asset units; days in ``[start, end)``, sorted
        by (symbol, date). Symbols without ``1d`` files have no rows.
        """
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)
        out = []
        for symbol in sorted(set(symbols)):
            parsed = [self._parsed(f) for f in self.files(symbol, "1d") if f.may_overlap(lo, hi)]
            rows = merge_files([(p, rows_between(p, lo, hi)) for p in parsed])
            if rows.empty:
                continue
            rows.insert(0, "symbol", symbol)
            rows.insert(1, "date", rows.pop("open_time").dt.date)
            out.append(rows)
        if not out:
            return empty_daily_klines()
        return pd.concat(out, ignore_index=True)[DAILY_KLINE_COLUMNS]

    def minute_days(self, symbol: str, start: dt.date, end: dt.date) -> Iterator[tuple[dt.date, pd.DataFrame]]:
        """Yield ``(day, minutes)`` for each complete UTC day of `symbol` in ``[start, end)`` that
        ``1m`` files cover (see :meth:`interval_days`)."""
        yield from self.interval_days(symbol, "1m", start, end)

    def intraday_days(self, symbol: str, start: dt.date, end: dt.date) -> Iterator[tuple[dt.date, str, pd.DataFrame]]:
        """Yield ``(day, interval, bars)`` for the days of `symbol` in ``[start, end)`` that files of an
        interval from ``3m`` to ``12h`` cover: interval by interval, finest first, days in order."""
        for interval in intervals.INTRADAY_INTERVALS[1:]:
            for day, bars in self.interval_days(symbol, interval, start, end):
                yield day, interval, bars

    def interval_days(
        self, symbol: str, interval: str, start: dt.date, end: dt.date
    ) -> Iterator[tuple[dt.date, pd.DataFrame]]:
        """Yield ``(day, bars)`` for each UTC day of `symbol` in ``[start, end)`` covered by `interval` files.

        `bars` has columns ``open_time`` (naive UTC ``datetime64[ms]``, on the interval's grid) and
        float64 OHLCV, volume in base-asset units; ``attrs["source"]`` names the files it came from.
        A day is yielded when the files' covered spans (a bulk file's declared day or month, a
        freqtrade file's first to last closed bar) contain all of it; whether its bars are all of
        the day is judged before it is used
        (:func:`regime_pipeline.core.data.quality.intraday_day_problem`). Files are read one day at a time.
        """
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)
        file_spans = [(f, self._span(f)) for f in self.files(symbol, interval) if f.may_overlap(lo, hi)]
        for span_from, span_to in union_spans([span for _, span in file_spans]):
            covered_from, covered_to = max(span_from, lo), min(span_to, hi)
            day = covered_from.ceil("D")
            while day + DAY <= covered_to:
                parts = []
                for file, (file_from, file_to) in file_spans:
                    if file_from < day + DAY and day < file_to:
                        parsed = self._parsed(file)
                        parts.append((parsed, rows_between(parsed, day, day + DAY)))
                names = ", ".join(str(p.file.path) for p, rows in parts if not rows.empty)
                yield from complete_days(merge_files(parts), covered_from, covered_to, names)
                day += DAY

    def _span(self, file: DataFile) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The span an intraday file covers: declared by a bulk file's name, read from a freqtrade file."""
        if file.period_from is not None and file.period_to is not None:
            return file.period_from, file.period_to
        parsed = self._parsed(file)
        return parsed.covered_from, parsed.covered_to
