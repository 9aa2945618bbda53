"""Brokers: where the weekly rebalance's orders are executed.

* :class:`PaperBroker` (the default): a simulated account filling at the week's open with the
  backtests' fees and slippage.

Every broker implements :class:`Broker`; see :mod:`regime_pipeline.core.brokers.base` for the contract.
"""

from regime_pipeline.core.brokers.base import Broker, BrokerError, OrderOutcomeUnknown, SandboxViolation
from regime_pipeline.core.brokers.paper import PaperBroker

__all__ = ["Broker", "BrokerError", "OrderOutcomeUnknown", "PaperBroker", "SandboxViolation"]
