"""Regimes: HMM labels, the detectors' inputs (windows, graphs), the detectors and their metrics."""
