"""Portfolio accounting: a hand-computed path, cost charging, valid weights, causality, listing."""

from __future__ import annotations

import numpy as np
import pytest

from regime_pipeline.core.allocation.portfolio import Costs, simulate, validate_weights

# Two assets A, B plus cash. Day 0 is the anchor (capital 1.0 in cash at its close).
OPEN = np.array([[10.0, 20.0], [10.0, 20.0], [11.0, 21.0], [12.5, 21.0]])
CLOSE = np.array([[10.0, 20.0], [11.0, 20.0], [12.0, 22.0], [13.0, 25.0]])
# Close of day 0: 50/50; close of day 2: all cash.
TARGETS = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
DECISIONS = [0, 2]


def test_known_path_without_costs() -> None:
    res = simulate(OPEN, CLOSE, TARGETS, DECISIONS, 0.0)
    # day 1 open: 1.0 -> 0.05 A @ 10 and 0.025 B @ 20; close: 0.05*11 + 0.025*20 = 1.05
    # day 2 (no trade): 0.05*12 + 0.025*22 = 1.15
    # day 3 open: 0.05*12.5 + 0.025*21 = 1.15 -> all cash; close: 1.15 whatever the prices
    np.testing.assert_allclose(res.equity, [1.0, 1.05, 1.15, 1.15])
    np.testing.assert_allclose(res.returns, [0.0, 0.05, 1.15 / 1.05 - 1, 0.0], atol=1e-15)
    np.testing.assert_allclose(res.equity_open, [1.0, 1.0, 0.05 * 11 + 0.025 * 21, 1.15])
    np.testing.assert_allclose(np.cumprod(1 + res.returns), res.equity)
    # weights drift: close of day 2 holds 0.6 of A and 0.55 of B out of 1.15
    np.testing.assert_allclose(res.weights[2], [0.6 / 1.15, 0.55 / 1.15, 0.0])
    np.testing.assert_allclose(res.weights[0], [0, 0, 1])
    np.testing.assert_array_equal(res.rebalance_days, [1, 3])
    # turnover: cash -> 50/50 is 0.5 + 0.5 = 1; drifted (0.625, 0.525)/1.15 -> cash is 1
    np.testing.assert_allclose(res.turnover, [1.0, 1.0])
    np.testing.assert_allclose(res.costs, [0.0, 0.0])


def test_a_book_can_start_from_the_weights_it_holds() -> None:
    # Start: 0.6 of A, 0.2 of B, 0.2 cash at day 0's close (value 1.0): 0.06 A, 0.01 B.
    initial = np.array([0.6, 0.2, 0.2])
    res = simulate(OPEN, CLOSE, TARGETS, DECISIONS, 0.001, initial=initial)
    # day 1 open: 0.06*10 + 0.01*20 + 0.2 = 1.0 (held through the night at unchanged opens);
    # drifted (0.6, 0.2) -> target (0.5, 0.5): turnover 0.1 + 0.3 = 0.4, cost 0.0004.
    np.testing.assert_allclose(res.turnover[0], 0.4)
    np.testing.assert_allclose(res.costs[0], 0.0004)
    np.testing.assert_allclose(res.equity[:2], [1.0, 1.05 * 0.9996])
    np.testing.assert_allclose(res.weights[0], initial)
    # The overnight gap before the first trade is earned by the held weights, not by cash.
    gap_open = OPEN.copy()
    gap_open[1] = [12.0, 20.0]  # A opens 20% up: 0.06*12 + 0.2 + 0.2 = 1.12 before the trade
    gapped = simulate(gap_open, CLOSE, TARGETS, DECISIONS, 0.0, initial=initial)
    cash_start = simulate(gap_open, CLOSE, TARGETS, DECISIONS, 0.0)
    assert gapped.equity_open[1] == pytest.approx(1.12) and cash_start.equity_open[1] == pytest.approx(1.0)
    # All cash as the initial weights is the default run, bit for bit.
    np.testing.assert_array_equal(simulate(OPEN, CLOSE, TARGETS, DECISIONS, 0.001, initial=[0, 0, 1]).equity,
                                  simulate(OPEN, CLOSE, TARGETS, DECISIONS, 0.001).equity)
    with pytest.raises(ValueError, match="the start"):
        simulate(OPEN, CLOSE, TARGETS, DECISIONS, 0.001, initial=[0.7, 0.7, 0.0])


