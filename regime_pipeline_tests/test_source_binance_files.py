"""BinanceFilesSource over real Binance bars written out as bulk CSV/zip files and freqtrade files."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import zipfile
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from regime_pipeline.configs import PROJECT_ROOT
from regime_pipeline.core.data import intervals
from regime_pipeline.core.data.bars import OHLCV_COLUMNS, aggregate_minutes_pandas
from regime_pipeline.core.errors import DataError
from regime_pipeline.core.data.sources.base import MarketDataSource
from regime_pipeline.core.data.sources.binance_files import BinanceFilesSource

EMBEDDED = PROJECT_ROOT / "data" / "embedded"
MAINTENANCE_DAY = dt.date(2021, 9, 29)  # Binance was down 07:00-08:59 UTC: 1,320 bars
SEPT, OCT, NOV = dt.date(2021, 9, 1), dt.date(2021, 10, 1), dt.date(2021, 11, 1)
MINUTE_COLUMNS = ["open_time", *OHLCV_COLUMNS]


# --------------------------------------------------------------------------- real data


@cache
def _minutes() -> pd.DataFrame:
    return pd.read_parquet(EMBEDDED / "minute_bars.parquet")


@cache
def _klines() -> pd.DataFrame:
    frame = pd.read_parquet(EMBEDDED / "daily_klines.parquet")
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame


def minutes(symbol: str = "BTCUSDT", start: dt.date | None = None, end: dt.date | None = None) -> pd.DataFrame:
    """Real 1-minute bars of `symbol` with open time in ``[start, end)`` (columns open_time, OHLCV)."""
    frame = _minutes()
    frame = frame[frame["symbol"] == symbol]
    if start is not None:
        frame = frame[frame["open_time"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["open_time"] < pd.Timestamp(end)]
    return frame[MINUTE_COLUMNS].reset_index(drop=True)


def day_minutes(day: dt.date, symbol: str = "BTCUSDT") -> pd.DataFrame:
    return minutes(symbol, day, day + dt.timedelta(days=1))


def klines(symbol: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Real daily klines of `symbol` for days in ``[start, end)``, with an ``open_time`` column."""
    frame = _klines()
    frame = frame[(frame["symbol"] == symbol) & (frame["date"] >= start) & (frame["date"] < end)]
    frame = frame.reset_index(drop=True)
    return frame.assign(open_time=pd.to_datetime(frame["date"]).astype("datetime64[ms]"))


# --------------------------------------------------------------------------- file writers


def bulk_lines(frame: pd.DataFrame, *, unit: str = "ms", interval: str = "1m") -> list[str]:
    """Render bars (``open_time`` + OHLCV) in Binance's 12-column bulk kline layout, one string per line.

    Prices and volumes use 8 decimals as Binance does; times are epoch `unit` ("s", "ms", "us").
    """
    per_ms = {"s": 0.001, "ms": 1, "us": 1000}[unit]
    step_ms = int(intervals.step(interval) / pd.Timedelta(milliseconds=1))
    open_ms = frame["open_time"].astype("datetime64[ms]").astype("int64").to_numpy()
    open_t = (open_ms * per_ms).astype("int64")
    close_t = ((open_ms + step_ms) * per_ms).astype("int64") - 1
    num = {c: frame[c].map("{:.8f}".format).to_numpy() for c in OHLCV_COLUMNS}
    quote = (frame["volume"] * frame["close"]).map("{:.8f}".format).to_numpy()
    taker = (frame["volume"] / 2).map("{:.8f}".format).to_numpy()
    return [
        f"{open_t[i]},{num['open'][i]},{num['high'][i]},{num['low'][i]},{num['close'][i]},{num['volume'][i]},"
        f"{close_t[i]},{quote[i]},{100 + i},{taker[i]},{quote[i]},0"
        for i in range(len(frame))
    ]


HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)


def write_csv(path: Path, lines: list[str], *, header: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(([HEADER] if header else []) + lines) + "\n")
    return path


def zip_bytes(member: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, text)
    return buffer.getvalue()


def write_zip(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zip_bytes(path.stem + ".csv", "\n".join(lines) + "\n"))
    return path


