"""Market data sources: where 1-minute bars and daily klines come from.

Every source implements :class:`~regime_pipeline.core.data.sources.base.MarketDataSource`.
"""
