"""A fake Binance spot REST server on 127.0.0.1 for tests: real klines protocol, scripted faults, a request log.

It answers ``GET /api/v3/klines``, ``/api/v3/ping``, ``/api/v3/time`` and
``/api/v3/exchangeInfo`` the way api.binance.com does (12-field kline arrays with decimal
strings, Binance error bodies such as ``{"code": -1121, "msg": "Invalid symbol."}``), serving
bars from pandas frames. Tests can queue faults per path (429 with ``Retry-After``, 5xx, slow
answers, arbitrary bodies) and read back every request received.

Routing is a table of ``(method, path) -> handler``; signed endpoints for a paper broker
(``POST /api/v3/order``, ``GET /api/v3/account``, ...) can be added with :meth:`FakeBinance.route`
without touching the HTTP plumbing.

Usage::

    with FakeBinance(minutes=frame) as fake:
        source = CcxtSource(api_url=fake.url)
        fake.script("/api/v3/klines", rate_limited(retry_after_s=2))
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd

# Every interval Binance accepts; only those with data given at construction are served.
BINANCE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
INTERVAL_MS = {"1m": 60_000, "1d": 86_400_000}
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB")

INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}
TOO_MANY_REQUESTS = {
    "code": -1003,
    "msg": "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per minute. "
    "Please use WebSocket Streams for live updates to avoid polling the API.",
}
INTERNAL_ERROR = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}


@dataclass
class Request:
    """One request as received: method, path, query/form parameters, headers (lower-case keys), body."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    """An answer: a JSON-able `body` (or raw text when `body` is a str) with a status and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Scripted:
    """An injected answer for the next request to a path.

    :param status: HTTP status to answer with; None answers normally (after `delay_s`)
    :param body: JSON body (a str is sent as plain text); None gives ``{}``
    :param headers: extra response headers, e.g. ``{"Retry-After": "2"}``
    :param delay_s: seconds to wait before answering (longer than the client timeout = a timeout)
    """

    status: int | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def rate_limited(retry_after_s: int = 2, status: int = 429) -> Scripted:
    """Binance's answer to too much request weight (429), or to an IP ban (418)."""
    return Scripted(status=status, body=TOO_MANY_REQUESTS, headers={"Retry-After": str(retry_after_s)})


EDGE_503 = "<html><body><h1>503 Service Unavailable</h1></body></html>"


def unavailable(status: int = 503, body: Any = EDGE_503) -> Scripted:
    """A 5xx from Binance's edge (HTML by default; pass a Binance error dict for a JSON one)."""
    return Scripted(status=status, body=body)


def slow(delay_s: float) -> Scripted:
    """A normal answer sent only after `delay_s` seconds."""
    return Scripted(delay_s=delay_s)


class BinanceError(Exception):
    """Raised by a handler to answer with a Binance error body ``{"code": ..., "msg": ...}``."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.response = Response(status, {"code": code, "msg": msg})


Handler = Callable[[Request], Response]


@dataclass
class _Series:
    """One symbol's bars at one interval, as arrays for fast slicing by open time (ms)."""

    open_ms: np.ndarray  # int64, sorted
    values: np.ndarray  # float64, columns open, high, low, close, volume
    interval_ms: int


def _series_by_symbol(frame: pd.DataFrame, time_col: str, interval_ms: int) -> dict[str, _Series]:
    if time_col == "date":
        times = pd.to_datetime(frame["date"])
    else:
        times = frame[time_col]
    millis = times.to_numpy().astype("datetime64[ms]").astype("int64")
    out: dict[str, _Series] = {}
    symbols = frame["symbol"].to_numpy()
    values = frame[["open", "high", "low", "close", "volume"]].to_numpy(dtype="float64")
    for symbol in pd.unique(symbols):
        mask = symbols == symbol
        order = np.argsort(millis[mask], kind="stable")
        out[str(symbol)] = _Series(millis[mask][order], values[mask][order], interval_ms)
    return out


def _decimal(x: float) -> str:
    """Binance's price format: a decimal string with 8 places."""
    return f"{x:.8f}"


def _int_param(request: Request, name: str, *, required: bool = False) -> int | None:
    raw = request.params.get(name)
    if raw is None or raw == "":
        if required:
            raise BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        return None
    if not raw.isdigit():
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(raw)