def write_freqtrade_json(path: Path, frame: pd.DataFrame) -> Path:
    times = frame["open_time"].astype("datetime64[ms]").astype("int64")
    records = [[int(t), *map(float, values)] for t, values in zip(times, frame[OHLCV_COLUMNS].to_numpy())]
    path.write_text(json.dumps(records))
    return path


def write_freqtrade_feather(path: Path, frame: pd.DataFrame) -> Path:
    out = frame[OHLCV_COLUMNS].copy()
    out.insert(0, "date", frame["open_time"].dt.tz_localize("UTC"))
    out.to_feather(path)
    return path


def all_days(source: BinanceFilesSource, symbol: str = "BTCUSDT", start=SEPT, end=NOV) -> dict[dt.date, pd.DataFrame]:
    return dict(source.minute_days(symbol, start, end))


def assert_matches_klines(days: dict[dt.date, pd.DataFrame], symbol: str = "BTCUSDT") -> None:
    """Each yielded day aggregates exactly to the exchange's own daily candle."""
    frames = [frame.assign(symbol=symbol) for frame in days.values()]
    aggregated = aggregate_minutes_pandas(pd.concat(frames, ignore_index=True))
    expected = klines(symbol, min(days), max(days) + dt.timedelta(days=1))
    assert list(aggregated["date"]) == list(expected["date"])
    for column in OHLCV_COLUMNS:
        assert aggregated[column].tolist() == expected[column].tolist(), column


def raises_data_error(source: BinanceFilesSource, call: str = "minutes", start=SEPT, end=NOV) -> DataError:
    with pytest.raises(DataError) as info:
        if call == "minutes":
            list(source.minute_days("BTCUSDT", start, end))
        else:
            source.daily_klines(["BTCUSDT"], start, end)
    return info.value


# --------------------------------------------------------------------------- bulk 1m files


@pytest.mark.parametrize("kind", ["csv", "zip", "csv_with_header"])
def test_bulk_daily_file_parses_to_the_real_rows_and_the_real_daily_kline(tmp_path: Path, kind: str) -> None:
    real = day_minutes(MAINTENANCE_DAY)
    lines = bulk_lines(real)
    name = f"BTCUSDT-1m-{MAINTENANCE_DAY}"
    if kind == "zip":
        write_zip(tmp_path / f"{name}.zip", lines)
    else:
        write_csv(tmp_path / f"{name}.csv", lines, header=kind == "csv_with_header")
    source = BinanceFilesSource(tmp_path)
    assert isinstance(source, MarketDataSource) and source.name == "binance_files"

    days = all_days(source)

    assert list(days) == [MAINTENANCE_DAY]
    got = days[MAINTENANCE_DAY]
    assert len(got) == 1320  # the maintenance gap does not make the day partial
    assert not ((got["open_time"].dt.hour >= 7) & (got["open_time"].dt.hour < 9)).any()
    pd.testing.assert_frame_equal(got, real, check_exact=True)
    assert got["open_time"].dtype == "datetime64[ms]"
    assert_matches_klines(days)


def test_microsecond_timestamps_decode_like_milliseconds(tmp_path: Path) -> None:
    # Real rows moved to 2025-01-02, after Binance spot files switched to microseconds.
    shift = pd.Timestamp("2025-01-02") - pd.Timestamp(MAINTENANCE_DAY)
    moved = day_minutes(MAINTENANCE_DAY).assign(open_time=lambda f: f["open_time"] + shift)
    us_lines, ms_lines = bulk_lines(moved, unit="us"), bulk_lines(moved, unit="ms")
    assert len(us_lines[0].split(",")[0]) == 16 and len(ms_lines[0].split(",")[0]) == 13
    write_csv(tmp_path / "us" / "BTCUSDT-1m-2025-01-02.csv", us_lines)
    write_csv(tmp_path / "ms" / "BTCUSDT-1m-2025-01-02.csv", ms_lines)

    start, end = dt.date(2025, 1, 1), dt.date(2025, 1, 5)
    from_us = all_days(BinanceFilesSource(tmp_path / "us"), start=start, end=end)
    from_ms = all_days(BinanceFilesSource(tmp_path / "ms"), start=start, end=end)

    assert list(from_us) == [dt.date(2025, 1, 2)]
    pd.testing.assert_frame_equal(from_us[dt.date(2025, 1, 2)], from_ms[dt.date(2025, 1, 2)], check_exact=True)
    pd.testing.assert_frame_equal(from_us[dt.date(2025, 1, 2)], moved, check_exact=True)


