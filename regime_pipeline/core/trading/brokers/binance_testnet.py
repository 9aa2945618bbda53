"""Binance spot TESTNET broker: market orders through the real ccxt ``binance`` client in sandbox mode.

Safety first:

* **Sandbox only.** The client is put in sandbox mode (``testnet.binance.vision``), and every
  request is checked before it leaves: a host other than the sandbox's is refused with
  :class:`~regime_pipeline.core.trading.brokers.base.SandboxViolation`, so api.binance.com cannot be
  reached even if ccxt's URLs were changed afterwards. Tests point the client at a local fake
  server through `sandbox_api_url`, which must be a loopback address and then becomes the only
  host allowed. There is no live mode.
* **Keys** come from the environment (:meth:`BinanceTestnetBroker.from_env`) and are never
  logged, put in a repr or in an error message: ccxt's own debug log (which prints request
  headers, the API key among them) goes through a logger that masks them.

Orders carry a deterministic ``newClientOrderId`` and are never blindly resent:

* ``submit`` first looks the id up (``GET /api/v3/order?origClientOrderId=``) and returns the
  existing order if there is one. Binance refuses a reused id only while the first order is
  still OPEN; a filled market order's id is accepted again and would trade a second time.
* After any ``ccxt.OperationFailed`` on ``POST /api/v3/order`` (``NetworkError``: timeouts,
  429/418, 5xx; Binance's "status unknown" codes) the order may exist although no answer came:
  it is looked up (``absent_confirmations`` times, with backoff) before it is resent with the
  same id, at most ``max_create_attempts`` sends in all; if its fate is still unknown,
  :class:`~regime_pipeline.core.trading.brokers.base.OrderOutcomeUnknown` is raised.
* Binance's "Duplicate order sent." (-2010) means the order was already sent: it is fetched and
  returned.
* Insufficient balance (-2010 "Account has insufficient balance for requested action.", ccxt
  ``InsufficientFunds``) and other refusals of this one order (``InvalidOrder``: lot size,
  notional filters) come back as a ``rejected`` outcome: the rest of the rebalance goes on,
  and the order shows as rejected in the ledger and the run's metadata.
* Reads (lookups, trades, balances, markets) are retried with backoff on ``OperationFailed``,
  honouring ``Retry-After`` on 429/418.

Quantities are rounded down to the pair's lot size (``amount_to_precision``); an order that
rounds to nothing or under the pair's minimum notional is rejected without being sent.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ccxt

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.trading.brokers.base import BrokerError, OrderOutcomeUnknown, SandboxViolation
from regime_pipeline.core.trading.orders import Fill, OrderOutcome, OrderRequest, OrderStatus
from regime_pipeline.core.data.sources.ccxt_source import TRANSIENT_BINANCE_CODES, Log, point_at, retry_after_s

API_KEY_ENV = "BINANCE_TESTNET_API_KEY"
API_SECRET_ENV = "BINANCE_TESTNET_API_SECRET"
SANDBOX_HOSTS = frozenset({"testnet.binance.vision"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# The ccxt API sections spot trading uses; each must resolve to an allowed host.
SPOT_APIS = ("public", "private")
ORDER_ENDPOINT = "/api/v3/order"

T = TypeVar("T")


@dataclass(frozen=True)
class TestnetSettings:
    """``configs/broker.yaml`` ``binance_testnet`` (see there)."""

    __test__ = False  # a settings class, not a pytest test class

    timeout_ms: int
    max_retries: int
    backoff_base_s: float
    backoff_max_s: float
    max_wait_s: float
    max_create_attempts: int
    absent_confirmations: int

    @classmethod
    def from_config(cls) -> TestnetSettings:
        raw = load_yaml("broker")["binance_testnet"]
        return cls(
            timeout_ms=int(raw["timeout_ms"]),
            max_retries=int(raw["max_retries"]),
            backoff_base_s=float(raw["backoff_base_s"]),
            backoff_max_s=float(raw["backoff_max_s"]),
            max_wait_s=float(raw["max_wait_s"]),
            max_create_attempts=int(raw["max_create_attempts"]),
            absent_confirmations=int(raw["absent_confirmations"]),
        )


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _where(url: str) -> str:
    """scheme://host/path of `url`: never the query, which carries the request's signature."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _MaskingLogger:
    """Stands in for ccxt's logger: renders each record with the secrets masked, then forwards it.

    ccxt logs every request's headers at debug level, ``X-MBX-APIKEY`` included.
    """

    def __init__(self, target: logging.Logger, secrets: Sequence[str]) -> None:
        self._target = target
        self._secrets = [s for s in secrets if s]

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _emit(self, level: int, msg: Any, *args: Any) -> None:
        if self._target.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self._target.log(level, "%s", self.mask(text))

    def debug(self, msg: Any, *args: Any, **_: Any) -> None:
        self._emit(logging.DEBUG, msg, *args)

    def info(self, msg: Any, *args: Any, **_: Any) -> None:
        self._emit(logging.INFO, msg, *args)

    def warning(self, msg: Any, *args: Any, **_: Any) -> None:
        self._emit(logging.WARNING, msg, *args)

    def error(self, msg: Any, *args: Any, **_: Any) -> None:
        self._emit(logging.ERROR, msg, *args)

    def __repr__(self) -> str:
        return f"_MaskingLogger({self._target.name!r})"


