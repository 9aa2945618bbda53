"""Allocation: performance metrics, portfolio accounting, benchmark strategies, the RL environment and policy."""
