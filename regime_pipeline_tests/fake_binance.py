"""A fake Binance spot REST server on 127.0.0.1 for tests: real klines protocol, scripted faults, a request log.

It answers ``GET /api/v3/klines``, ``/api/v3/ping``, ``/api/v3/time`` and
``/api/v3/exchangeInfo`` the way api.binance.com does (12-field kline arrays with decimal
strings, Binance error bodies such as ``{"code": -1121, "msg": "Invalid symbol."}``), serving
bars from pandas frames. Tests can queue faults per path (429 with ``Retry-After``, 5xx, slow
answers, arbitrary bodies) and read back every request received.

Routing is a table of ``(method, path) -> handler``; signed endpoints are added with
:meth:`FakeBinance.route` without touching the HTTP plumbing. Given a :class:`FakeSpotAccount`,
the fake also trades: ``POST /api/v3/order`` (market orders filled at once at the account's
price, with Binance's balance, filter and duplicate-id refusals), ``GET /api/v3/order`` (by
``origClientOrderId`` or ``orderId``), ``GET /api/v3/myTrades``, ``GET /api/v3/account`` and
``GET /api/v3/openOrders``, all checking the API key header, the HMAC-SHA256 signature, the
timestamp and ``recvWindow`` as Binance does, and ``exchangeInfo`` lists the traded pairs with
their ``PRICE_FILTER``, ``LOT_SIZE`` and ``NOTIONAL`` filters.

Usage::

    with FakeBinance(minutes=frame) as fake:
        source = CcxtSource(api_url=fake.url)
        fake.script("/api/v3/klines", rate_limited(retry_after_s=2))

    account = FakeSpotAccount(balances={"USDT": "10000"}, prices={"BTCUSDT": "40000"})
    with FakeBinance(account=account) as fake:
        fake.script("/api/v3/order", lost_response(hold_s=1.0), method="POST")
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
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
    """One request as received: method, path, query/form parameters, headers (lower-case keys),
    body, and the raw query string (signed requests are checked against it)."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    query: str = ""


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
    :param hold_s: with ``status=None``: seconds to hold the answer back AFTER the request was
        processed (longer than the client timeout = the request took effect, e.g. an order was
        placed, but the client saw a timeout)
    """

    status: int | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hold_s: float = 0.0


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


def lost_response(hold_s: float) -> Scripted:
    """The request is processed (an order is placed) but the answer only leaves after `hold_s`
    seconds: with a shorter client timeout, the client sees a timeout for an order that exists."""
    return Scripted(hold_s=hold_s)


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
    :param account: a trading account: enables the order, trade and account endpoints and lists
        the account's symbols (with Binance's filters) in ``exchangeInfo``

    Trade counts, quote volume and taker volumes are not in the frames; they are answered as
    ``volume * close``, 0 and ``"0.00000000"``.
    """

    def __init__(
        self,
        minutes: pd.DataFrame | None = None,
        daily: pd.DataFrame | None = None,
        *,
        clock_ms: Callable[[], int] | None = None,
        account: FakeSpotAccount | None = None,
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
        # Keyed by (method, path); method None = any method.
        self._scripts: dict[tuple[str | None, str], deque[Scripted]] = {}
        self.account = account
        if account is not None:
            account.attach(self)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- test controls ------------------------------------------------------------------

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Answer `method` `path` with `handler` (replacing any previous one)."""
        self.routes[(method.upper(), path)] = handler

    def script(self, path: str, *answers: Scripted, method: str | None = None) -> None:
        """Queue `answers` for the next requests to `path` (with `method` only, if given), one
        each, before normal service resumes."""
        key = (None if method is None else method.upper(), path)
        with self._lock:
            self._scripts.setdefault(key, deque()).extend(answers)

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
            # A script for this method and path first, then one for the path whatever the method.
            queue = self._scripts.get((request.method, request.path)) or self._scripts.get((None, request.path))
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
            response = handler(request)
        except BinanceError as exc:
            response = exc.response
        if scripted is not None and scripted.hold_s:
            time.sleep(scripted.hold_s)
        return response

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
        o, h, lo, c, v = (float(x) for x in series.values[i])
        return [
            open_ms, _decimal(o), _decimal(h), _decimal(lo), _decimal(c), _decimal(v),
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
            "symbols": [_symbol_info(s, self._filters(s)) for s in symbols],
        })


    def _filters(self, symbol: str) -> SymbolFilters | None:
        """The traded pairs' own filters; None (the permissive defaults) for bars-only symbols."""
        if self.account is not None and symbol in self.account.prices:
            return SPOT_FILTERS.get(symbol)
        return None


def _split_symbol(symbol: str) -> tuple[str, str]:
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    raise ValueError(f"cannot split {symbol!r} into base and quote assets {QUOTE_ASSETS}")


def _symbol_info(symbol: str, filters: SymbolFilters | None = None) -> dict[str, Any]:
    base, quote = _split_symbol(symbol)
    tick, step, min_notional = (
        ("0.00000001", "0.00000001", "5.00000000") if filters is None
        else (filters.tick_size, filters.step_size, filters.min_notional)
    )
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
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000000000.00000000", "stepSize": step},
            # Binance replaced MIN_NOTIONAL by NOTIONAL on spot in 2023; ccxt reads either.
            {"filterType": "NOTIONAL", "minNotional": min_notional, "applyMinToMarket": True,
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
            response = fake.handle(Request(self.command, parts.path, params, headers, body, parts.query))
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



# -- trading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolFilters:
    """A pair's trading filters, as Binance's decimal strings: price tick, quantity step (also
    the minimum quantity) and minimum notional in the quote asset."""

    tick_size: str
    step_size: str
    min_notional: str


# The 13 traded USDT pairs with filters close to Binance spot's (2025); what matters for tests is
# that quantities must be whole multiples of a realistic step and orders at least 5 USDT.
SPOT_FILTERS: dict[str, SymbolFilters] = {
    "BTCUSDT": SymbolFilters("0.01000000", "0.00001000", "5.00000000"),
    "ETHUSDT": SymbolFilters("0.01000000", "0.00010000", "5.00000000"),
    "BNBUSDT": SymbolFilters("0.01000000", "0.00100000", "5.00000000"),
    "XRPUSDT": SymbolFilters("0.00010000", "0.10000000", "5.00000000"),
    "ADAUSDT": SymbolFilters("0.00010000", "0.10000000", "5.00000000"),
    "SOLUSDT": SymbolFilters("0.01000000", "0.00100000", "5.00000000"),
    "DOGEUSDT": SymbolFilters("0.00001000", "1.00000000", "5.00000000"),
    "TRXUSDT": SymbolFilters("0.00010000", "0.10000000", "5.00000000"),
    "LTCUSDT": SymbolFilters("0.01000000", "0.00100000", "5.00000000"),
    "LINKUSDT": SymbolFilters("0.01000000", "0.01000000", "5.00000000"),
    "DOTUSDT": SymbolFilters("0.00100000", "0.01000000", "5.00000000"),
    "AVAXUSDT": SymbolFilters("0.01000000", "0.01000000", "5.00000000"),
    "XLMUSDT": SymbolFilters("0.00010000", "1.00000000", "5.00000000"),
}

CLIENT_ORDER_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
INSUFFICIENT_BALANCE = {"code": -2010, "msg": "Account has insufficient balance for requested action."}
DUPLICATE_ORDER = {"code": -2010, "msg": "Duplicate order sent."}
ORDER_DOES_NOT_EXIST = {"code": -2013, "msg": "Order does not exist."}
EIGHT_PLACES = Decimal("0.00000001")


def _d(value: float | str | Decimal) -> Decimal:
    """A Decimal from a float (through its shortest repr, so 0.1 stays 0.1), str or Decimal."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _fmt(value: Decimal) -> str:
    return f"{value:.8f}"


class FakeSpotAccount:
    """The one spot account of a :class:`FakeBinance`: balances, prices, orders and trades.

    Market orders only, filled at once and entirely at ``prices[symbol]`` (one trade each). The
    commission is `commission` times the trade, taken like Binance without BNB: in the base asset
    on a buy, in the quote asset on a sell. Every amount is a :class:`~decimal.Decimal`.

    :param balances: free balance per asset, e.g. ``{"USDT": "10000", "BTC": "0.5"}``
    :param prices: fill price per symbol (USDT pairs of :data:`SPOT_FILTERS`); changeable
        between orders
    :param api_key: the ``X-MBX-APIKEY`` every signed request must carry
    :param secret: the HMAC-SHA256 key the ``signature`` parameter is checked against
    :param commission: fee rate per trade (0.001 = 10 bps)
    :param duplicate_ids: ``"open"`` refuses a ``newClientOrderId`` only while an order with it
        is still open, as Binance does (market orders fill at once, so reusing a filled order's id
        places a second order); ``"any"`` refuses every reuse
    """

    def __init__(
        self,
        balances: Mapping[str, float | str | Decimal],
        prices: Mapping[str, float | str | Decimal],
        *,
        api_key: str = "fake-api-key",
        secret: str = "fake-api-secret",
        commission: float | str | Decimal = "0",
        duplicate_ids: str = "open",
    ) -> None:
        if duplicate_ids not in ("open", "any"):
            raise ValueError(f"duplicate_ids must be 'open' or 'any', got {duplicate_ids!r}")
        unknown = sorted(set(prices) - set(SPOT_FILTERS))
        if unknown:
            raise ValueError(f"no filters for {unknown}: add them to SPOT_FILTERS")
        self.balances: dict[str, Decimal] = {asset: _d(v) for asset, v in balances.items()}
        self.prices: dict[str, Decimal] = {symbol: _d(p) for symbol, p in prices.items()}
        self.api_key = api_key
        self.secret = secret
        self.commission = _d(commission)
        self.duplicate_ids = duplicate_ids
        self.orders: list[dict[str, Any]] = []  # Binance's order objects, oldest first
        self.trades: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)

    def attach(self, fake: FakeBinance) -> None:
        """Serve this account's endpoints from `fake` and list its symbols in exchangeInfo."""
        self._clock_ms = fake.clock_ms
        fake.symbols = sorted(set(fake.symbols) | set(self.prices))
        fake.route("POST", "/api/v3/order", self._new_order)
        fake.route("GET", "/api/v3/order", self._query_order)
        fake.route("GET", "/api/v3/openOrders", self._open_orders)
        fake.route("GET", "/api/v3/myTrades", self._my_trades)
        fake.route("GET", "/api/v3/account", self._account)

    def orders_for(self, client_order_id: str) -> list[dict[str, Any]]:
        """Every order placed with `client_order_id` (more than one = a duplicate got through)."""
        with self._lock:
            return [o for o in self.orders if o["clientOrderId"] == client_order_id]

    # -- request checks -----------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        """Binance's checks on a SIGNED request: API key header, timestamp window, signature."""
        key = request.headers.get("x-mbx-apikey")
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", status=401)
        if key != self.api_key:
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        timestamp = _int_param(request, "timestamp", required=True)
        window = _int_param(request, "recvWindow")
        window = 5000 if window is None else window
        if window > 60_000:
            raise BinanceError(-1131, "recvWindow must be less than 60000")
        now = self._clock_ms()
        if timestamp > now + 1000 or now - timestamp > window:
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")
        # The signature covers the query string followed by the body, without the signature itself.
        total = request.query + request.body.decode()
        found = re.search(r"&?signature=([0-9a-fA-F]+)", total)
        if found is None:
            raise BinanceError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        payload = total[: found.start()] + total[found.end():]
        expected = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, found.group(1).lower()):
            raise BinanceError(-1022, "Signature for this request is not valid.")

    def _symbol(self, request: Request) -> str:
        symbol = request.params.get("symbol", "")
        if not symbol:
            raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        if symbol not in self.prices:
            raise BinanceError(**INVALID_SYMBOL)
        return symbol

    # -- endpoints ----------------------------------------------------------------------

    def _new_order(self, request: Request) -> Response:
        """``POST /api/v3/order``: a MARKET order by ``quantity``, filled at once or refused."""
        self._authenticate(request)
        symbol = self._symbol(request)
        side = request.params.get("side", "")
        if side not in ("BUY", "SELL"):
            raise BinanceError(-1102, "Mandatory parameter 'side' was not sent, was empty/null, or malformed.")
        if request.params.get("type") != "MARKET":
            raise BinanceError(-1116, "Invalid orderType.")  # the fake only fills market orders
        client_id = request.params.get("newClientOrderId") or f"fake-{next(self._ids)}"
        if not CLIENT_ORDER_ID_RE.match(client_id):
            raise BinanceError(
                -1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[a-zA-Z0-9-_]{1,36}$'."
            )
        raw_qty = request.params.get("quantity")
        if not raw_qty:
            raise BinanceError(-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
        try:
            qty = Decimal(raw_qty)
        except ArithmeticError:
            raise BinanceError(-1100, "Illegal characters found in parameter 'quantity'; legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.") from None
        filters = SPOT_FILTERS[symbol]
        step = Decimal(filters.step_size)
        if qty < step or qty % step != 0:
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        base, quote = _split_symbol(symbol)
        price = self.prices[symbol]
        notional = (qty * price).quantize(EIGHT_PLACES)
        if notional < Decimal(filters.min_notional):
            raise BinanceError(-1013, "Filter failure: NOTIONAL")
        with self._lock:
            clash = [o for o in self.orders if o["clientOrderId"] == client_id]
            if any(o["status"] in ("NEW", "PARTIALLY_FILLED") for o in clash) or (clash and self.duplicate_ids == "any"):
                raise BinanceError(**DUPLICATE_ORDER)
            pay, need = (quote, notional) if side == "BUY" else (base, qty)
            if self.balances.get(pay, Decimal(0)) < need:
                raise BinanceError(**INSUFFICIENT_BALANCE)
            fee_asset = base if side == "BUY" else quote
            fee = ((qty if side == "BUY" else notional) * self.commission).quantize(EIGHT_PLACES)
            if side == "BUY":
                self.balances[quote] -= notional
                self.balances[base] = self.balances.get(base, Decimal(0)) + qty - fee
            else:
                self.balances[base] -= qty
                self.balances[quote] = self.balances.get(quote, Decimal(0)) + notional - fee
            now = self._clock_ms()
            order_id = next(self._ids)
            order = {
                "symbol": symbol, "orderId": order_id, "orderListId": -1, "clientOrderId": client_id,
                "price": _fmt(Decimal(0)), "origQty": _fmt(qty), "executedQty": _fmt(qty),
                "cummulativeQuoteQty": _fmt(notional), "status": "FILLED", "timeInForce": "GTC",
                "type": "MARKET", "side": side, "stopPrice": _fmt(Decimal(0)), "icebergQty": _fmt(Decimal(0)),
                "time": now, "updateTime": now, "isWorking": True, "workingTime": now,
                "origQuoteOrderQty": _fmt(Decimal(0)), "selfTradePreventionMode": "EXPIRE_MAKER",
            }
            trade = {
                "symbol": symbol, "id": next(self._ids), "orderId": order_id, "orderListId": -1,
                "price": _fmt(price), "qty": _fmt(qty), "quoteQty": _fmt(notional),
                "commission": _fmt(fee), "commissionAsset": fee_asset, "time": now,
                "isBuyer": side == "BUY", "isMaker": False, "isBestMatch": True,
            }
            self.orders.append(order)
            self.trades.append(trade)
        answer = {k: order[k] for k in ("symbol", "orderId", "orderListId", "clientOrderId")} | {"transactTime": now}
        kind = request.params.get("newOrderRespType", "FULL")  # MARKET orders default to FULL
        if kind == "ACK":
            return Response(200, answer)
        omitted = ("time", "updateTime", "isWorking", "stopPrice", "icebergQty")
        answer |= {k: v for k, v in order.items() if k not in omitted}
        if kind == "FULL":
            answer["fills"] = [{
                "price": trade["price"], "qty": trade["qty"], "commission": trade["commission"],
                "commissionAsset": fee_asset, "tradeId": trade["id"],
            }]
        return Response(200, answer)

    def _query_order(self, request: Request) -> Response:
        """``GET /api/v3/order`` by ``origClientOrderId`` or ``orderId``: the latest such order."""
        self._authenticate(request)
        symbol = self._symbol(request)
        client_id = request.params.get("origClientOrderId")
        order_id = _int_param(request, "orderId")
        if client_id is None and order_id is None:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        with self._lock:
            found = [
                o for o in self.orders
                if o["symbol"] == symbol
                and (o["orderId"] == order_id if order_id is not None else o["clientOrderId"] == client_id)
            ]
        if not found:
            raise BinanceError(**ORDER_DOES_NOT_EXIST)
        return Response(200, dict(found[-1]))

    def _open_orders(self, request: Request) -> Response:
        self._authenticate(request)
        symbol = request.params.get("symbol")
        with self._lock:
            return Response(200, [
                dict(o) for o in self.orders
                if o["status"] in ("NEW", "PARTIALLY_FILLED") and (symbol is None or o["symbol"] == symbol)
            ])

    def _my_trades(self, request: Request) -> Response:
        """``GET /api/v3/myTrades`` for a symbol, optionally one ``orderId``'s trades."""
        self._authenticate(request)
        symbol = self._symbol(request)
        order_id = _int_param(request, "orderId")
        with self._lock:
            return Response(200, [
                dict(t) for t in self.trades
                if t["symbol"] == symbol and (order_id is None or t["orderId"] == order_id)
            ])

    def _account(self, request: Request) -> Response:
        """``GET /api/v3/account``: the balances, every asset free (nothing is ever locked)."""
        self._authenticate(request)
        with self._lock:
            balances = [{"asset": a, "free": _fmt(v), "locked": _fmt(Decimal(0))} for a, v in sorted(self.balances.items())]
        rate = _fmt(self.commission)
        return Response(200, {
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": rate, "taker": rate, "buyer": _fmt(Decimal(0)), "seller": _fmt(Decimal(0))},
            "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": self._clock_ms(),
            "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"], "uid": 1,
        })