def test_monthly_minute_file_yields_every_day_of_the_month_it_holds(tmp_path: Path) -> None:
    # A monthly file vouches for its whole month; the real window starts 09-17 22:23, so keep
    # only whole days to make a file that is true to its name from 09-18 on.
    real = minutes("BTCUSDT", dt.date(2021, 9, 18), OCT)
    write_zip(tmp_path / "BTCUSDT-1m-2021-09.zip", bulk_lines(real))

    days = all_days(BinanceFilesSource(tmp_path))

    assert list(days) == [dt.date(2021, 9, d) for d in range(18, 31)]
    pd.testing.assert_frame_equal(pd.concat(days.values(), ignore_index=True), real, check_exact=True)
    assert_matches_klines(days)


def test_request_range_limits_the_days(tmp_path: Path) -> None:
    write_csv(tmp_path / "BTCUSDT-1m-2021-09.csv", bulk_lines(minutes("BTCUSDT", dt.date(2021, 9, 18), OCT)))
    source = BinanceFilesSource(tmp_path)

    days = all_days(source, start=dt.date(2021, 9, 20), end=dt.date(2021, 9, 23))

    assert list(days) == [dt.date(2021, 9, 20), dt.date(2021, 9, 21), dt.date(2021, 9, 22)]
    assert all(len(frame) == 1440 for frame in days.values())
    assert all_days(source, symbol="ETHUSDT") == {}


def test_identical_overlapping_files_do_not_double_count(tmp_path: Path) -> None:
    month = minutes("BTCUSDT", dt.date(2021, 9, 18), OCT)
    write_csv(tmp_path / "monthly" / "BTCUSDT-1m-2021-09.csv", bulk_lines(month))
    write_zip(tmp_path / "daily" / f"BTCUSDT-1m-{MAINTENANCE_DAY}.zip", bulk_lines(day_minutes(MAINTENANCE_DAY)))
    # A daily file just past the month extends the covered span by one day.
    write_csv(tmp_path / "daily" / "BTCUSDT-1m-2021-10-01.csv", bulk_lines(day_minutes(OCT)))

    days = all_days(BinanceFilesSource(tmp_path))

    assert list(days) == [dt.date(2021, 9, d) for d in range(18, 31)] + [OCT]
    assert len(days[MAINTENANCE_DAY]) == 1320
    assert_matches_klines(days)


