"""Trading: risk limits, orders, brokers, the trade ledger and the weekly rebalance."""
