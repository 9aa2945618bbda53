"""Stationary block bootstrap: the resampling scheme itself, intervals that reproduce known
asymptotic ones on synthetic series (where an i.i.d. bootstrap fails), pairing, and seeding."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from regime_pipeline.core.allocation import bootstrap, performance

SETTINGS = bootstrap.BootstrapSettings(mean_block_days=14, resamples=2000, confidence=0.95, seed=3)
Z = 1.959963984540054  # the standard normal's 97.5% quantile


def test_settings_come_from_the_config() -> None:
    s = bootstrap.BootstrapSettings.from_config()
    assert s.mean_block_days == 14 and s.confidence == 0.95 and s.resamples >= 1000


def test_blocks_are_runs_of_consecutive_days_with_geometric_lengths() -> None:
    rng = np.random.default_rng(0)
    n, mean_block = 400, 10.0
    idx = bootstrap.stationary_indices(n, mean_block, 300, rng)
    assert idx.shape == (300, n) and idx.min() >= 0 and idx.max() < n
    # A block continues with the next day (wrapping after the last); anything else starts a new block.
    continues = idx[:, 1:] == (idx[:, :-1] + 1) % n
    # P(new block) = 1 / mean_block, plus the rare random start that happens to be the next day.
    assert 1.0 - continues.mean() == pytest.approx(1.0 / mean_block * (1 - 1 / n), rel=0.05)
    # Every day is equally likely to be drawn: the resample is stationary.
    counts = np.bincount(idx.ravel(), minlength=n) / idx.size
    assert counts.max() < 1.5 / n and counts.min() > 0.5 / n
    iid = bootstrap.stationary_indices(n, 1.0, 50, np.random.default_rng(0))
    assert (iid[:, 1:] == (iid[:, :-1] + 1) % n).mean() < 0.01


def _ar1(n: int, phi: float, rng: np.random.Generator) -> np.ndarray:
    e = rng.normal(size=n + 200)
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, e.size):
        x[t] = phi * x[t - 1] + e[t]
    return x[200:]


def test_interval_of_a_mean_matches_the_long_run_variance_of_an_ar1_series() -> None:
    """For AR(1) x_t = phi x_{t-1} + e_t (unit innovations) the mean's asymptotic variance is
    1 / ((1 - phi)^2 n): with phi = 0.5, twice the i.i.d. standard error. Averaged over several
    series, the stationary bootstrap's 95% interval has that width; the i.i.d. bootstrap's
    measures only the variance 1 / (1 - phi^2), (1 - phi) / sqrt(1 - phi^2) = 0.58 of the width."""
    n, phi, series = 3000, 0.5, 8
    known = 2 * Z / ((1 - phi) * math.sqrt(n))
    widths = {50.0: [], 1.0: []}
    rng = np.random.default_rng(11)
    for _ in range(series):
        x = _ar1(n, phi, rng)
        for block in widths:
            idx = bootstrap.stationary_indices(n, block, 2000, rng)
            low, high = bootstrap.percentile_interval(x[idx].mean(axis=1), 0.95)
            widths[block].append(high - low)
    assert np.mean(widths[50.0]) == pytest.approx(known, rel=0.08)
    iid_ratio = (1 - phi) / math.sqrt(1 - phi**2)
    assert np.mean(widths[1.0]) == pytest.approx(known * iid_ratio, rel=0.08)
    assert np.mean(widths[1.0]) < 0.7 * known


def test_paired_sharpe_difference_interval_matches_the_asymptotic_one() -> None:
    """Two i.i.d. normal daily return series with correlation rho: the difference of their
    (daily) Sharpe ratios has asymptotic variance (2 - 2 rho + (s_a^2 + s_b^2 - 2 s_a s_b rho^2) / 2) / n
    (Jobson-Korkie, as corrected by Memmel 2003). The bootstrap interval, annualised, matches it
    and is centred on the observed difference; resampling the two series apart would be far wider."""
    n, rho, mu_a, mu_b, sigma = 4000, 0.8, 0.002, 0.0005, 0.03
    rng = np.random.default_rng(5)
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    a, b = mu_a + sigma * z[:, 0], mu_b + sigma * z[:, 1]
    s_a, s_b = mu_a / sigma, mu_b / sigma
    se = math.sqrt((2 - 2 * rho + (s_a**2 + s_b**2 - 2 * s_a * s_b * rho**2) / 2) / n) * math.sqrt(365)
    iid = dataclasses.replace(SETTINGS, mean_block_days=1.0, resamples=4000)
    row = bootstrap.compare({"a": a, "b": b}, ["b"], iid).iloc[0]
    assert row["sharpe_diff"] == pytest.approx(performance.sharpe(a) - performance.sharpe(b), abs=1e-12)
    assert row["sharpe_high"] - row["sharpe_low"] == pytest.approx(2 * Z * se, rel=0.08)
    assert row["sharpe_low"] < row["sharpe_diff"] < row["sharpe_high"]
    unpaired_se = math.sqrt((2 + (s_a**2 + s_b**2) / 2) / n) * math.sqrt(365)
    assert row["sharpe_high"] - row["sharpe_low"] < 0.6 * 2 * Z * unpaired_se
    # CAGR: how much faster a compounded than b, (1 + CAGR_a) / (1 + CAGR_b) - 1, with the
    # interval of the i.i.d. mean of the daily log-growth differences mapped through exp.
    assert row["cagr_diff"] == pytest.approx((1 + performance.cagr(a)) / (1 + performance.cagr(b)) - 1, rel=1e-9)
    d = np.log1p(a) - np.log1p(b)
    half = Z * d.std(ddof=1) / math.sqrt(n) * 365
    assert math.log1p(row["cagr_low"]) == pytest.approx(365 * d.mean() - half, abs=0.08 * half)
    assert math.log1p(row["cagr_high"]) == pytest.approx(365 * d.mean() + half, abs=0.08 * half)


def test_intervals_are_seeded() -> None:
    rng = np.random.default_rng(1)
    returns = {"x": rng.normal(0.001, 0.02, 365), "ew": rng.normal(0.0, 0.02, 365), "btc": rng.normal(0.0005, 0.03, 365)}
    first = bootstrap.compare(returns, ["ew", "btc"], SETTINGS)
    again = bootstrap.compare(returns, ["ew", "btc"], SETTINGS)
    other = bootstrap.compare(returns, ["ew", "btc"], dataclasses.replace(SETTINGS, seed=4))
    assert first.equals(again)
    assert not np.allclose(first["sharpe_low"], other["sharpe_low"])
    assert list(zip(first["strategy"], first["reference"])) == [("x", "ew"), ("btc", "ew"), ("x", "btc"), ("ew", "btc")]
    # A strategy compared with itself (renamed) has a zero-width interval at zero.
    same = bootstrap.compare({"a": returns["x"], "b": returns["x"].copy()}, ["b"], SETTINGS).iloc[0]
    assert same["sharpe_low"] == same["sharpe_high"] == same["sharpe_diff"] == 0.0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="same days"):
        bootstrap.compare({"a": np.zeros(10), "b": np.zeros(11)}, ["b"], SETTINGS)
    with pytest.raises(ValueError, match="reference"):
        bootstrap.compare({"a": np.zeros(10)}, ["ew"], SETTINGS)
    # All cash: no Sharpe ratio, so no interval (not a spuriously tight one).
    row = bootstrap.compare({"cash": np.zeros(50), "ew": np.random.default_rng(0).normal(0, 0.01, 50)}, ["ew"], SETTINGS).iloc[0]
    assert math.isnan(row["sharpe_low"]) and math.isnan(row["sharpe_high"])