def test_costs_charged_as_documented() -> None:
    costs = Costs(fee_bps=7, slippage_bps=3)  # 10 bps per unit of turnover
    assert costs.rate == pytest.approx(0.001)
    res = simulate(OPEN, CLOSE, TARGETS, DECISIONS, costs)
    # day 1: turnover 1 at equity 1.0 -> cost 0.001; everything after scales by 0.999
    # day 3: turnover 1 at equity 1.15 * 0.999 -> cost 0.001 * 1.14885
    np.testing.assert_allclose(res.costs, [0.001, 0.001 * 1.15 * 0.999])
    np.testing.assert_allclose(res.equity, [1.0, 1.05 * 0.999, 1.15 * 0.999, 1.15 * 0.999**2])
    # the cost is inside the trade day's return, not a separate day
    assert res.returns[1] == pytest.approx(1.05 * 0.999 - 1)


def test_turnover_counts_every_asset_order_once_not_halved() -> None:
    open_ = np.full((4, 2), 10.0)
    close = np.full((4, 2), 10.0)
    targets = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    res = simulate(open_, close, targets, [0, 1], Costs(10, 5))
    # cash -> 100% A: one buy of 1.0; 100% A -> 100% B: a sell of 1.0 and a buy of 1.0
    np.testing.assert_allclose(res.turnover, [1.0, 2.0])
    np.testing.assert_allclose(res.costs, [0.0015, 0.0015 * 2 * (1 - 0.0015)])
    assert res.equity[-1] == pytest.approx((1 - 0.0015) * (1 - 0.003))


def test_overnight_gap_uses_old_weights_then_new() -> None:
    # hold 100% A from day 1; A gaps from close 10 to open 12 on day 2, where we go to cash
    open_ = np.array([[10.0], [10.0], [12.0]])
    close = np.array([[10.0], [10.0], [15.0]])
    res = simulate(open_, close, np.array([[1.0, 0.0], [0.0, 1.0]]), [0, 1], 0.0)
    assert res.returns[2] == pytest.approx(0.2)  # +20% overnight with A, then flat in cash


def _random_market(t: int = 60, n: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, (t, n)), axis=0))
    open_ = np.vstack([close[:1], close[:-1]]) * np.exp(rng.normal(0, 0.01, (t, n)))
    days = np.arange(0, t - 1, 5)
    targets = rng.dirichlet(np.ones(n + 1), size=days.size)
    targets[::3, :n] = 0  # some all-cash decisions
    targets[::3, n] = 1
    return open_, close, targets, days


def test_weights_always_valid() -> None:
    open_, close, targets, days = _random_market()
    res = simulate(open_, close, targets, days, Costs(10, 5))
    assert (res.weights >= 0).all()
    np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, atol=1e-12)
    assert (res.turnover >= 0).all() and (res.turnover <= 2).all()
    np.testing.assert_allclose(np.cumprod(1 + res.returns), res.equity, rtol=1e-12)


