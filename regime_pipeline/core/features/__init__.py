"""Features of the regime models: the daily feature groups, their selection, and volatility forecasts."""
