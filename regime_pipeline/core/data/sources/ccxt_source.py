"""Live Binance spot bars through ccxt: paginated, rate-limited, retried, and resumable one day at a time.

The source calls Binance's raw ``GET /api/v3/klines`` through ccxt's implicit endpoint
``publicGetKlines`` with the exchange's own symbol (``BTCUSDT``). That needs no
``load_markets`` round trip and keeps the exact Binance semantics: ``startTime`` and
``endTime`` are inclusive open times in milliseconds, at most 1,000 candles per page, oldest
first. Every page is parsed and checked with :mod:`regime_pipeline.core.data.bars`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import ccxt
import numpy as np
import pandas as pd

from regime_pipeline.core.data.bars import (
    DAILY_KLINE_COLUMNS,
    OHLCV_COLUMNS,
    complete_days,
    epoch_to_timestamp,
    to_numeric,
    validate_ohlcv,
)
from regime_pipeline.core.errors import DataError

KLINES_PATH = "/api/v3/klines"
KLINES_ENDPOINT = f"GET {KLINES_PATH}"
MAX_PAGE_LIMIT = 1000  # Binance refuses more than 1,000 candles per klines request
INTERVAL_MS = {"1m": 60_000, "1d": 86_400_000}

# Binance error codes that mean "the server is struggling, ask again later". ccxt maps -1008
# (overloaded) and -1006 (unexpected response) to a plain ExchangeError, which would otherwise
# look permanent; the others already arrive as NetworkError / OperationFailed subclasses.
TRANSIENT_BINANCE_CODES = frozenset({-1000, -1001, -1003, -1006, -1007, -1008, -1015})


class Log(Protocol):
    """The part of :class:`logging.Logger` (or Dagster's ``context.log``) the source uses."""

    def debug(self, msg: str, *args: Any) -> Any: ...
    def info(self, msg: str, *args: Any) -> Any: ...
    def warning(self, msg: str, *args: Any) -> Any: ...


class FetchError(RuntimeError):
    """A klines request that failed for good: after all retries, or at once if not retryable.

    :param endpoint: e.g. ``"GET /api/v3/klines"``
    :param symbol: the Binance symbol, e.g. ``"BTCUSDT"``
    :param interval: ``"1m"`` or ``"1d"``
    :param start: first open time asked for (naive UTC)
    :param end: last open time asked for, inclusive (naive UTC)
    :param attempts: how many requests were sent
    :param reason: what the last attempt returned
    :param retryable: whether the error was of a kind that is retried
    """

    def __init__(
        self,
        endpoint: str,
        symbol: str,
        interval: str,
        start: pd.Timestamp,
        end: pd.Timestamp,
        attempts: int,
        reason: str,
        *,
        retryable: bool,
    ) -> None:
        self.endpoint = endpoint
        self.symbol = symbol
        self.interval = interval
        self.start = start
        self.end = end
        self.attempts = attempts
        self.reason = reason
        self.retryable = retryable
        tries = f"{attempts} attempt" + ("" if attempts == 1 else "s")
        verdict = f"gave up after {tries}" if retryable else f"not retryable, {tries}"
        super().__init__(
            f"{endpoint} symbol={symbol} interval={interval} "
            f"{start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M} UTC: {reason} ({verdict})"
        )


def utc_now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


def point_at(exchange: ccxt.Exchange, api_url: str) -> None:
    """Send every REST call of `exchange` to `api_url` (e.g. a local fake), keeping each URL's path.

    ``urls['api']['public']`` (``https://api.binance.com/api/v3``, used by klines and
    exchangeInfo) becomes ``{api_url}/api/v3``; every other entry (sapi, fapi, ...) is rewritten
    the same way so that nothing can reach the real exchange. Market loading is limited to spot,
    because futures exchangeInfo lives on other hosts a spot fake does not serve.
    """
    base = api_url.rstrip("/")
    rewritten = {
        key: base + urlsplit(url).path if isinstance(url, str) else url
        for key, url in exchange.urls["api"].items()
    }
    # Assign fresh dicts rather than mutating: never touch state another instance might share.
    exchange.urls = {**exchange.urls, "api": rewritten}
    exchange.options = {**exchange.options, "fetchMarkets": {"types": ["spot"]}}


def retry_after_s(headers: Mapping[str, Any] | None) -> float | None:
    """The ``Retry-After`` header in seconds, or None if absent or not a non-negative number."""
    if not headers:
        return None
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None  # an HTTP-date; Binance sends seconds, so fall back to backoff
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def parse_klines(raw: Any, source: str, interval: str) -> pd.DataFrame:
    """Turn a Binance klines answer into ``open_time, open, high, low, close, volume`` rows.

    Each kline is ``[open_time_ms, open, high, low, close, volume, close_time, ...]`` with
    prices and volume as decimal strings. Errors name `source` and the 1-based record index.
    The result is validated and sorted by open time.
    """
    if not isinstance(raw, list):
        raise DataError(source, f"expected a JSON array of klines, got {type(raw).__name__}")
    for i, record in enumerate(raw, start=1):
        if not isinstance(record, (list, tuple)) or len(record) < 6:
            raise DataError(source, f"expected an array of at least 6 fields, got {record!r}", row=i)
    columns = ["open_time", *OHLCV_COLUMNS]
    if not raw:
        empty = pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
        empty["open_time"] = empty["open_time"].astype("datetime64[ms]")
        return empty
    frame = pd.DataFrame([list(record[:6]) for record in raw], columns=columns)
    rows = np.arange(1, len(frame) + 1)
    frame["_row"] = rows
    frame["open_time"] = epoch_to_timestamp(frame["open_time"], source, "open_time", rows)
    step = INTERVAL_MS[interval]
    millis = frame["open_time"].to_numpy().astype("int64")
    misaligned = millis % step != 0
    if misaligned.any():
        i = int(np.flatnonzero(misaligned)[0])
        message = f"open time {frame['open_time'].iloc[i]} is not on a {interval} boundary"
        raise DataError(source, message, row=i + 1, field="open_time")
    frame = to_numeric(frame, OHLCV_COLUMNS, source)
    return validate_ohlcv(frame, source, "open_time")


def _naive_utc(value: dt.datetime | pd.Timestamp) -> pd.Timestamp:
    """A naive UTC timestamp; a naive input is taken to be UTC already."""
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tz is not None else stamp


def _ms(stamp: pd.Timestamp) -> int:
    """Milliseconds since the epoch of a naive UTC timestamp."""
    return int(stamp.value // 1_000_000)


def _empty_daily_klines() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in DAILY_KLINE_COLUMNS})
    return frame.astype({"symbol": "object", "date": "object"})