def test_conflicting_overlapping_files_name_both(tmp_path: Path) -> None:
    month = minutes("BTCUSDT", dt.date(2021, 9, 18), OCT)
    write_csv(tmp_path / "BTCUSDT-1m-2021-09.csv", bulk_lines(month))
    day = day_minutes(MAINTENANCE_DAY)
    day.loc[10, "close"] = day.loc[10, "close"] + 0.01
    day.loc[10, "high"] = max(day.loc[10, "high"], day.loc[10, "close"])
    write_csv(tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv", bulk_lines(day))

    error = raises_data_error(BinanceFilesSource(tmp_path))

    assert "BTCUSDT-1m-2021-09.csv" in str(error) and f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv" in str(error)
    assert error.field in {"high", "close"}
    # Row in the monthly file: 11 days of 1,440 bars from 09-18, then the 11th bar of 09-29.
    assert error.row == 11 * 1440 + 11


def test_only_files_overlapping_the_request_are_read_and_parsed_files_are_cached(tmp_path: Path) -> None:
    write_csv(tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv", bulk_lines(day_minutes(MAINTENANCE_DAY)))
    broken = tmp_path / "BTCUSDT-1m-2021-08-01.csv"
    broken.write_text("this is not a kline file\n")
    source = BinanceFilesSource(tmp_path)

    assert list(all_days(source)) == [MAINTENANCE_DAY]

    error = raises_data_error(source, start=dt.date(2021, 8, 1), end=NOV)
    assert "BTCUSDT-1m-2021-08-01.csv" in str(error) and error.row == 1
    (tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv").unlink()
    assert list(all_days(source)) == [MAINTENANCE_DAY]  # served from the cache


class Recorder:
    """A logger that keeps its warnings."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, msg: str, *args) -> None:
        self.warnings.append(msg)

    def info(self, msg: str, *args) -> None: ...

    def debug(self, msg: str, *args) -> None: ...


def test_non_data_files_are_ignored_and_subfolders_are_scanned(tmp_path: Path) -> None:
    lines = bulk_lines(day_minutes(MAINTENANCE_DAY))
    path = write_zip(tmp_path / "2021" / "09" / f"BTCUSDT-1m-{MAINTENANCE_DAY}.zip", lines)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")
    (tmp_path / "README.md").write_text("# my downloads\n")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1")
    log = Recorder()

    assert list(all_days(BinanceFilesSource(tmp_path, log=log))) == [MAINTENANCE_DAY]
    assert log.warnings == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("BTCUSDT-1s-2021-09-29.csv", "1s bars are not read"),
        ("BTCUSDT-3d-2021-09.zip", "3d bars are not read"),
        ("BTC_USDT-1w.json", "1w bars are not read"),
        ("BTCUSDT-1mo-2021-09.csv", "1mo bars are not read"),
        ("ETH_USDT-1M.feather", "1M bars are not read"),
        ("BTCUSDT-7m-2021-09-29.csv", "'7m' is not a Binance kline interval"),
    ],
)
def test_a_file_of_an_interval_not_read_is_reported_by_name(tmp_path: Path, name: str, reason: str) -> None:
    write_csv(tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv", bulk_lines(day_minutes(MAINTENANCE_DAY)))
    # What matters is that the file is named and not used: its content is never read.
    (tmp_path / name).write_text("not read\n")
    log = Recorder()

    assert list(all_days(BinanceFilesSource(tmp_path, log=log))) == [MAINTENANCE_DAY]
    assert len(log.warnings) == 1 and str(tmp_path / name) in log.warnings[0] and reason in log.warnings[0]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv", ""),
        (f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv", HEADER + "\n"),
        (f"BTCUSDT-1m-{MAINTENANCE_DAY}.zip", None),
        ("BTC_USDT-1m.json", "[]"),
    ],
)
def test_an_empty_file_is_an_error_naming_it(tmp_path: Path, name: str, content: str | None) -> None:
    path = tmp_path / name
    if content is None:
        path.write_bytes(zip_bytes(path.stem + ".csv", ""))
    else:
        path.write_text(content)

    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert str(path) in str(error) and ("no bars" in str(error) or "no candle" in str(error))


def test_an_empty_feather_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = write_freqtrade_feather(tmp_path / "BTC_USDT-1m.feather", day_minutes(MAINTENANCE_DAY).iloc[:0])

    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert str(path) in str(error) and "no candle" in str(error)


def test_a_bulk_file_that_stops_early_is_reported_and_yields_the_short_day(tmp_path: Path) -> None:
    # Cut cleanly at a line break: every line parses. The day is yielded with what it holds;
    # whether it may be stored is decided against the klines and known gaps (quality.intraday_day_problem).
    day = dt.date(2021, 10, 2)
    path = write_csv(tmp_path / f"BTCUSDT-1m-{day}.csv", bulk_lines(day_minutes(day))[:700])
    log = Recorder()

    days = all_days(BinanceFilesSource(tmp_path, log=log))

    assert list(days) == [day] and len(days[day]) == 700
    assert days[day].attrs["source"] == str(path)
    assert len(log.warnings) == 1 and str(path) in log.warnings[0] and "2021-10-02 11:39:00" in log.warnings[0]


# --------------------------------------------------------------------------- bulk 1d files


@pytest.mark.parametrize("header", [False, True])
def test_monthly_daily_kline_file(tmp_path: Path, header: bool) -> None:
    real = klines("BTCUSDT", SEPT, OCT)
    write_csv(tmp_path / "BTCUSDT-1d-2021-09.csv", bulk_lines(real, interval="1d"), header=header)
    write_zip(tmp_path / "ETHUSDT-1d-2021-09.zip", bulk_lines(klines("ETHUSDT", SEPT, OCT), interval="1d"))
    source = BinanceFilesSource(tmp_path)

    got = source.daily_klines(["ETHUSDT", "BTCUSDT", "SOLUSDT"], SEPT, OCT)

    expected = pd.concat([real, klines("ETHUSDT", SEPT, OCT)], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected.drop(columns="open_time"), check_exact=True)
    assert list(got.columns) == ["symbol", "date", "open", "high", "low", "close", "volume"]
    assert isinstance(got["date"].iloc[0], dt.date)

    window = source.daily_klines(["BTCUSDT"], dt.date(2021, 9, 10), dt.date(2021, 9, 20))
    assert list(window["date"]) == [dt.date(2021, 9, d) for d in range(10, 20)]
    assert source.daily_klines(["SOLUSDT"], SEPT, OCT).empty


def test_daily_kline_files_daily_and_monthly_merge(tmp_path: Path) -> None:
    write_csv(tmp_path / "BTCUSDT-1d-2021-09.csv", bulk_lines(klines("BTCUSDT", SEPT, OCT), interval="1d"))
    day = klines("BTCUSDT", dt.date(2021, 9, 5), dt.date(2021, 9, 6))
    write_csv(tmp_path / "BTCUSDT-1d-2021-09-05.csv", bulk_lines(day, interval="1d"))
    october_first = klines("BTCUSDT", OCT, dt.date(2021, 10, 2))
    write_csv(tmp_path / "BTCUSDT-1d-2021-10-01.csv", bulk_lines(october_first, interval="1d"))

    got = BinanceFilesSource(tmp_path).daily_klines(["BTCUSDT"], SEPT, NOV)

    expected = klines("BTCUSDT", SEPT, dt.date(2021, 10, 2)).drop(columns="open_time")
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


# --------------------------------------------------------------------------- freqtrade files


def test_freqtrade_json_minutes_skip_partial_first_and_last_days(tmp_path: Path) -> None:
    real = minutes("BTCUSDT")  # 2021-09-17 22:23 .. 2021-10-17 22:21
    write_freqtrade_json(tmp_path / "BTC_USDT-1m.json", real)

    days = all_days(BinanceFilesSource(tmp_path))

    first, last = dt.date(2021, 9, 18), dt.date(2021, 10, 16)
    assert list(days) == [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    assert len(days[MAINTENANCE_DAY]) == 1320
    inside = minutes("BTCUSDT", first, last + dt.timedelta(days=1))
    pd.testing.assert_frame_equal(pd.concat(days.values(), ignore_index=True), inside, check_exact=True)
    assert_matches_klines(days)


def test_freqtrade_feather_minutes(tmp_path: Path) -> None:
    real = minutes("ETHUSDT")
    write_freqtrade_feather(tmp_path / "ETH_USDT-1m.feather", real)

    days = all_days(BinanceFilesSource(tmp_path), symbol="ETHUSDT", start=dt.date(2021, 10, 10), end=NOV)

    assert list(days) == [dt.date(2021, 10, d) for d in range(10, 17)]  # 10-17 ends at 22:20: partial
    expected = minutes("ETHUSDT", dt.date(2021, 10, 10), dt.date(2021, 10, 17))
    pd.testing.assert_frame_equal(pd.concat(days.values(), ignore_index=True), expected, check_exact=True)


def test_freqtrade_feather_dates_in_another_zone_are_converted_to_utc(tmp_path: Path) -> None:
    real = day_minutes(MAINTENANCE_DAY)
    path = write_freqtrade_feather(tmp_path / "BTC_USDT-1m.feather", real)
    table = pd.read_feather(path)
    table["date"] = table["date"].dt.tz_convert("Asia/Shanghai")
    table.to_feather(path)
    # Coverage starts at the first bar (00:00) and ends after the last (23:59): one whole day.
    days = all_days(BinanceFilesSource(tmp_path))
    pd.testing.assert_frame_equal(days[MAINTENANCE_DAY], real, check_exact=True)


@pytest.mark.parametrize("kind", ["json", "feather"])
def test_freqtrade_last_candle_still_open_when_written_is_not_used(tmp_path: Path, kind: str) -> None:
    # BTC's real candles to 2021-10-03, the last one as it stood at 12:00 that day (it closed at 49,228 high).
    real = klines("BTCUSDT", SEPT, dt.date(2021, 10, 4))
    partial = real.copy()
    partial.loc[partial.index[-1], ["high", "close", "volume"]] = [48_100.0, 48_000.0, 15_000.0]
    writer = write_freqtrade_json if kind == "json" else write_freqtrade_feather
    path = writer(tmp_path / f"BTC_USDT-1d.{kind}", partial)
    noon = pd.Timestamp("2021-10-03 12:00").timestamp()
    os.utime(path, (noon, noon))
    log = Recorder()

    got = BinanceFilesSource(tmp_path, log=log).daily_klines(["BTCUSDT"], SEPT, NOV)

    expected = klines("BTCUSDT", SEPT, dt.date(2021, 10, 3)).drop(columns="open_time")
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert len(log.warnings) == 1 and str(path) in log.warnings[0] and "2021-10-03" in log.warnings[0]

    # Written after the day ended, the same candle is final and used.
    written = pd.Timestamp("2021-10-04 00:00:05").timestamp()
    path = writer(tmp_path / f"BTC_USDT-1d.{kind}", real)
    os.utime(path, (written, written))
    got = BinanceFilesSource(tmp_path).daily_klines(["BTCUSDT"], SEPT, NOV)
    pd.testing.assert_frame_equal(got, real.drop(columns="open_time"), check_exact=True)


def test_freqtrade_minute_file_written_during_its_last_minute_drops_that_minute(tmp_path: Path) -> None:
    # Bars to 2021-09-29 23:59, downloaded at 23:59:30: the last minute was still open, so the
    # day is not covered to its end and is not yielded; a file written at 00:00:01 yields it.
    path = write_freqtrade_json(tmp_path / "BTC_USDT-1m.json", minutes("BTCUSDT", dt.date(2021, 9, 28), dt.date(2021, 9, 30)))
    during = pd.Timestamp("2021-09-29 23:59:30").timestamp()
    os.utime(path, (during, during))
    assert list(all_days(BinanceFilesSource(tmp_path, log=Recorder()))) == [dt.date(2021, 9, 28)]
    after = pd.Timestamp("2021-09-30 00:00:01").timestamp()
    os.utime(path, (after, after))
    assert list(all_days(BinanceFilesSource(tmp_path))) == [dt.date(2021, 9, 28), MAINTENANCE_DAY]


@pytest.mark.parametrize("kind", ["json", "feather"])
def test_freqtrade_daily_klines(tmp_path: Path, kind: str) -> None:
    real = klines("BTCUSDT", SEPT, NOV)
    writer = write_freqtrade_json if kind == "json" else write_freqtrade_feather
    writer(tmp_path / f"BTC_USDT-1d.{kind}", real)

    got = BinanceFilesSource(tmp_path).daily_klines(["BTCUSDT"], dt.date(2021, 9, 15), OCT)

    expected = klines("BTCUSDT", dt.date(2021, 9, 15), OCT).drop(columns="open_time")
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


# --------------------------------------------------------------------------- bad input


def _bad_csv(
    tmp_path: Path, edit, *, header: bool = False, name: str = f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv"
) -> DataError:
    """Write the real 2021-09-29 bars as a bulk CSV after `edit` changes its lines; return the error."""
    lines = bulk_lines(day_minutes(MAINTENANCE_DAY))
    edit(lines)
    write_csv(tmp_path / name, lines, header=header)
    return raises_data_error(BinanceFilesSource(tmp_path))


def _set_field(lines: list[str], index: int, field: int, value: str) -> None:
    fields = lines[index].split(",")
    fields[field] = value
    lines[index] = ",".join(fields)


def test_truncated_csv_names_file_and_last_row(tmp_path: Path) -> None:
    def cut(lines: list[str]) -> None:
        lines[-1] = lines[-1][:25]

    error = _bad_csv(tmp_path, cut)
    assert f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv" in str(error)
    assert error.row == 1320 and "row 1320" in str(error) and "truncated" in str(error)


def test_partially_written_zip_names_file_and_row(tmp_path: Path) -> None:
    lines = bulk_lines(day_minutes(MAINTENANCE_DAY))
    whole = zip_bytes(f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv", "\n".join(lines) + "\n")
    path = tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.zip"
    path.write_bytes(whole[: len(whole) // 2])

    error = raises_data_error(BinanceFilesSource(tmp_path))

    assert path.name in str(error) and "truncated" in str(error)
    assert error.row is not None and 1 < error.row < 1320 and f"row {error.row}" in str(error)


def test_zip_holding_another_file_is_refused(tmp_path: Path) -> None:
    # An ETH archive renamed to BTC would otherwise pass every check.
    path = tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.zip"
    eth = "\n".join(bulk_lines(day_minutes(MAINTENANCE_DAY, "ETHUSDT")))
    path.write_bytes(zip_bytes(f"ETHUSDT-1m-{MAINTENANCE_DAY}.csv", eth))

    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert path.name in str(error) and "ETHUSDT-1m-2021-09-29.csv" in str(error)


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.zip", bulk_lines(day_minutes(MAINTENANCE_DAY)))
    path.with_name(path.name + ".CHECKSUM").write_text(f"{'0' * 64}  {path.name}\n")

    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert path.name in str(error) and "sha256" in str(error)


@pytest.mark.parametrize("header", [False, True])
def test_non_numeric_field_names_file_row_and_field(tmp_path: Path, header: bool) -> None:
    error = _bad_csv(tmp_path, lambda lines: _set_field(lines, 16, 4, "4102x.5"), header=header)
    assert f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv" in str(error)
    assert error.row == 17 + header and error.field == "close"
    assert f"row {17 + header}, field 'close'" in str(error)


def test_high_below_low_names_file_row_and_field(tmp_path: Path) -> None:
    def swap(lines: list[str]) -> None:
        fields = lines[99].split(",")
        fields[2], fields[3] = fields[3], fields[2]
        lines[99] = ",".join(fields)

    row = day_minutes(MAINTENANCE_DAY).iloc[99]
    assert row["high"] > row["low"]  # the edit must make a real inversion
    error = _bad_csv(tmp_path, swap)
    assert f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv" in str(error)
    assert (error.row, error.field) == (100, "high") and "high < low" in str(error)


def test_duplicate_timestamp_names_file_and_both_rows(tmp_path: Path) -> None:
    error = _bad_csv(tmp_path, lambda lines: lines.insert(50, lines[49]))
    assert f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv" in str(error)
    assert (error.row, error.field) == (51, "open_time") and "first seen at row 50" in str(error)


def test_second_timestamps_are_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv", bulk_lines(day_minutes(MAINTENANCE_DAY), unit="s"))

    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert path.name in str(error) and (error.row, error.field) == (1, "open_time") and "seconds" in str(error)


def test_row_outside_the_declared_day_is_refused(tmp_path: Path) -> None:
    # The 2021-09-29 bars in a file named for 09-30.
    error = _bad_csv(tmp_path, lambda lines: None, name="BTCUSDT-1m-2021-09-30.csv")
    assert "BTCUSDT-1m-2021-09-30.csv" in str(error)
    assert (error.row, error.field) == (1, "open_time") and "outside the period" in str(error)


def test_row_from_another_month_is_refused_even_in_microseconds(tmp_path: Path) -> None:
    # Per-value unit detection accepts the µs value; the period check still catches that it is
    # a month away from the day the file name declares.
    def wrong_month(lines: list[str]) -> None:
        ms = int(lines[5].split(",")[0]) + 30 * 86_400_000
        _set_field(lines, 5, 0, str(ms * 1000))

    error = _bad_csv(tmp_path, wrong_month)
    assert (error.row, error.field) == (6, "open_time") and "outside the period" in str(error)


def test_bar_off_the_minute_grid_is_refused(tmp_path: Path) -> None:
    error = _bad_csv(tmp_path, lambda lines: _set_field(lines, 3, 0, str(int(lines[3].split(",")[0]) + 30_000)))
    assert (error.row, error.field) == (4, "open_time") and "1m boundary" in str(error)


@pytest.mark.parametrize("suffix", [".5", "500"])
def test_a_fraction_of_a_millisecond_is_refused_not_rounded_onto_the_grid(tmp_path: Path, suffix: str) -> None:
    def nudge(lines: list[str]) -> None:
        # ".5": half a millisecond on a millisecond stamp; "500": the same stamp in microseconds, plus 500 µs.
        _set_field(lines, 3, 0, lines[3].split(",")[0] + suffix)

    error = _bad_csv(tmp_path, nudge)
    assert (error.row, error.field) == (4, "open_time") and "not a whole millisecond" in str(error)


def test_a_feather_date_off_the_grid_by_less_than_a_millisecond_is_refused(tmp_path: Path) -> None:
    path = write_freqtrade_feather(tmp_path / "BTC_USDT-1m.feather", day_minutes(MAINTENANCE_DAY))
    table = pd.read_feather(path)
    table["date"] = table["date"].astype("datetime64[ns, UTC]")
    table.loc[5, "date"] += pd.Timedelta(microseconds=250)
    table.to_feather(path)

    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert (error.row, error.field) == (6, "date") and "not a whole millisecond" in str(error)


@pytest.mark.parametrize("name", ["FOOUSDT-1m-2021-09-29.csv", "FOO_USDT-1d.json", "PEPEUSDT-5m-2021-09.zip"])
def test_a_file_for_a_symbol_outside_the_universe_is_skipped_with_a_warning(tmp_path: Path, name: str) -> None:
    write_csv(tmp_path / f"BTCUSDT-1m-{MAINTENANCE_DAY}.csv", bulk_lines(day_minutes(MAINTENANCE_DAY)))
    (tmp_path / name).write_text("[]")  # never read: an empty file would be an error
    log = Recorder()
    source = BinanceFilesSource(tmp_path, log=log)

    assert list(all_days(source)) == [MAINTENANCE_DAY]
    assert source.daily_klines(["BTCUSDT"], SEPT, NOV).empty
    assert source.available_symbols(["ETHUSDT", "BTCUSDT"]) == ["BTCUSDT"]
    assert len(log.warnings) == 1 and name in log.warnings[0] and "not in the universe" in log.warnings[0]


def test_truncated_freqtrade_json_names_file_and_record(tmp_path: Path) -> None:
    path = write_freqtrade_json(tmp_path / "BTC_USDT-1m.json", day_minutes(MAINTENANCE_DAY))
    text = path.read_text()
    records = json.loads(text)
    cut = len(json.dumps(records[:10])) - 1 + len(", [") + 8  # inside the 11th record's timestamp
    path.write_text(text[:cut])

    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert path.name in str(error) and error.row == 11


def test_bad_freqtrade_json_record_names_file_row_and_field(tmp_path: Path) -> None:
    path = write_freqtrade_json(tmp_path / "BTC_USDT-1m.json", day_minutes(MAINTENANCE_DAY))
    original = json.loads(path.read_text())

    short = [record[:] for record in original]
    short[30] = short[30][:5]
    path.write_text(json.dumps(short))
    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert path.name in str(error) and error.row == 31

    missing = [record[:] for record in original]
    missing[7][5] = None
    path.write_text(json.dumps(missing))
    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert path.name in str(error) and (error.row, error.field) == (8, "volume")


def test_truncated_feather_names_the_file(tmp_path: Path) -> None:
    path = write_freqtrade_feather(tmp_path / "BTC_USDT-1m.feather", day_minutes(MAINTENANCE_DAY))
    path.write_bytes(path.read_bytes()[:200])

    error = raises_data_error(BinanceFilesSource(tmp_path))
    assert path.name in str(error)


def test_daily_file_with_minute_bars_is_refused(tmp_path: Path) -> None:
    # A 1m file saved under a 1d name: the second bar is not on a day boundary.
    write_csv(tmp_path / f"BTCUSDT-1d-{MAINTENANCE_DAY}.csv", bulk_lines(day_minutes(MAINTENANCE_DAY)))

    error = raises_data_error(BinanceFilesSource(tmp_path), call="klines")
    assert f"BTCUSDT-1d-{MAINTENANCE_DAY}.csv" in str(error) and (error.row, error.field) == (2, "open_time")
