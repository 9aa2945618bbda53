"""Brokers: where the weekly rebalance's orders are executed.

* :class:`PaperBroker` (the default): a simulated account filling at the week's open with the
  backtests' fees and slippage.
* :class:`BinanceTestnetBroker`: Binance's spot testnet through ccxt, sandbox only.

Both implement :class:`Broker`; see :mod:`regime_pipeline.core.trading.brokers.base` for the contract.
"""

from regime_pipeline.core.trading.brokers.base import Broker, BrokerError, OrderOutcomeUnknown, SandboxViolation
from regime_pipeline.core.trading.brokers.binance_testnet import BinanceTestnetBroker, TestnetSettings
from regime_pipeline.core.trading.brokers.paper import PaperBroker

__all__ = [
    "BinanceTestnetBroker",
    "Broker",
    "BrokerError",
    "OrderOutcomeUnknown",
    "PaperBroker",
    "SandboxViolation",
    "TestnetSettings",
]
