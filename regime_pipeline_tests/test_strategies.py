"""Benchmark strategies: valid and causal weights, listing rules, and the yearly figures."""

from __future__ import annotations

import datetime as dt
from functools import cache

import numpy as np
import pandas as pd
import pytest

from regime_pipeline.configs import universe
from regime_pipeline.core.allocation.portfolio import validate_weights
from regime_pipeline.core.allocation.strategies import (
    benchmark_strategies,
    decision_days,
    equal_weight,
    inverse_volatility,
    momentum_inverse_vol,
    run_benchmarks,
    settings,
    wide_prices,
)
from regime_pipeline_tests.conftest import embedded_daily_bars


@cache
def _bars() -> pd.DataFrame:
    return embedded_daily_bars()


@cache
def _prices():
    return wide_prices(_bars())


def _index(day: str) -> int:
    return int(np.flatnonzero(_prices().dates == dt.date.fromisoformat(day))[0])


def test_weights_valid_on_real_data() -> None:
    p = _prices()
    strategies = benchmark_strategies(p.symbols)
    for d in range(0, len(p.dates) - 1, 37):
        for name, f in strategies.items():
            w = f(p.close[: d + 1])
            validate_weights(w, p.open[d + 1], symbol_names=p.symbols, day=(name, p.dates[d]))


def test_equal_weight_excludes_unlisted_assets() -> None:
    p = _prices()
    w = equal_weight(p.close[: _index("2020-08-15") + 1])  # SOL listed 08-11; DOT 08-18; AVAX 09-22
    by_symbol = dict(zip(p.symbols, w[:-1]))
    assert by_symbol["AVAXUSDT"] == 0 and by_symbol["DOTUSDT"] == 0
    assert by_symbol["SOLUSDT"] == pytest.approx(1 / 11)
    assert w[-1] == 0 and w.sum() == pytest.approx(1)


def test_inverse_volatility_on_a_hand_series() -> None:
    # log returns over the last 3 days: A = +x, -x, +x; B = +2x, -2x, +2x (twice A's std);
    # C lists one day too late (2 returns < window 3) and is excluded.
    x = 0.01
    logret = np.array([[x, 2 * x, np.nan], [-x, -2 * x, np.nan], [x, 2 * x, 0.05]])
    close = np.vstack([[100.0, 50.0, np.nan], 100.0 * np.ones((3, 3))])
    close[1:, :2] = np.array([100.0, 50.0]) * np.exp(np.cumsum(logret[:, :2], axis=0))
    close[2:, 2] = [10.0, 10.0 * np.exp(0.05)]
    w = inverse_volatility(close, window=3)
    np.testing.assert_allclose(w, [2 / 3, 1 / 3, 0.0, 0.0])  # 1/σ_A : 1/σ_B = 2 : 1


def test_momentum_all_cash_when_all_momentum_negative() -> None:
    t = 60
    close = np.exp(-0.01 * np.arange(t)[:, None] + 0.02 * np.sin(np.arange(t * 3).reshape(t, 3)))
    w = momentum_inverse_vol(close, lookback=28, window=30)
    np.testing.assert_array_equal(w, [0, 0, 0, 1])
    # flip one asset to a rising trend: it alone gets the weight
    close[:, 1] = np.exp(0.01 * np.arange(t))
    w = momentum_inverse_vol(close, lookback=28, window=30)
    np.testing.assert_allclose(w, [0, 1, 0, 0])


def test_decisions_are_sunday_closes_after_the_start() -> None:
    p = _prices()
    days = decision_days(p.dates, dt.date(2025, 1, 1), dt.date(2025, 12, 31), weekday=0)
    assert p.dates[days[0]] == dt.date(2024, 12, 31)  # invested from the first day's open
    assert all(p.dates[d].weekday() == 6 for d in days[1:])  # Sunday close -> Monday open
    assert p.dates[days[-1]] == dt.date(2025, 12, 28)
    assert len(days) == 1 + 52