def test_decision_does_not_use_prices_after_its_trade_open() -> None:
    open_, close, targets, days = _random_market()
    base = simulate(open_, close, targets, days, Costs(10, 5))
    d = int(days[4])
    o2, c2 = open_.copy(), close.copy()
    c2[d + 1 :] *= 1.7  # closes from the trade day on
    o2[d + 2 :] *= 0.6  # opens after the trade day
    res = simulate(o2, c2, targets, days, Costs(10, 5))
    np.testing.assert_array_equal(res.equity[: d + 1], base.equity[: d + 1])
    np.testing.assert_array_equal(res.equity_open[: d + 2], base.equity_open[: d + 2])
    k = int(np.searchsorted(days, d))
    np.testing.assert_array_equal(res.turnover[: k + 1], base.turnover[: k + 1])
    np.testing.assert_array_equal(res.costs[: k + 1], base.costs[: k + 1])
    assert not np.array_equal(res.equity[d + 1 :], base.equity[d + 1 :])


def test_unlisted_asset_refused_with_symbol_and_date() -> None:
    open_, close, targets, days = _random_market(t=12, n=2)
    open_[:6, 1] = np.nan  # asset B lists on day 6
    close[:6, 1] = np.nan
    dates = [f"2020-08-{i + 1:02d}" for i in range(12)]
    bad = np.array([[0.5, 0.5, 0.0]])
    with pytest.raises(ValueError, match=r"2020-08-05's open \(decided at the close of 2020-08-04\): weight 0.5 on BBBUSDT.*not listed"):
        simulate(open_, close, bad, [3], 0.0, dates=dates, symbols=["AAAUSDT", "BBBUSDT"])
    ok = simulate(open_, close, np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]), [3, 5], 0.0)
    assert np.isfinite(ok.equity).all()
    assert (ok.weights[:6, 1] == 0).all()


@pytest.mark.parametrize(
    "weights, message",
    [([0.6, 0.6, -0.2], "negative"), ([0.5, 0.4, 0.0], "sum"), ([0.5, np.nan, 0.5], "finite")],
)
def test_invalid_targets_refused(weights, message) -> None:
    with pytest.raises(ValueError, match=message):
        validate_weights(np.array(weights), np.array([1.0, 1.0]))


def test_bad_decision_days_refused() -> None:
    with pytest.raises(ValueError, match="decision days"):
        simulate(OPEN, CLOSE, TARGETS, [0, 3], 0.0)  # a decision on the last day cannot trade
    with pytest.raises(ValueError, match="decision days"):
        simulate(OPEN, CLOSE, TARGETS, [2, 2], 0.0)


def test_the_vectorised_trades_equal_trade_by_trade_with_data_that_end_and_a_start_book() -> None:
    """simulate's array path (no trade on a close-only day of a held asset) gives the holdings,
    values, turnover and costs of portfolio.trade applied one rebalance after the other, with an
    asset sold at its last close, one listed late, and a book that starts invested."""
    from regime_pipeline.core.allocation import exits, portfolio

    rng = np.random.default_rng(3)
    t_days, n = 130, 4
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.03, (t_days, n)), axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.01, (t_days, n)))
    close[70:, 1] = open_[70:, 1] = np.nan  # its data end at the close of day 69
    close[:12, 2] = open_[:12, 2] = np.nan  # listed on day 12
    days = np.arange(0, t_days - 1, 7)
    rate = 0.0015
    mark = exits.marks(open_, close, rate, 0.05)
    targets = rng.dirichlet(np.ones(n + 1), size=days.size)
    targets[:, :n] *= mark.tradable[days + 1]
    targets /= targets.sum(axis=1, keepdims=True)
    start = np.array([0.3, 0.2, 0.0, 0.1, 0.4])
    start_units = start[:n] / np.where(np.isnan(close[0]), 1.0, close[0])  # as simulate values the start
    vectorised = portfolio._trades_vectorised(start_units, start[n], targets, days + 1, mark, rate)
    sequential = portfolio._trades_sequential(start_units, start[n], targets, days + 1, mark, rate)
    for a, b in zip(vectorised, sequential):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert sequential[3][days + 1 == 71].size == 1  # a trade after the sale: the sold units are cash there
    result = simulate(open_, close, targets, days, rate, haircut=0.05, initial=start)
    np.testing.assert_allclose(result.turnover, sequential[3], rtol=1e-12)
