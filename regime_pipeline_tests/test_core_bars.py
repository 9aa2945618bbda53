"""Bar validation, complete-day rules and daily aggregation, on real Binance minutes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from regime_pipeline.core.data.bars import (
    aggregate_minutes_pandas,
    combine_daily,
    complete_days,
    epoch_to_timestamp,
    to_numeric,
    validate_ohlcv,
)
from regime_pipeline.core.errors import DataError
from regime_pipeline.core.data.ingest import ingest_minutes
from regime_pipeline.core.data.lake import MinuteLake
from regime_pipeline.core.data.quality import intraday_day_problem
from regime_pipeline.core.data.sources.embedded import EmbeddedSource
from regime_pipeline_tests.conftest import EMBEDDED


@pytest.fixture(scope="module")
def source() -> EmbeddedSource:
    return EmbeddedSource(EMBEDDED / "daily_klines.parquet", EMBEDDED / "minute_bars.parquet")


def test_complete_days_drop_partial_ends_and_keep_gap_days(source):
    days = dict(source.minute_days("BTCUSDT", dt.date(2021, 9, 1), dt.date(2021, 11, 1)))
    assert min(days) == dt.date(2021, 9, 18) and max(days) == dt.date(2021, 10, 16)
    assert len(days[dt.date(2021, 9, 29)]) == 1320
    assert all(len(m) == 1440 for d, m in days.items() if d != dt.date(2021, 9, 29))
    gap = days[dt.date(2021, 9, 29)]["open_time"]
    assert not ((gap >= "2021-09-29 07:00") & (gap < "2021-09-29 09:00")).any()


def test_complete_days_needs_the_whole_day_covered():
    times = pd.date_range("2024-01-01 00:00", "2024-01-03 23:59", freq="min")
    frame = pd.DataFrame({"open_time": times.astype("datetime64[ms]"), "open": 1.0})
    covered = [d for d, _ in complete_days(frame, pd.Timestamp("2024-01-01 00:01"), pd.Timestamp("2024-01-04"))]
    assert covered == [dt.date(2024, 1, 2), dt.date(2024, 1, 3)]
    covered = [d for d, _ in complete_days(frame, pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-03 23:59"))]
    assert covered == [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]


def test_duckdb_aggregation_equals_pandas_and_exchange_klines(tmp_path, source):
    lake = MinuteLake(tmp_path / "lake")
    minutes = []
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        for day, frame in source.minute_days(symbol, dt.date(2021, 9, 25), dt.date(2021, 10, 3)):
            lake.write_day(symbol, day, frame)
            minutes.append(frame.assign(symbol=symbol))
    duck = lake.daily_aggregate(dt.date(2021, 9, 25), dt.date(2021, 10, 3))
    ref = aggregate_minutes_pandas(pd.concat(minutes, ignore_index=True))
    merged = duck.merge(ref, on=["symbol", "date"], suffixes=("", "_pd"))
    assert len(merged) == len(duck) == len(ref) == 3 * 8
    for column in ("open", "high", "low", "close", "n_minutes"):
        assert (merged[column] == merged[f"{column}_pd"]).all(), column
    np.testing.assert_allclose(merged["volume"], merged["volume_pd"], rtol=1e-12)
    klines = source.daily_klines(["BTCUSDT", "ETHUSDT", "SOLUSDT"], dt.date(2021, 9, 25), dt.date(2021, 10, 3))
    exact = duck.merge(klines, on=["symbol", "date"], suffixes=("", "_k"))
    for column in ("open", "high", "low", "close"):
        assert (exact[column] == exact[f"{column}_k"]).all(), column
    # Only the range asked for, and only the symbols asked for.
    assert set(lake.daily_aggregate(dt.date(2021, 9, 29), dt.date(2021, 9, 30), ["ETHUSDT"]).date) == {dt.date(2021, 9, 29)}


def test_combine_prefers_minutes_and_labels_the_source():
    day = dt.date(2024, 1, 1)
    klines = pd.DataFrame(
        [("BTCUSDT", day, 1.0, 2.0, 0.5, 1.5, 10.0), ("ETHUSDT", day, 3.0, 4.0, 2.5, 3.5, 20.0)],
        columns=["symbol", "date", "open", "high", "low", "close", "volume"],
    )
    minutes = pd.DataFrame([("BTCUSDT", day, 1.1, 2.1, 0.6, 1.6, 11.0, 1440)], columns=[*klines.columns, "n_minutes"])
    out = combine_daily(minutes, klines).set_index("symbol")
    assert out.loc["BTCUSDT", "source"] == "minutes" and out.loc["BTCUSDT", "open"] == 1.1
    assert out.loc["BTCUSDT", "n_minutes"] == 1440
    assert out.loc["ETHUSDT", "source"] == "klines" and pd.isna(out.loc["ETHUSDT", "n_minutes"])

    # Coarser intraday bars come between: used over the kline, never over the minutes.
    hourly = pd.DataFrame(
        [("BTCUSDT", day, 1.2, 2.2, 0.7, 1.7, 12.0, 1440, "1h"), ("ETHUSDT", day, 3.1, 4.1, 2.6, 3.6, 21.0, 1380, "1h")],
        columns=[*klines.columns, "n_minutes", "source"],
    )
    out = combine_daily(minutes, klines, hourly).set_index("symbol")
    assert out.loc["BTCUSDT", "source"] == "minutes" and out.loc["BTCUSDT", "open"] == 1.1
    assert out.loc["ETHUSDT", "source"] == "1h" and out.loc["ETHUSDT", "open"] == 3.1
    assert out.loc["ETHUSDT", "n_minutes"] == 1380 and out["n_minutes"].dtype == "Int32"


def _bars(**changes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "symbol": ["BTCUSDT"] * 3,
            "open_time": pd.to_datetime(["2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:02"]),
            "open": [10.0, 11.0, 12.0],
            "high": [11.0, 12.0, 13.0],
            "low": [9.0, 10.0, 11.0],
            "close": [11.0, 12.0, 12.5],
            "volume": [1.0, 2.0, 3.0],
            "_row": [5, 6, 7],
        }
    )
    for column, (i, value) in changes.items():
        frame.loc[i, column] = value
    return frame


@pytest.mark.parametrize(
    ("change", "message", "row", "field"),
    [
        ({"high": (1, 9.5)}, "high < low", 6, "high"),
        ({"low": (2, 12.8)}, "low > min", 7, "low"),
        ({"open": (0, 0.0)}, "not positive", 5, "open"),
        ({"volume": (2, -1.0)}, "negative", 7, "volume"),
        ({"open_time": (2, pd.Timestamp("2024-01-01 00:01"))}, "duplicate open_time", 7, "open_time"),
    ],
)
def test_validation_names_row_and_field(change, message, row, field):
    with pytest.raises(DataError, match=message) as info:
        validate_ohlcv(_bars(**change), "f.csv", "open_time")
    assert (info.value.row, info.value.field, info.value.source) == (row, field, "f.csv")
    assert str(info.value).startswith(f"f.csv, row {row}, field '{field}'")


def test_duplicate_error_names_the_first_occurrence():
    with pytest.raises(DataError, match=r"first seen at row 6"):
        validate_ohlcv(_bars(open_time=(2, pd.Timestamp("2024-01-01 00:01"))), "f.csv", "open_time")


def test_non_numeric_field_is_named():
    frame = _bars().astype({"close": object})
    frame.loc[1, "close"] = "12,0"
    with pytest.raises(DataError, match=r"f\.csv, row 6, field 'close': not a finite number: '12,0'"):
        to_numeric(frame, ["open", "high", "low", "close", "volume"], "f.csv")


def test_epoch_units_ms_and_us_decode_alike_and_seconds_are_refused():
    ms = pd.Series([1735689600000, 1735689660000])
    us = ms * 1000
    pd.testing.assert_series_equal(epoch_to_timestamp(ms, "f", "open_time"), epoch_to_timestamp(us, "f", "open_time"))
    assert epoch_to_timestamp(ms, "f", "open_time").iloc[0] == pd.Timestamp("2025-01-01")
    with pytest.raises(DataError, match=r"row 2, field 'open_time'.*looks like seconds"):
        epoch_to_timestamp(pd.Series([1735689600000, 1735689660]), "f", "open_time")
    with pytest.raises(DataError, match=r"looks like nanoseconds"):
        epoch_to_timestamp(pd.Series([1735689600000 * 10**6]), "f", "open_time")


def test_lake_replaces_one_day_and_keeps_the_rest_of_its_month(tmp_path, source):
    lake = MinuteLake(tmp_path / "lake")
    days = dict(source.minute_days("ETHUSDT", dt.date(2021, 9, 28), dt.date(2021, 10, 2)))
    for day, frame in days.items():
        lake.write_day("ETHUSDT", day, frame)
    assert sorted(p.parent.name for p in lake.files()) == ["month=2021-09", "month=2021-10"]
    assert lake.stored_days()["date"].tolist() == sorted(days)

    changed = days[dt.date(2021, 9, 29)].assign(volume=1.0)
    lake.write_day("ETHUSDT", dt.date(2021, 9, 29), changed)
    back = lake.read(dt.date(2021, 9, 28), dt.date(2021, 10, 2), ["ETHUSDT"])
    assert len(back) == sum(len(f) for f in days.values())
    on_29 = back.open_time.dt.date == dt.date(2021, 9, 29)
    assert (back.loc[on_29, "volume"] == 1.0).all()
    pd.testing.assert_frame_equal(
        back.loc[~on_29 & (back.open_time.dt.date == dt.date(2021, 9, 30)), ["open_time", "volume"]].reset_index(drop=True),
        days[dt.date(2021, 9, 30)][["open_time", "volume"]].reset_index(drop=True),
        check_dtype=False,
    )
    with pytest.raises(ValueError, match="rows span"):
        lake.write_day("ETHUSDT", dt.date(2021, 9, 28), days[dt.date(2021, 9, 30)])


# --------------------------------------------------------------------------- complete minute days

GAP = [(dt.datetime(2021, 9, 29, 7), dt.datetime(2021, 9, 29, 9))]
TOLERANCES = {"price_rtol": 1e-9, "volume_rtol": 1e-6}


def _kline(source: EmbeddedSource, symbol: str, day: dt.date) -> dict:
    klines = source.daily_klines([symbol], day, day + dt.timedelta(days=1))
    return klines.iloc[0].to_dict()


def _day(source: EmbeddedSource, symbol: str, day: dt.date) -> pd.DataFrame:
    return dict(source.minute_days(symbol, day, day + dt.timedelta(days=1)))[day]


def test_a_whole_day_or_a_known_gap_is_complete_without_a_kline(source):
    day, gap_day = dt.date(2021, 10, 2), dt.date(2021, 9, 29)
    assert intraday_day_problem(day, _day(source, "BTCUSDT", day), None, GAP, **TOLERANCES) is None
    assert intraday_day_problem(gap_day, _day(source, "BTCUSDT", gap_day), None, GAP, **TOLERANCES) is None
    # Without the gap on record, the maintenance day's 120 missing minutes need the kline.
    problem = intraday_day_problem(gap_day, _day(source, "BTCUSDT", gap_day), None, [], **TOLERANCES)
    assert problem is not None and "120 of 1440 minutes missing (first 07:00" in problem
    kline = _kline(source, "BTCUSDT", gap_day)
    assert intraday_day_problem(gap_day, _day(source, "BTCUSDT", gap_day), kline, [], **TOLERANCES) is None


def test_a_day_cut_at_a_line_break_is_refused_with_or_without_its_kline(source):
    # The hostile case: BTC 2021-10-02 from its first 700 minutes, every row valid.
    day = dt.date(2021, 10, 2)
    cut = _day(source, "BTCUSDT", day).iloc[:700]
    problem = intraday_day_problem(day, cut, None, GAP, **TOLERANCES)
    assert "740 of 1440 minutes missing (first 11:40; bars run 00:00..11:39)" in problem
    problem = intraday_day_problem(day, cut, _kline(source, "BTCUSDT", day), GAP, **TOLERANCES)
    assert "daily kline" in problem and "11:39" in problem


def test_a_whole_day_that_disagrees_with_its_kline_is_refused(source):
    day = dt.date(2021, 10, 2)
    minutes = _day(source, "ETHUSDT", day)
    minutes.loc[100, "volume"] += 1.0
    problem = intraday_day_problem(day, minutes, _kline(source, "ETHUSDT", day), GAP, **TOLERANCES)
    assert problem is not None and "volume" in problem


class _Cut:
    """The embedded source with one (symbol, day) cut after its first `keep` minutes."""

    name = "cut"

    def __init__(self, inner: EmbeddedSource, symbol: str, day: dt.date, keep: int, klines: bool = True) -> None:
        self.inner, self.symbol, self.day, self.keep, self.klines = inner, symbol, day, keep, klines

    def daily_klines(self, symbols, start, end):
        frame = self.inner.daily_klines(symbols, start, end)
        return frame if self.klines else frame.iloc[:0]

    def minute_days(self, symbol, start, end):
        for day, minutes in self.inner.minute_days(symbol, start, end):
            if (symbol, day) == (self.symbol, self.day):
                minutes = minutes.iloc[: self.keep].copy()
                minutes.attrs["source"] = "/drop/BTCUSDT-1m-2021-10-02.csv"
            yield day, minutes


@pytest.mark.parametrize("klines", [True, False])
def test_ingestion_refuses_a_cut_day_naming_its_file_and_keeps_what_was_stored(tmp_path, source, klines):
    lake = MinuteLake(tmp_path / "lake")
    first, end = dt.date(2021, 9, 28), dt.date(2021, 10, 4)
    ingest_minutes(source, lake, ["BTCUSDT"], first, dt.date(2021, 10, 2), gaps=GAP, **TOLERANCES)
    before = {p: p.read_bytes() for p in lake.files()}

    with pytest.raises(DataError, match=r"BTCUSDT-1m-2021-10-02\.csv: BTCUSDT 2021-10-02 not stored"):
        ingest_minutes(_Cut(source, "BTCUSDT", dt.date(2021, 10, 2), 700, klines), lake, ["BTCUSDT"], first, end,
                       gaps=GAP, **TOLERANCES)
    assert {p: p.read_bytes() for p in lake.files()} == before
