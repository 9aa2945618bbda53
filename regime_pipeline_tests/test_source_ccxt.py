"""Tests for CcxtSource: the real ccxt client against a local fake Binance serving real embedded bars."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

import ccxt
import pandas as pd
import pytest

from regime_pipeline.configs import PROJECT_ROOT
from regime_pipeline.core.data.bars import MINUTE_COLUMNS
from regime_pipeline.core.errors import DataError
from regime_pipeline.core.data.sources.base import MarketDataSource
from regime_pipeline.core.data.sources.ccxt_source import CcxtSource, FetchError
from regime_pipeline_tests.fake_binance import (
    INTERNAL_ERROR,
    FakeBinance,
    Scripted,
    rate_limited,
    slow,
    unavailable,
)

EMBEDDED = PROJECT_ROOT / "data" / "embedded"
KLINES = "/api/v3/klines"
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
# After the embedded minute window ends for every symbol served here (2021-10-17 22:21).
AFTER_DATA = pd.Timestamp("2021-10-17 22:00")
MINUTE_MS = 60_000


def ms(stamp: str) -> int:
    return int(pd.Timestamp(stamp).value // 1_000_000)


class RecordingLog:
    """A logger stand-in that keeps (level, message) pairs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def debug(self, msg: str, *args: object) -> None:
        self.lines.append(("debug", msg % args if args else msg))

    def info(self, msg: str, *args: object) -> None:
        self.lines.append(("info", msg % args if args else msg))

    def warning(self, msg: str, *args: object) -> None:
        self.lines.append(("warning", msg % args if args else msg))


@pytest.fixture(scope="module")
def minutes() -> pd.DataFrame:
    frame = pd.read_parquet(EMBEDDED / "minute_bars.parquet")[MINUTE_COLUMNS]
    frame = frame[frame["symbol"].isin(SYMBOLS)].reset_index(drop=True)
    frame["open_time"] = frame["open_time"].astype("datetime64[ms]")
    return frame


@pytest.fixture(scope="module")
def daily() -> pd.DataFrame:
    frame = pd.read_parquet(EMBEDDED / "daily_klines.parquet")
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame


@pytest.fixture
def fake(minutes: pd.DataFrame, daily: pd.DataFrame) -> Iterator[FakeBinance]:
    """A fake Binance on 127.0.0.1 serving the embedded BTCUSDT/ETHUSDT minutes and all daily klines."""
    with FakeBinance(minutes=minutes, daily=daily) as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_source(fake: FakeBinance, sleeps: list[float], now: pd.Timestamp = AFTER_DATA, **kwargs: object) -> CcxtSource:
    kwargs.setdefault("timeout_ms", 2_000)
    return CcxtSource(api_url=fake.url, sleep=sleeps.append, now=lambda: now, **kwargs)  # type: ignore[arg-type]


def source_rows(minutes: pd.DataFrame, symbol: str, start: str, end: str) -> pd.DataFrame:
    """The embedded rows of `symbol` with open time in [start, end), as minute_days returns them."""
    own = minutes[(minutes["symbol"] == symbol) & (minutes["open_time"] >= start) & (minutes["open_time"] < end)]
    return own[MINUTE_COLUMNS[1:]].reset_index(drop=True)


def joined(days: list[tuple[dt.date, pd.DataFrame]]) -> pd.DataFrame:
    return pd.concat([frame for _, frame in days], ignore_index=True)


# -- pagination and parsing ---------------------------------------------------------------


def test_is_a_market_data_source(fake: FakeBinance, sleeps: list[float]) -> None:
    assert isinstance(make_source(fake, sleeps), MarketDataSource)