def test_no_look_ahead() -> None:
    bars = _bars()
    decision = dt.date(2024, 2, 4)  # a Sunday
    later = bars["date"] > decision
    shaken = bars.copy()
    rng = np.random.default_rng(1)
    factor = np.exp(rng.normal(0, 0.2, later.sum()))
    for column in ("open", "high", "low", "close"):
        shaken.loc[later, column] = shaken.loc[later, column] * factor
    base = run_benchmarks(bars, "2024-01-01", "2024-03-31")
    moved = run_benchmarks(shaken, "2024-01-01", "2024-03-31")
    d = int(np.flatnonzero(base["equal_weight"].dates == decision)[0])
    for name in base:
        b, m = base[name], moved[name]
        k = int(np.searchsorted(b.rebalance_days, d + 1))  # the trade of that decision
        np.testing.assert_array_equal(m.targets[: k + 1], b.targets[: k + 1], err_msg=name)
        np.testing.assert_array_equal(m.equity[: d + 1], b.equity[: d + 1], err_msg=name)
        assert not np.array_equal(m.equity, b.equity), name
    # and directly on the strategy functions
    p, q = wide_prices(bars), wide_prices(shaken)
    i = int(np.flatnonzero(p.dates == decision)[0])
    for name, f in benchmark_strategies(p.symbols).items():
        np.testing.assert_array_equal(f(q.close[: i + 1]), f(p.close[: i + 1]), err_msg=name)


def test_benchmarks_read_only_the_history_they_declare() -> None:
    """A benchmark handed only its declared last closes decides exactly as with the whole
    history, at every decision of several years (the backtest hands it only those rows)."""
    p = wide_prices(_bars())
    days = decision_days(p.dates, dt.date(2019, 1, 1), dt.date(2024, 12, 31), settings().rebalance_weekday)
    for name, f in benchmark_strategies(p.symbols).items():
        assert f.history_days >= 1, name
        for d in days:
            np.testing.assert_array_equal(f(p.seen_at(d, f.history_days)), f(p.seen_at(d)), err_msg=f"{name} {d}")
    # Short of that history, the momentum benchmark would decide otherwise somewhere: the
    # declaration is not merely large.
    f = benchmark_strategies(p.symbols)["momentum_inverse_vol"]
    assert any(not np.array_equal(f(p.seen_at(d, f.history_days - 1)), f(p.seen_at(d))) for d in days)


def test_benchmarks_share_the_cost_and_schedule() -> None:
    results = run_benchmarks(_bars(), "2024-01-01", "2024-12-31")
    assert set(results) == {"btc_buy_and_hold", "equal_weight", "inverse_volatility", "momentum_inverse_vol"}
    for r in results.values():
        assert r.dates[0] == dt.date(2023, 12, 31) and r.dates[-1] == dt.date(2024, 12, 31)
        assert r.period_returns.size == 366
        np.testing.assert_array_equal(r.rebalance_days, results["equal_weight"].rebalance_days)
        assert (r.weights >= 0).all()
        np.testing.assert_allclose(r.weights.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(r.costs, settings().costs.rate * r.turnover * r.equity_open[r.rebalance_days] / (1 - settings().costs.rate * r.turnover))
    btc = results["btc_buy_and_hold"]
    np.testing.assert_allclose(btc.turnover, [1.0] + [0.0] * (btc.turnover.size - 1), atol=1e-12)


@pytest.mark.parametrize("year", [2024, 2025])
def test_print_yearly_totals(year: int) -> None:
    results = run_benchmarks(_bars(), f"{year}-01-01", f"{year}-12-31")
    for name, r in results.items():
        s = r.summary()
        print(
            f"{year} {name:22s} total {s['total_return']:+8.2%}  sharpe {s['sharpe']:5.2f}  "
            f"maxDD {s['max_drawdown']:+7.2%}  turnover/yr {s['annual_turnover']:6.2f}"
        )
    assert len(universe().candidates) == 13
