"""Asset checks: data quality, reconciliation, model sanity."""
