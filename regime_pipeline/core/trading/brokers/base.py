"""The interface every broker implements, and the errors brokers raise.

A broker executes one market order at a time, identified by its client order id, and can be
asked what became of an order it may have received. Both answers are
:class:`~regime_pipeline.core.trading.orders.OrderOutcome`; the ledger records them.

Contract (what :mod:`regime_pipeline.core.trading.rebalance` relies on):

* ``submit`` never trades twice for one client order id: an id the broker already knows returns
  the existing order's outcome, with no second fill.
* A refusal that concerns only this order (insufficient balance, a lot-size or notional filter)
  comes back as a ``rejected`` outcome, not an exception, so the rest of the rebalance goes on.
* An exception means the call failed as a whole (bad credentials, a broker that stays
  unreachable, an order whose fate cannot be established): the caller stops and the ledger
  keeps the intent open, to be looked up before anything is sent next time.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from regime_pipeline.core.trading.orders import OrderOutcome, OrderRequest


@runtime_checkable
class Broker(Protocol):
    """Executes market orders and answers lookups by client order id."""

    name: str

    def submit(self, order: OrderRequest) -> OrderOutcome:
        """Execute `order` (or return the existing order with its client order id)."""
        ...

    def lookup(self, order: OrderRequest) -> OrderOutcome | None:
        """What became of the order with ``order.client_order_id``; None if the broker never had it."""
        ...

    def balances(self) -> dict[str, float]:
        """Free balance per asset (``"USDT"``, ``"BTC"``, ...), zero balances left out."""
        ...


class BrokerError(RuntimeError):
    """A broker call that failed as a whole (after retries, or at once if retrying cannot help)."""


class OrderOutcomeUnknown(BrokerError):
    """An order was sent but whether it was placed could not be established.

    The ledger keeps its intent open; the next rebalance looks it up before sending anything.
    """


class SandboxViolation(RuntimeError):
    """A testnet broker was about to talk to something that is not a sandbox endpoint."""