class FakeBinance:
    """A local HTTP server speaking Binance's spot REST protocol for klines and market metadata.

    :param minutes: 1-minute bars: ``symbol, open_time`` (naive UTC), ``open, high, low, close, volume``
    :param daily: daily bars: ``symbol``, ``date`` or ``open_time``, OHLCV
    :param clock_ms: current time in ms for ``/api/v3/time``; defaults to the wall clock

    Trade counts, quote volume and taker volumes are not in the frames; they are answered as
    ``volume * close``, 0 and ``"0.00000000"``.
    """

    def __init__(
        self,
        minutes: pd.DataFrame | None = None,
        daily: pd.DataFrame | None = None,
        *,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.bars: dict[str, dict[str, _Series]] = {}
        if minutes is not None:
            self.bars["1m"] = _series_by_symbol(minutes, "open_time", INTERVAL_MS["1m"])
        if daily is not None:
            time_col = "open_time" if "open_time" in daily.columns else "date"
            self.bars["1d"] = _series_by_symbol(daily, time_col, INTERVAL_MS["1d"])
        self.symbols = sorted({s for by_symbol in self.bars.values() for s in by_symbol})
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self.routes: dict[tuple[str, str], Handler] = {}
        self.route("GET", "/api/v3/ping", lambda _: Response(200, {}))
        self.route("GET", "/api/v3/time", lambda _: Response(200, {"serverTime": self.clock_ms()}))
        self.route("GET", "/api/v3/exchangeInfo", self._exchange_info)
        self.route("GET", "/api/v3/klines", self._klines)
        self.requests: list[Request] = []
        self._scripts: dict[str, deque[Scripted]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- test controls ------------------------------------------------------------------

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer `method` `path` with `handler` (replacing any previous one)."""
        self.routes[(method.upper(), path)] = handler

    def script(self, path: str, *answers: Scripted) -> None:
        """Queue `answers` for the next requests to `path`, one each, before normal service resumes."""
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(answers)

    def requests_to(self, path: str) -> list[Request]:
        """The requests received for `path`, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:50123``."""
        if self._server is None:
            raise RuntimeError("FakeBinance is not running; use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeBinance:
        """Listen on 127.0.0.1 on a free port, serving from a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True  # a slow (scripted) answer must not block shutdown
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeBinance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- dispatch -----------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Log `request`, play a scripted answer if one is queued for its path, else route it."""
        with self._lock:
            self.requests.append(request)
            queue = self._scripts.get(request.path)
            scripted = queue.popleft() if queue else None
        if scripted is not None:
            if scripted.delay_s:
                time.sleep(scripted.delay_s)
            if scripted.status is not None:
                body = {} if scripted.body is None else scripted.body
                return Response(scripted.status, body, dict(scripted.headers))
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            # Binance answers unknown paths with an empty 404.
            return Response(404, "")
        try:
            return handler(request)
        except BinanceError as exc:
            return exc.response

    # -- endpoints ----------------------------------------------------------------------

    def _klines(self, request: Request) -> Response:
        """``GET /api/v3/klines``: Binance's selection rules for startTime/endTime/limit."""
        symbol = request.params.get("symbol", "")
        if not symbol:
            raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        interval = request.params.get("interval", "")
        if not interval:
            raise BinanceError(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
        if symbol not in self.symbols:
            raise BinanceError(**INVALID_SYMBOL)
        if interval not in BINANCE_INTERVALS or interval not in self.bars:
            raise BinanceError(-1120, "Invalid interval.")
        start = _int_param(request, "startTime")
        end = _int_param(request, "endTime")
        limit = _int_param(request, "limit")
        limit = DEFAULT_LIMIT if limit is None else limit
        if limit < 1:
            raise BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
        limit = min(limit, MAX_LIMIT)
        if start is not None and end is not None and start > end:
            raise BinanceError(-1023, "Start time is greater than end time.")
        series = self.bars[interval].get(symbol)
        if series is None:
            return Response(200, [])
        lo = 0 if start is None else int(np.searchsorted(series.open_ms, start, side="left"))
        hi = len(series.open_ms) if end is None else int(np.searchsorted(series.open_ms, end, side="right"))
        # With startTime: the oldest `limit` bars from it; without: the most recent up to endTime.
        lo, hi = (lo, min(hi, lo + limit)) if start is not None else (max(lo, hi - limit), hi)
        return Response(200, [self._kline(series, i) for i in range(lo, hi)])

    @staticmethod
    def _kline(series: _Series, i: int) -> list[Any]:
        """Binance's 12-field kline.

        Open time, OHLCV strings, close time, quote volume, trades, taker base and quote volume, ignore.
        """
        open_ms = int(series.open_ms[i])
        o, h, l, c, v = (float(x) for x in series.values[i])
        return [
            open_ms, _decimal(o), _decimal(h), _decimal(l), _decimal(c), _decimal(v),
            open_ms + series.interval_ms - 1, _decimal(v * c), 0, "0.00000000", "0.00000000", "0",
        ]

    def _exchange_info(self, request: Request) -> Response:
        """``GET /api/v3/exchangeInfo``: a minimal but valid description of the served symbols."""
        wanted = request.params.get("symbol")
        if wanted is not None and wanted not in self.symbols:
            raise BinanceError(**INVALID_SYMBOL)
        symbols = [wanted] if wanted else self.symbols
        return Response(200, {
            "timezone": "UTC",
            "serverTime": self.clock_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(s) for s in symbols],
        })


def _split_symbol(symbol: str) -> tuple[str, str]:
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"cannot split {symbol!r} into base and quote assets {QUOTE_ASSETS}")


def _symbol_info(symbol: str) -> dict[str, Any]:
    base, quote = _split_symbol(symbol)
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "1000000.00000000",
             "tickSize": "0.00000001"},
            {"filterType": "LOT_SIZE", "minQty": "0.00000001", "maxQty": "9000000000.00000000",
             "stepSize": "0.00000001"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def _handler_class(fake: FakeBinance) -> type[BaseHTTPRequestHandler]:
    """The request handler bound to `fake`: parses HTTP, delegates to :meth:`FakeBinance.handle`."""

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like Binance; every answer sets Content-Length

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            params = dict(parse_qsl(parts.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if body and self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                # Binance: a parameter in both the query string and the body takes the query's value.
                params = {**dict(parse_qsl(body.decode(), keep_blank_values=True)), **params}
            headers = {k.lower(): v for k, v in self.headers.items()}
            response = fake.handle(Request(self.command, parts.path, params, headers, body))
            self._send(response)

        def _send(self, response: Response) -> None:
            if isinstance(response.body, str):
                payload, content_type = response.body.encode(), "text/html"
            else:
                payload, content_type = json.dumps(response.body).encode(), "application/json;charset=UTF-8"
            try:
                self.send_response(response.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (a scripted delay beyond its timeout): nothing to answer.
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # the request log is fake.requests; keep test output clean

    return _Handler

