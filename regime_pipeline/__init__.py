"""regime_pipeline: crypto market regime detection and weekly allocation, as Dagster assets."""

__version__ = "0.1.0"