class _SandboxedBinance(ccxt.binance):
    """ccxt's binance refusing, before any I/O, a request to a host outside ``allowed_hosts``."""

    allowed_hosts: frozenset[str] = frozenset()

    def fetch(self, url, method="GET", headers=None, body=None):  # noqa: ANN001, ANN201 - ccxt's signature
        if _host(url) not in self.allowed_hosts:
            raise SandboxViolation(
                f"refusing {method} {_where(url)}: not a sandbox endpoint (allowed: {sorted(self.allowed_hosts)})"
            )
        return super().fetch(url, method, headers, body)


class BinanceTestnetBroker:
    """Market orders on Binance's spot testnet (see the module docstring for the guarantees).

    :param api_key: testnet API key (prefer :meth:`from_env`)
    :param api_secret: testnet API secret
    :param sandbox_api_url: for tests only: a local server standing in for the testnet, e.g.
        ``"http://127.0.0.1:50123"``; must be a loopback address, and becomes the only host allowed
    :param settings: timeouts and retries (default: ``configs/broker.yaml``)
    :param sleep: called with the seconds to wait between retries (tests inject a recorder)
    :param log: receives a line per retry, resend and lookup
    :param rng: source of backoff jitter
    :raises SandboxViolation: `sandbox_api_url` is not a loopback address, or the client's spot
        endpoints do not resolve to the sandbox
    :raises BrokerError: missing key or secret
    """

    name = "binance_testnet"

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        sandbox_api_url: str | None = None,
        settings: TestnetSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        log: Log | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key or not api_secret:
            raise BrokerError(f"the testnet broker needs an API key and secret ({API_KEY_ENV}, {API_SECRET_ENV})")
        self.settings = settings if settings is not None else TestnetSettings.from_config()
        self.sleep = sleep
        self.log: Log = log if log is not None else logging.getLogger(__name__)
        self.rng = rng if rng is not None else random.Random()
        self._logger = _MaskingLogger(logging.getLogger(f"{__name__}.ccxt"), [api_key, api_secret])
        exchange = _SandboxedBinance({
            "apiKey": api_key,
            "secret": api_secret,
            "enableRateLimit": True,
            "timeout": self.settings.timeout_ms,
            # Spot only: the futures testnet lives elsewhere and ccxt refuses it in sandbox mode.
            "options": {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}},
        })
        exchange.logger = self._logger
        exchange.set_sandbox_mode(True)
        allowed = SANDBOX_HOSTS
        if sandbox_api_url is not None:
            host = _host(sandbox_api_url)
            if host not in LOOPBACK_HOSTS:
                raise SandboxViolation(
                    f"sandbox_api_url {_where(sandbox_api_url)!r} is not a local server: only "
                    f"{sorted(LOOPBACK_HOSTS)} may stand in for the testnet"
                )
            point_at(exchange, sandbox_api_url)
            allowed = frozenset({host})
        exchange.allowed_hosts = allowed
        for api in SPOT_APIS:
            url = exchange.urls["api"].get(api, "")
            if _host(url) not in allowed:
                raise SandboxViolation(
                    f"refusing to start: ccxt's {api!r} endpoint is {_where(url)!r}, not a sandbox "
                    f"(allowed: {sorted(allowed)})"
                )
        # Kept so that Retry-After and Binance's error codes can be read after a failure.
        exchange.enableLastResponseHeaders = True
        exchange.enableLastJsonResponse = True
        self._exchange = exchange
        self.api_url = exchange.urls["api"]["private"]
        self._markets_loaded = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> BinanceTestnetBroker:
        """A broker with the key and secret of ``BINANCE_TESTNET_API_KEY`` / ``BINANCE_TESTNET_API_SECRET``."""
        env = os.environ if env is None else env
        missing = [name for name in (API_KEY_ENV, API_SECRET_ENV) if not env.get(name)]
        if missing:
            raise BrokerError(f"the testnet broker needs the environment variable(s) {', '.join(missing)}")
        return cls(env[API_KEY_ENV], env[API_SECRET_ENV], **kwargs)

    def __repr__(self) -> str:
        return f"BinanceTestnetBroker(api_url={self.api_url!r})"

    # -- Broker -------------------------------------------------------------------------

    def submit(self, order: OrderRequest) -> OrderOutcome:
        cid = order.client_order_id
        market = self._market(order.symbol)
        existing = self.lookup(order)
        if existing is not None:
            self.log.info(f"{cid}: already at the exchange ({existing.status}); not sent again")
            return existing
        try:
            amount = float(self._exchange.amount_to_precision(market["symbol"], order.quantity))
        except ccxt.InvalidOrder as exc:  # rounds to 0 at the lot size
            return OrderOutcome.rejected(order, f"not sent: {self._message(exc)}")
        min_cost = (market.get("limits", {}).get("cost") or {}).get("min")
        if amount <= 0 or (min_cost is not None and amount * order.price < min_cost):
            return OrderOutcome.rejected(
                order, f"not sent: {amount} {order.symbol} at ~{order.price} is under the pair's minimum of {min_cost} USDT"
            )
        for attempt in range(1, self.settings.max_create_attempts + 1):
            self._exchange.last_json_response = None
            self._exchange.last_response_headers = None
            try:
                raw = self._exchange.create_order(
                    market["symbol"], "market", order.side, amount, None, {"newClientOrderId": cid}
                )
                return self._outcome(order, raw, market)
            except ccxt.InsufficientFunds as exc:
                return OrderOutcome.rejected(order, f"insufficient balance: {self._message(exc)}")
            except ccxt.InvalidOrder as exc:
                if not self._is_duplicate(exc):
                    return OrderOutcome.rejected(order, self._message(exc))
                self.log.warning(f"{cid}: Binance answers 'Duplicate order sent.': fetching the existing order")
                found = self._confirm(order)
                if found is None:
                    raise OrderOutcomeUnknown(f"{cid}: Binance reports a duplicate order but no order with this id can be found") from None
                return found
            except ccxt.BaseError as exc:
                if not self._transient(exc):
                    raise BrokerError(f"POST {ORDER_ENDPOINT} {cid}: {type(exc).__name__}: {self._message(exc)}") from exc
                delay = self._delay_s(exc, attempt, f"POST {ORDER_ENDPOINT} {cid}")
                self.log.warning(
                    f"POST {ORDER_ENDPOINT} {cid} (send {attempt}/{self.settings.max_create_attempts}): "
                    f"{type(exc).__name__}, outcome unknown; looking it up in {delay:.2f}s before any resend"
                )
                self.sleep(delay)
                found = self._confirm(order)
                if found is not None:
                    self.log.info(f"{cid}: the order was placed after all ({found.status}); not resent")
                    return found
        raise OrderOutcomeUnknown(
            f"{cid}: no answer after {self.settings.max_create_attempts} sends and no order found under this id"
        )

    def lookup(self, order: OrderRequest) -> OrderOutcome | None:
        market = self._market(order.symbol)
        cid = order.client_order_id
        try:
            raw = self._read(
                f"GET {ORDER_ENDPOINT} origClientOrderId={cid}",
                lambda: self._exchange.fetch_order(None, market["symbol"], {"origClientOrderId": cid}),
            )
        except ccxt.OrderNotFound:
            return None
        except ccxt.BaseError as exc:  # credentials, permissions, a request Binance refuses
            raise BrokerError(f"GET {ORDER_ENDPOINT} {cid}: {type(exc).__name__}: {self._message(exc)}") from exc
        return self._outcome(order, raw, market)

    def balances(self) -> dict[str, float]:
        try:
            raw = self._read("GET /api/v3/account", self._exchange.fetch_balance)
        except ccxt.BaseError as exc:
            raise BrokerError(f"GET /api/v3/account: {type(exc).__name__}: {self._message(exc)}") from exc
        return {asset: float(amount) for asset, amount in (raw.get("free") or {}).items() if amount}

    # -- helpers ------------------------------------------------------------------------

    def _market(self, symbol: str) -> dict[str, Any]:
        if not self._markets_loaded:
            try:
                self._read("GET /api/v3/exchangeInfo", self._exchange.load_markets)
            except ccxt.BaseError as exc:
                raise BrokerError(f"GET /api/v3/exchangeInfo: {type(exc).__name__}: {self._message(exc)}") from exc
            self._markets_loaded = True
        markets = self._exchange.markets_by_id.get(symbol)
        if not markets:
            raise BrokerError(f"{symbol} is not a market of the exchange")
        return markets[0]

    def _confirm(self, order: OrderRequest) -> OrderOutcome | None:
        """Look `order` up, up to ``absent_confirmations`` times with backoff while it is not found."""
        tries = max(1, self.settings.absent_confirmations)
        for attempt in range(1, tries + 1):
            found = self.lookup(order)
            if found is not None or attempt == tries:
                return found
            cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
            self.sleep(cap / 2 + self.rng.uniform(0, cap / 2))
        return None

    def _outcome(self, order: OrderRequest, raw: Mapping[str, Any], market: Mapping[str, Any]) -> OrderOutcome:
        """An :class:`OrderOutcome` from ccxt's unified order (from a create or a lookup)."""
        cid = order.client_order_id
        filled = float(raw.get("filled") or 0.0)
        amount = float(raw.get("amount") or order.quantity)
        trades = list(raw.get("trades") or [])
        if filled > 0 and not trades:
            # A looked-up order carries no fills (Binance's order answer has none): its trades say
            # what was paid and charged.
            trades = self._read(
                f"GET /api/v3/myTrades orderId={raw['id']}",
                lambda: self._exchange.fetch_my_trades(market["symbol"], params={"orderId": raw["id"]}),
            )
        quote = str(market["quote"])
        fills = []
        for trade in trades:
            fee = trade.get("fee") or {}
            fills.append(Fill(
                cid, str(trade["id"]), order.symbol, order.side, float(trade["amount"]), float(trade["price"]),
                float(trade["cost"]), float(fee.get("cost") or 0.0), str(fee.get("currency") or quote),
            ))
        if filled > 0 and abs(sum(f.quantity for f in fills) - filled) > 1e-9 * filled:
            # The trades do not add up to the order (not all visible yet): book the order's own
            # totals as one fill; its fee is unknown.
            average = float(raw.get("average") or 0.0) or float(raw.get("cost") or 0.0) / filled
            fills = [Fill(cid, f"order-{raw['id']}", order.symbol, order.side, filled, average,
                          float(raw.get("cost") or filled * average), 0.0, quote)]
        quote_qty = sum(f.quote_qty for f in fills)
        return OrderOutcome(
            cid, order.symbol, order.side, self._status(str(raw.get("status")), filled, amount), amount, filled,
            quote_qty / filled if filled > 0 else None, quote_qty, str(raw["id"]), "", tuple(fills),
        )

    @staticmethod
    def _status(status: str, filled: float, amount: float) -> OrderStatus:
        # ccxt's unified statuses: open, closed, canceled, expired, rejected.
        if status == "open":
            return "open"
        if status == "closed":
            return "filled" if filled >= amount * (1 - 1e-12) else "partially_filled"
        if filled > 0:
            return "partially_filled"
        return {"canceled": "canceled", "expired": "expired"}.get(status, "rejected")  # type: ignore[return-value]

    def _read(self, what: str, call: Callable[[], T]) -> T:
        """`call`, retried with backoff on ``OperationFailed`` (and Binance's transient codes)."""
        attempts = 0
        while True:
            attempts += 1
            self._exchange.last_json_response = None
            self._exchange.last_response_headers = None
            try:
                return call()
            except ccxt.BaseError as exc:
                if not self._transient(exc):
                    raise
                if attempts > self.settings.max_retries:
                    raise BrokerError(
                        f"{what}: gave up after {attempts} attempts: {type(exc).__name__}: {self._message(exc)}"
                    ) from None
                delay = self._delay_s(exc, attempts, what)
                self.log.warning(
                    f"{what}: {type(exc).__name__}; retry {attempts}/{self.settings.max_retries} in {delay:.2f}s"
                )
                self.sleep(delay)

    def _transient(self, exc: ccxt.BaseError) -> bool:
        """Worth another try, and on a create: the order may or may not exist.

        ``OperationFailed`` covers NetworkError (timeouts, 429/418, 5xx) and Binance's -1000/-1001
        /-1007; some transient codes (-1008 overloaded) arrive as a plain ExchangeError.
        """
        if isinstance(exc, ccxt.OperationFailed):
            return True
        body = self._exchange.last_json_response
        if not (isinstance(exc, ccxt.ExchangeError) and isinstance(body, dict)):
            return False
        try:
            return int(body.get("code")) in TRANSIENT_BINANCE_CODES
        except (TypeError, ValueError):
            return False

    def _delay_s(self, exc: ccxt.BaseError, attempt: int, what: str) -> float:
        """The server's Retry-After on 429/418, else "equal jitter" exponential backoff."""
        if isinstance(exc, (ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
            told = retry_after_s(self._exchange.last_response_headers)
            if told is not None:
                if told > self.settings.max_wait_s:
                    raise BrokerError(
                        f"{what}: the server asks to wait {told:.0f}s, more than max_wait_s={self.settings.max_wait_s:.0f}"
                    ) from None
                return told
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
        return cap / 2 + self.rng.uniform(0, cap / 2)

    def _is_duplicate(self, exc: ccxt.BaseError) -> bool:
        body = self._exchange.last_json_response
        message = body.get("msg", "") if isinstance(body, dict) else ""
        return "Duplicate order sent" in (message or str(exc))

    def _message(self, exc: BaseException) -> str:
        return self._logger.mask(str(exc))