class CcxtSource:
    """Binance spot 1-minute bars and daily klines fetched live with ccxt.

    :param exchange: a ``ccxt.binance`` instance to use; by default one is built with
        ``enableRateLimit=True`` and `timeout_ms`. An injected exchange keeps its own settings,
        except that response headers and JSON are recorded (needed to read ``Retry-After`` and
        Binance error codes).
    :param api_url: base URL to send all requests to instead of Binance, e.g.
        ``"http://127.0.0.1:8123"`` for a local fake (see :func:`point_at`)
    :param max_retries: retries after the first attempt for rate limits, 5xx and timeouts, so at
        most ``max_retries + 1`` requests per page
    :param backoff_base_s: first backoff in seconds; doubles with every retry
    :param backoff_max_s: ceiling of the backoff in seconds (a server's ``Retry-After`` is
        honoured as given, even if longer)
    :param max_wait_s: longest single wait accepted; a ``Retry-After`` beyond it (an IP ban)
        fails the request at once with the wait it asked for
    :param page_limit: candles per request, 1..1000
    :param timeout_ms: HTTP timeout of a default-built exchange, in milliseconds
    :param sleep: called with seconds to wait between retries (inject a recorder in tests)
    :param now: returns the current time (aware, or naive UTC); decides which days are closed
    :param log: receives a line per page (debug), per day (info) and per retry (warning)
    :param rng: source of backoff jitter
    """

    name = "ccxt"

    def __init__(
        self,
        exchange: ccxt.Exchange | None = None,
        *,
        api_url: str | None = None,
        max_retries: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_wait_s: float = 600.0,
        page_limit: int = MAX_PAGE_LIMIT,
        timeout_ms: int = 10_000,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], dt.datetime | pd.Timestamp] = utc_now,
        log: Log | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= page_limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"page_limit must be within 1..{MAX_PAGE_LIMIT}, got {page_limit}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if exchange is None:
            exchange = ccxt.binance({"enableRateLimit": True, "timeout": timeout_ms})
        if api_url is not None:
            point_at(exchange, api_url)
        exchange.enableLastResponseHeaders = True
        exchange.enableLastJsonResponse = True
        self.exchange = exchange
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_wait_s = max_wait_s
        self.page_limit = page_limit
        self.sleep = sleep
        self.now = now
        self.log: Log = log if log is not None else logging.getLogger(__name__)
        self.rng = rng if rng is not None else random.Random()

    # -- public API ---------------------------------------------------------------------

    def daily_klines(self, symbols: Sequence[str], start: dt.date, end: dt.date) -> pd.DataFrame:
        """Binance's own daily candles for UTC days ``[start, end)``, today's unclosed candle excluded.

        :return: columns ``symbol, date, open, high, low, close, volume``, sorted by (symbol, date)
        """
        window_start = pd.Timestamp(start)
        window_end = min(pd.Timestamp(end), self._now().floor("D"))
        frames: list[pd.DataFrame] = []
        for symbol in dict.fromkeys(symbols):  # de-duplicated, order kept
            pages = [p for _, p in self._pages(symbol, "1d", window_start, window_end) if not p.empty]
            own = pd.concat(pages, ignore_index=True) if pages else pd.DataFrame()
            self.log.info(f"{symbol} daily klines {start}..{end}: {len(own)} days")
            if not own.empty:
                frames.append(own.assign(symbol=symbol))
        if not frames:
            return _empty_daily_klines()
        out = pd.concat(frames, ignore_index=True)
        out["date"] = out["open_time"].dt.date
        return validate_ohlcv(out[DAILY_KLINE_COLUMNS], KLINES_ENDPOINT, "date")

    def minute_days(self, symbol: str, start: dt.date, end: dt.date) -> Iterator[tuple[dt.date, pd.DataFrame]]:
        """Yield ``(day, minutes)`` for each closed UTC day of `symbol` in ``[start, end)``, in order.

        Pages are walked forward from ``start 00:00``; a day is yielded as soon as the pages
        covering it are in, before the next page is requested, so a caller that stores each
        day can resume after a crash from the day after its last stored one. Only days that
        ended by ``now()`` are yielded; the exchange vouches for every minute up to the last
        closed minute, so a day with exchange gaps (e.g. 2021-09-29) is complete all the same.
        `minutes` has columns ``open_time, open, high, low, close, volume``.
        """
        window_start = pd.Timestamp(start)
        window_end = min(pd.Timestamp(end), self._now().floor("min"))
        pending = pd.DataFrame()
        for fetched_to, page in self._pages(symbol, "1m", window_start, window_end):
            if not page.empty:
                pending = page if pending.empty else pd.concat([pending, page], ignore_index=True)
            origin = f"{KLINES_ENDPOINT} symbol={symbol} interval=1m"
            for day, minutes in complete_days(pending, window_start, fetched_to, origin):
                self.log.info(f"{symbol} {day}: {len(minutes)} bars")
                yield day, minutes
            if not pending.empty:
                # Keep only the rows of the day still being filled.
                pending = pending.loc[pending["open_time"] >= fetched_to.floor("D")].reset_index(drop=True)

    def intraday_days(self, symbol: str, start: dt.date, end: dt.date) -> Iterator[tuple[dt.date, str, pd.DataFrame]]:
        """None: the live source fetches 1-minute bars, which ingestion stores in the lake."""
        return iter(())

    def available_symbols(self, symbols: Sequence[str]) -> list[str]:
        """All of them: the exchange serves every listed pair."""
        return list(symbols)

    # -- paging and retries ------------------------------------------------------------

    def _now(self) -> pd.Timestamp:
        return _naive_utc(self.now())

    def _pages(
        self, symbol: str, interval: str, start: pd.Timestamp, end: pd.Timestamp
    ) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
        """Yield ``(fetched_to, rows)`` page by page for open times in ``[start, end)``.

        `fetched_to` is exclusive: every candle the exchange has before it has been seen.
        Stops when the window is exhausted or a page comes back empty. A page that does not
        move past the previous one raises :class:`FetchError` rather than looping.
        """
        step = INTERVAL_MS[interval]
        cursor, end_ms = _ms(start), _ms(end)
        page_no = 0
        while cursor < end_ms:
            page_no += 1
            first = pd.Timestamp(cursor, unit="ms")
            last = pd.Timestamp(end_ms - 1, unit="ms")
            raw = self._get_klines(symbol, interval, cursor, end_ms - 1)
            source = f"{KLINES_ENDPOINT} symbol={symbol} interval={interval} startTime={cursor}"
            rows = parse_klines(raw, source, interval)
            times = rows["open_time"]
            # Binance never answers outside [startTime, endTime]; drop anything that does.
            inside = rows.loc[(times >= first) & (times < end)].reset_index(drop=True)
            if inside.empty:
                if rows.empty or times.max() >= end:
                    # Nothing left in the window: the exchange vouches for up to its end.
                    self.log.debug(f"{symbol} {interval} page {page_no} from {first}: no more bars")
                    yield end, inside
                    return
                raise FetchError(
                    KLINES_ENDPOINT, symbol, interval, first, last, 1,
                    f"page did not advance: {len(rows)} bars, all before startTime", retryable=False,
                )
            next_cursor = _ms(inside["open_time"].iloc[-1]) + step
            if next_cursor <= cursor:  # cannot happen given the filter above; a guard against loops
                raise FetchError(
                    KLINES_ENDPOINT, symbol, interval, first, last, 1, "page did not advance", retryable=False
                )
            cursor = next_cursor
            fetched_to = pd.Timestamp(min(cursor, end_ms), unit="ms")
            self.log.debug(
                f"{symbol} {interval} page {page_no}: {len(inside)} bars "
                f"{inside['open_time'].iloc[0]}..{inside['open_time'].iloc[-1]}"
            )
            yield fetched_to, inside

    def _get_klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> Any:
        """One klines page, retried on rate limits, 5xx and timeouts; open times inclusive, in ms."""
        attempts = 0
        while True:
            attempts += 1
            params = {
                "symbol": symbol,
                "interval": interval,
                "startTime": start_ms,
                "endTime": end_ms,
                "limit": self.page_limit,
            }
            # Cleared so that an error raised before any answer is not judged by a stale body.
            self.exchange.last_json_response = None
            self.exchange.last_response_headers = None
            try:
                return self.exchange.publicGetKlines(params)
            except ccxt.BaseError as exc:
                reason = f"{type(exc).__name__}: {exc}"
                first, last = pd.Timestamp(start_ms, unit="ms"), pd.Timestamp(end_ms, unit="ms")
                retryable = self._is_transient(exc)
                if not retryable or attempts > self.max_retries:
                    raise FetchError(
                        KLINES_ENDPOINT, symbol, interval, first, last, attempts, reason, retryable=retryable
                    ) from exc
                delay = self._delay_s(exc, attempts)
                if delay > self.max_wait_s:
                    # A 418 ban can ask for hours: fail now and say so, rather than hang a run.
                    raise FetchError(
                        KLINES_ENDPOINT, symbol, interval, first, last, attempts,
                        f"{reason}; the server asks to wait {delay:.0f}s (more than max_wait_s={self.max_wait_s:.0f})",
                        retryable=True,
                    ) from exc
                self.log.warning(
                    f"{KLINES_ENDPOINT} {symbol} {interval} from {first}: {type(exc).__name__}; "
                    f"retry {attempts}/{self.max_retries} in {delay:.2f}s"
                )
                self.sleep(delay)

    def _is_transient(self, exc: ccxt.BaseError) -> bool:
        """Rate limits, 5xx, timeouts and network faults are worth retrying; bad requests are not.

        ccxt.NetworkError (rate limits, 5xx, timeouts) is not a subclass of ccxt.ExchangeError;
        OperationFailed is its parent and also covers Binance's -1000/-1001.
        """
        if isinstance(exc, ccxt.OperationFailed):
            return True
        body = getattr(self.exchange, "last_json_response", None)
        if not (isinstance(exc, ccxt.ExchangeError) and isinstance(body, dict)):
            return False
        return _int_or_none(body.get("code")) in TRANSIENT_BINANCE_CODES

    def _delay_s(self, exc: ccxt.BaseError, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based).

        On 429/418 the server's ``Retry-After`` wins. Otherwise "equal jitter" backoff: half of
        ``min(backoff_max_s, backoff_base_s * 2**(attempt-1))`` plus a random share of the other
        half, so parallel clients spread out but never retry immediately.
        """
        if isinstance(exc, (ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
            # The response did arrive, so these headers are the 429/418's own.
            told = retry_after_s(getattr(self.exchange, "last_response_headers", None))
            if told is not None:
                return told
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return cap / 2 + self.rng.uniform(0, cap / 2)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