def test_minutes_paginate_forward_and_equal_the_source_rows(
    fake: FakeBinance, sleeps: list[float], minutes: pd.DataFrame
) -> None:
    log = RecordingLog()
    days = list(make_source(fake, sleeps, log=log).minute_days("BTCUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 23)))

    assert [(day, len(frame)) for day, frame in days] == [
        (dt.date(2021, 9, 20), 1440), (dt.date(2021, 9, 21), 1440), (dt.date(2021, 9, 22), 1440),
    ]
    # 4,320 minutes = 5 pages of at most 1,000, each starting one minute after the last bar seen.
    requests = fake.requests_to(KLINES)
    starts = [int(r.params["startTime"]) for r in requests]
    assert starts == [ms("2021-09-20") + k * 1000 * MINUTE_MS for k in range(5)]
    assert {r.params["endTime"] for r in requests} == {str(ms("2021-09-23") - 1)}
    asked = {(r.params["symbol"], r.params["interval"], r.params["limit"]) for r in requests}
    assert asked == {("BTCUSDT", "1m", "1000")}
    # Exactly the source rows: nothing lost or doubled at page boundaries.
    pd.testing.assert_frame_equal(joined(days), source_rows(minutes, "BTCUSDT", "2021-09-20", "2021-09-23"))
    assert joined(days)["open_time"].dtype == "datetime64[ms]"
    assert ("info", "BTCUSDT 2021-09-21: 1440 bars") in log.lines


def test_small_pages_cross_day_boundaries_without_holes(
    fake: FakeBinance, sleeps: list[float], minutes: pd.DataFrame
) -> None:
    source = make_source(fake, sleeps, page_limit=700)
    days = list(source.minute_days("ETHUSDT", dt.date(2021, 10, 1), dt.date(2021, 10, 3)))
    assert len(fake.requests_to(KLINES)) == 5  # ceil(2,880 / 700)
    pd.testing.assert_frame_equal(joined(days), source_rows(minutes, "ETHUSDT", "2021-10-01", "2021-10-03"))


def test_gap_day_is_complete_with_1320_bars(fake: FakeBinance, sleeps: list[float], minutes: pd.DataFrame) -> None:
    days = dict(make_source(fake, sleeps).minute_days("BTCUSDT", dt.date(2021, 9, 28), dt.date(2021, 9, 30)))
    assert list(days) == [dt.date(2021, 9, 28), dt.date(2021, 9, 29)]
    gap_day = days[dt.date(2021, 9, 29)]
    assert len(gap_day) == 1320
    hours = gap_day["open_time"].dt.hour
    assert not hours.isin([7, 8]).any()  # Binance maintenance 07:00-08:59
    pd.testing.assert_frame_equal(gap_day, source_rows(minutes, "BTCUSDT", "2021-09-29", "2021-09-30"))


def test_a_malformed_row_names_endpoint_symbol_and_row(fake: FakeBinance, sleeps: list[float]) -> None:
    t = ms("2021-09-20")
    good = [t, "1.0", "1.0", "1.0", "1.0", "1.0", t + MINUTE_MS - 1, "1.0", 1, "0", "0", "0"]
    bad = [t + MINUTE_MS, "1.0", "oops", "1.0", "1.0", "1.0", t + 2 * MINUTE_MS - 1, "1.0", 1, "0", "0", "0"]
    fake.script(KLINES, Scripted(status=200, body=[good, bad]))
    with pytest.raises(DataError) as info:
        list(make_source(fake, sleeps).minute_days("BTCUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 21)))
    assert "GET /api/v3/klines symbol=BTCUSDT" in info.value.source
    assert (info.value.row, info.value.field) == (2, "high")


def test_a_page_that_does_not_advance_raises(fake: FakeBinance, sleeps: list[float]) -> None:
    # A broken server ignoring startTime: the same old bar every time.
    t = ms("2021-09-19 12:00")
    stale = [t, "1.0", "1.0", "1.0", "1.0", "1.0", t + MINUTE_MS - 1, "1.0", 1, "0", "0", "0"]
    fake.script(KLINES, Scripted(status=200, body=[stale]))
    with pytest.raises(FetchError, match="did not advance"):
        list(make_source(fake, sleeps).minute_days("BTCUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 21)))
    assert len(fake.requests_to(KLINES)) == 1


# -- closed days only, resumability -------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2021-09-22 13:45:30", ["2021-09-20", "2021-09-21"]),  # 09-22 still trading
        ("2021-09-22 00:00:00", ["2021-09-20", "2021-09-21"]),  # 09-21 closed exactly now
        ("2021-09-21 23:59:59", ["2021-09-20"]),  # the 23:59 bar is still open
        ("2021-09-19 12:00:00", []),  # the whole window is in the future
    ],
)
def test_only_closed_days_are_yielded(fake: FakeBinance, sleeps: list[float], now: str, expected: list[str]) -> None:
    source = make_source(fake, sleeps, now=pd.Timestamp(now, tz="UTC"))
    days = [day for day, _ in source.minute_days("BTCUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 25))]
    assert days == [dt.date.fromisoformat(d) for d in expected]
    # Never asks for a bar that has not closed.
    closed_before = ms(pd.Timestamp(now).floor("min").isoformat())
    assert all(int(r.params["endTime"]) < closed_before for r in fake.requests_to(KLINES))


def test_window_ends_are_respected(fake: FakeBinance, sleeps: list[float]) -> None:
    # Data exists on both sides of the window; only the window's whole days come back.
    source = make_source(fake, sleeps)
    days = [day for day, _ in source.minute_days("BTCUSDT", dt.date(2021, 10, 5), dt.date(2021, 10, 7))]
    assert days == [dt.date(2021, 10, 5), dt.date(2021, 10, 6)]
    requests = fake.requests_to(KLINES)
    assert int(requests[0].params["startTime"]) == ms("2021-10-05")
    assert all(int(r.params["endTime"]) == ms("2021-10-07") - 1 for r in requests)


def test_resume_after_day_two_equals_a_single_run(fake: FakeBinance, sleeps: list[float]) -> None:
    source = make_source(fake, sleeps)
    start, end = dt.date(2021, 9, 19), dt.date(2021, 9, 25)
    full = list(source.minute_days("ETHUSDT", start, end))
    full_requests = len(fake.requests_to(KLINES))

    # A caller that stored two days, then crashed.
    generator = source.minute_days("ETHUSDT", start, end)
    stored = list(itertools.islice(generator, 2))
    generator.close()
    assert len(fake.requests_to(KLINES)) - full_requests == 3  # 2 days = 2,880 bars = 3 pages, no more
    resumed = list(source.minute_days("ETHUSDT", stored[-1][0] + dt.timedelta(days=1), end))

    assert [day for day, _ in stored + resumed] == [day for day, _ in full]
    pd.testing.assert_frame_equal(joined(stored + resumed), joined(full))


# -- retries --------------------------------------------------------------------------------


def test_rate_limit_honours_retry_after(fake: FakeBinance, sleeps: list[float], minutes: pd.DataFrame) -> None:
    fake.script(KLINES, rate_limited(retry_after_s=2), rate_limited(retry_after_s=7, status=418))
    log = RecordingLog()
    days = list(make_source(fake, sleeps, log=log).minute_days("BTCUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 21)))
    assert sleeps == [2.0, 7.0]
    assert len(fake.requests_to(KLINES)) == 2 + 2  # two refusals, then the day's two pages
    pd.testing.assert_frame_equal(joined(days), source_rows(minutes, "BTCUSDT", "2021-09-20", "2021-09-21"))
    assert sum(level == "warning" and "DDoSProtection" in line for level, line in log.lines) == 2


@pytest.mark.parametrize(
    "answer",
    [
        unavailable(503),  # HTML from the edge -> ccxt.ExchangeNotAvailable
        unavailable(500, INTERNAL_ERROR),  # Binance -1001 -> ccxt.OperationFailed
        unavailable(503, {"code": -1008, "msg": "Server is currently overloaded with other requests."}),
    ],
    ids=["503-html", "500-1001", "503-1008"],
)
def test_server_error_is_retried_with_backoff(
    fake: FakeBinance, sleeps: list[float], minutes: pd.DataFrame, answer: Scripted
) -> None:
    fake.script(KLINES, answer)
    days = list(make_source(fake, sleeps).minute_days("BTCUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 21)))
    assert len(sleeps) == 1 and 0.5 <= sleeps[0] <= 1.0  # first backoff: 1 s with equal jitter
    pd.testing.assert_frame_equal(joined(days), source_rows(minutes, "BTCUSDT", "2021-09-20", "2021-09-21"))


def test_timeout_is_retried(fake: FakeBinance, sleeps: list[float], minutes: pd.DataFrame) -> None:
    fake.script(KLINES, slow(0.6))
    log = RecordingLog()
    source = make_source(fake, sleeps, timeout_ms=200, log=log)
    days = list(source.minute_days("BTCUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 21)))
    assert len(sleeps) == 1
    assert any(level == "warning" and "RequestTimeout" in line for level, line in log.lines)
    pd.testing.assert_frame_equal(joined(days), source_rows(minutes, "BTCUSDT", "2021-09-20", "2021-09-21"))


def test_retries_exhausted_names_what_failed(fake: FakeBinance, sleeps: list[float]) -> None:
    fake.script(KLINES, *[unavailable(503)] * 10)
    source = make_source(fake, sleeps, max_retries=3, backoff_base_s=1.0, backoff_max_s=1.5)
    with pytest.raises(FetchError) as info:
        list(source.minute_days("BTCUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 23)))
    message = str(info.value)
    assert "GET /api/v3/klines symbol=BTCUSDT interval=1m" in message
    assert "2021-09-20 00:00..2021-09-22 23:59 UTC" in message
    assert "gave up after 4 attempts" in message and "ExchangeNotAvailable" in message
    assert info.value.attempts == 4 and isinstance(info.value.__cause__, ccxt.ExchangeNotAvailable)
    assert len(fake.requests_to(KLINES)) == 4
    # Exponential backoff, capped at backoff_max_s: caps 1, 1.5, 1.5 with equal jitter.
    assert [cap / 2 <= s <= cap for s, cap in zip(sleeps, [1.0, 1.5, 1.5])] == [True] * 3


def test_invalid_symbol_fails_at_once(fake: FakeBinance, sleeps: list[float]) -> None:
    with pytest.raises(FetchError) as info:
        list(make_source(fake, sleeps).minute_days("NOPEUSDT", dt.date(2021, 9, 20), dt.date(2021, 9, 21)))
    message = str(info.value)
    assert "symbol=NOPEUSDT" in message and "Invalid symbol" in message and "not retryable, 1 attempt" in message
    assert isinstance(info.value.__cause__, ccxt.BadSymbol)
    assert len(fake.requests_to(KLINES)) == 1 and sleeps == []


# -- daily klines ---------------------------------------------------------------------------


def test_daily_klines_equal_the_embedded_frame(fake: FakeBinance, sleeps: list[float], daily: pd.DataFrame) -> None:
    source = make_source(fake, sleeps, now=pd.Timestamp("2026-01-10"))
    got = source.daily_klines(SYMBOLS, dt.date(2020, 1, 1), dt.date(2023, 1, 1))
    in_range = (daily["date"] >= dt.date(2020, 1, 1)) & (daily["date"] < dt.date(2023, 1, 1))
    mask = daily["symbol"].isin(SYMBOLS) & in_range
    expected = daily.loc[mask, got.columns].sort_values(["symbol", "date"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert len(got) == 2 * 1096
    assert len(fake.requests_to(KLINES)) == 4  # 1,096 days = 2 pages per symbol


def test_daily_klines_exclude_the_unclosed_day(fake: FakeBinance, sleeps: list[float]) -> None:
    source = make_source(fake, sleeps, now=pd.Timestamp("2025-12-31 12:00", tz="UTC"))
    got = source.daily_klines(["BTCUSDT"], dt.date(2025, 12, 20), dt.date(2026, 1, 5))
    assert got["date"].tolist() == [dt.date(2025, 12, 20) + dt.timedelta(days=i) for i in range(11)]


def test_daily_klines_empty_range_has_the_schema(fake: FakeBinance, sleeps: list[float]) -> None:
    got = make_source(fake, sleeps).daily_klines(["BTCUSDT"], dt.date(2021, 9, 20), dt.date(2021, 9, 20))
    assert got.empty and list(got.columns) == ["symbol", "date", "open", "high", "low", "close", "volume"]


# -- the fake itself ------------------------------------------------------------------------


def test_fake_is_valid_for_ccxt_load_markets_and_fetch_ohlcv(fake: FakeBinance, minutes: pd.DataFrame) -> None:
    exchange = ccxt.binance()
    CcxtSource(exchange, api_url=fake.url)
    assert {urlsplit(u).hostname for u in exchange.urls["api"].values() if isinstance(u, str)} == {"127.0.0.1"}
    markets = exchange.load_markets()
    assert {"BTC/USDT", "ETH/USDT"} <= set(markets)
    candles = exchange.fetch_ohlcv("BTC/USDT", "1m", since=ms("2021-09-20"), limit=3)
    expected = source_rows(minutes, "BTCUSDT", "2021-09-20 00:00", "2021-09-20 00:03")
    assert [c[1:] for c in candles] == expected[["open", "high", "low", "close", "volume"]].values.tolist()


def _get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_fake_klines_follow_binance_rules(fake: FakeBinance) -> None:
    base = f"{fake.url}{KLINES}?symbol=BTCUSDT&interval=1m"
    status, rows = _get(f"{base}&startTime={ms('2021-09-20')}&limit=5000")
    assert status == 200 and len(rows) == 1000  # capped at 1,000
    assert rows[0][:7] == [ms("2021-09-20"), "47241.75000000", "47304.16000000", "47241.75000000",
                           "47262.60000000", "45.81036000", ms("2021-09-20") + MINUTE_MS - 1]
    assert len(rows[0]) == 12
    _, latest = _get(f"{base}&endTime={ms('2021-09-20')}")
    assert len(latest) == 500 and latest[-1][0] == ms("2021-09-20")  # default limit, most recent first-to-last
    reversed_range = (400, {"code": -1023, "msg": "Start time is greater than end time."})
    assert _get(f"{base}&startTime=2&endTime=1") == reversed_range
    assert _get(f"{fake.url}{KLINES}?symbol=NOPE&interval=1m") == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert _get(f"{fake.url}/api/v3/ping") == (200, {})
    assert [r.path for r in fake.requests][-1] == "/api/v3/ping"


def test_a_ban_longer_than_max_wait_fails_at_once_instead_of_hanging(fake, sleeps):
    fake.script(KLINES, rate_limited(retry_after_s=7200, status=418))
    source = make_source(fake, sleeps, max_wait_s=600)
    with pytest.raises(FetchError, match=r"asks to wait 7200s"):
        source.daily_klines(["BTCUSDT"], dt.date(2021, 9, 20), dt.date(2021, 9, 22))
    assert sleeps == []
