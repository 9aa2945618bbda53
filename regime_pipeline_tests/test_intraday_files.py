"""Market-data files of every interval from 1m to 1d, built from the real embedded minutes.

For each interval the embedded 1-minute bars of BTCUSDT are aggregated as Binance aggregates
klines (UTC-aligned bars; a bar no minute traded in does not exist, as in the 2021-09-29
maintenance gap), written as Binance bulk files and freqtrade files, read back through
`BinanceFilesSource` and aggregated to UTC days, which must be the exchange's own daily klines.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pandas as pd
import pytest

from regime_pipeline.configs import data_settings, known_gaps
from regime_pipeline.core.data import intervals
from regime_pipeline.core.data.bars import OHLCV_COLUMNS
from regime_pipeline.core.data.intraday import daily_from_intraday
from regime_pipeline.core.data.sources.binance_files import BinanceFilesSource, empty_daily_klines
from regime_pipeline.core.errors import DataError
from regime_pipeline_tests.test_source_binance_files import (
    MAINTENANCE_DAY,
    Recorder,
    bulk_lines,
    klines,
    minutes,
    write_csv,
    write_freqtrade_feather,
    write_freqtrade_json,
    write_zip,
)

FIRST, END = dt.date(2021, 9, 18), dt.date(2021, 10, 17)  # the whole days of the embedded window
OCT = dt.date(2021, 10, 1)
COARSER = intervals.INTRADAY_INTERVALS[1:]  # 3m .. 12h: aggregated to days by daily_from_intraday
TOLERANCES = {k: data_settings()["reconciliation"][k] for k in ("price_rtol", "volume_rtol")}
GAPS = [(gap.start, gap.end) for gap in known_gaps()]


def bars_of(interval: str, symbol: str = "BTCUSDT", start: dt.date = FIRST, end: dt.date = END) -> pd.DataFrame:
    """Real `interval` bars of `symbol` for the days ``[start, end)``, aggregated from the embedded minutes."""
    frame = minutes(symbol, start, end).set_index("open_time")
    if interval == "1m":
        return frame.reset_index()
    grouped = frame.resample(intervals.step(interval), origin="epoch", closed="left", label="left")
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    out = out[grouped["open"].count() > 0]  # no trade, no bar
    return out.rename_axis("open_time").reset_index()[["open_time", *OHLCV_COLUMNS]]


def write_files(folder: Path, interval: str, bars: pd.DataFrame) -> None:
    """September as a Binance monthly zip, October as a freqtrade json (written after its last bar)."""
    september = bars[bars["open_time"] < pd.Timestamp(OCT)]
    october = bars[bars["open_time"] >= pd.Timestamp(OCT)]
    write_zip(folder / f"BTCUSDT-{interval}-2021-09.zip", bulk_lines(september, interval=interval))
    write_freqtrade_json(folder / f"BTC_USDT-{interval}.json", october)


def real_klines(start: dt.date = FIRST, end: dt.date = END) -> pd.DataFrame:
    return klines("BTCUSDT", start, end).drop(columns="open_time")


def from_intraday(source: BinanceFilesSource, kline_frame: pd.DataFrame, start=FIRST, end=END, **kwargs) -> pd.DataFrame:
    return daily_from_intraday(source, ["BTCUSDT"], start, end, kline_frame, gaps=GAPS, **TOLERANCES, **kwargs)


@pytest.mark.parametrize("interval", intervals.USED_INTERVALS)
def test_files_of_every_interval_read_back_bar_for_bar(tmp_path: Path, interval: str) -> None:
    if interval == "1d":
        real = klines("BTCUSDT", FIRST, END)
        write_files(tmp_path, interval, real)
        got = BinanceFilesSource(tmp_path).daily_klines(["BTCUSDT"], FIRST, END)
        pd.testing.assert_frame_equal(got, real_klines(), check_exact=True)
        return
    real = bars_of(interval)
    write_files(tmp_path, interval, real)

    days = dict(BinanceFilesSource(tmp_path).interval_days("BTCUSDT", interval, FIRST, END))

    assert list(days) == [FIRST + dt.timedelta(days=i) for i in range((END - FIRST).days)]
    got = pd.concat(days.values(), ignore_index=True)
    assert len(got) == len(real) and got["open_time"].tolist() == real["open_time"].tolist()
    pd.testing.assert_frame_equal(got[OHLCV_COLUMNS], real[OHLCV_COLUMNS].round(8), check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("interval", COARSER)
@pytest.mark.parametrize("with_klines", [True, False], ids=["reconciled", "counted"])
def test_every_coarser_interval_aggregates_to_the_exchange_daily_klines(tmp_path: Path, interval: str, with_klines: bool) -> None:
    # With the klines, each day must reproduce its kline; without, it must hold every bar of the
    # day or miss only bars inside the known maintenance gap.
    write_files(tmp_path, interval, bars_of(interval))
    source = BinanceFilesSource(tmp_path)

    daily = from_intraday(source, real_klines() if with_klines else empty_daily_klines())

    expected = real_klines()
    assert daily["date"].tolist() == expected["date"].tolist()
    assert set(daily["source"]) == {interval}
    for column in ("open", "high", "low", "close"):
        assert daily[column].tolist() == expected[column].tolist(), column
    assert ((daily["volume"] - expected["volume"]).abs() <= 1e-9 * expected["volume"]).all()
    per_bar = int(intervals.step(interval) / pd.Timedelta(minutes=1))
    n_minutes = daily.set_index("date")["n_minutes"]
    whole = n_minutes.drop(MAINTENANCE_DAY)
    assert (whole == 1440).all()
    # 07:00-08:59 had no trade: the bars wholly inside it do not exist (2h bars: none is).
    in_gap = sum(1 for h in range(0, 24 * 60, per_bar) if 7 * 60 <= h and h + per_bar <= 9 * 60)
    assert n_minutes[MAINTENANCE_DAY] == 1440 - in_gap * per_bar


@pytest.mark.parametrize("interval", COARSER)
def test_a_day_missing_a_bar_is_refused_naming_the_file(tmp_path: Path, interval: str) -> None:
    day = dt.date(2021, 9, 22)
    real = bars_of(interval)
    second = pd.Timestamp(day) + intervals.step(interval)  # the day's second bar
    cut = real[real["open_time"] != second]
    assert len(cut) == len(real) - 1
    write_files(tmp_path, interval, cut)
    source = BinanceFilesSource(tmp_path)

    with pytest.raises(DataError) as counted:
        from_intraday(source, empty_daily_klines())
    per_day = intervals.bars_per_day(interval)
    message = str(counted.value)
    assert f"BTCUSDT-{interval}-2021-09.zip" in message and f"BTCUSDT {day} not used" in message
    noun = f"{interval} bars"
    assert f"1 of {per_day} {noun} missing (first {second:%H:%M}" in message

    with pytest.raises(DataError, match=r"daily kline says") as reconciled:
        from_intraday(source, real_klines())
    assert f"BTCUSDT {day} not used" in str(reconciled.value)


def test_the_finest_interval_is_used_and_days_built_from_minutes_are_skipped(tmp_path: Path) -> None:
    write_files(tmp_path, "1h", bars_of("1h"))
    # 4h bars for a few days only, altered so that using them would show: high doubled.
    altered = bars_of("4h", start=dt.date(2021, 9, 20), end=dt.date(2021, 9, 23)).assign(high=lambda f: f["high"] * 2)
    write_csv(tmp_path / "BTCUSDT-4h-2021-09-20.csv", bulk_lines(altered[altered["open_time"] < pd.Timestamp("2021-09-21")], interval="4h"))
    source = BinanceFilesSource(tmp_path)
    skip = {("BTCUSDT", dt.date(2021, 9, 25))}

    daily = from_intraday(source, real_klines(), skip=skip)

    assert set(daily["source"]) == {"1h"} and dt.date(2021, 9, 25) not in set(daily["date"])
    assert len(daily) == (END - FIRST).days - 1


@pytest.mark.parametrize("interval", [*COARSER, "1m"])
@pytest.mark.parametrize("kind", ["json", "feather"])
def test_a_freqtrade_file_whose_last_candle_is_still_open_drops_it_with_a_log_line(tmp_path: Path, interval: str, kind: str) -> None:
    # Downloaded on 2021-10-03 at 12:30 UTC: the last candle, the one holding 12:29, had not closed
    # and holds partial values. It is dropped; the day is then not whole and is not used.
    written = pd.Timestamp("2021-10-03 12:29:30")
    real = bars_of(interval, start=dt.date(2021, 10, 1), end=dt.date(2021, 10, 4))
    partial = real[real["open_time"] <= written].copy()
    last = partial.index[-1]
    assert partial.loc[last, "open_time"] + intervals.step(interval) > written
    partial.loc[last, ["high", "close"]] = partial.loc[last, "open"]  # as it stood when downloaded
    writer = write_freqtrade_json if kind == "json" else write_freqtrade_feather
    path = writer(tmp_path / f"BTC_USDT-{interval}.{kind}", partial)
    os.utime(path, (written.timestamp(), written.timestamp()))
    log = Recorder()
    source = BinanceFilesSource(tmp_path, log=log)

    days = dict(source.interval_days("BTCUSDT", interval, dt.date(2021, 10, 1), dt.date(2021, 10, 5)))

    assert list(days) == [dt.date(2021, 10, 1), dt.date(2021, 10, 2)]
    assert len(log.warnings) == 1 and str(path) in log.warnings[0] and "not used" in log.warnings[0]
    assert str(partial.loc[last, "open_time"]) in log.warnings[0]
    if interval != "1m":
        daily = from_intraday(source, real_klines(), start=dt.date(2021, 10, 1), end=dt.date(2021, 10, 5))
        assert daily["date"].tolist() == [dt.date(2021, 10, 1), dt.date(2021, 10, 2)]
