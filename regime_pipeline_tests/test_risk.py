"""Risk limits: each limit binds when it should and only then, and says so; the staleness guard."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from regime_pipeline.core.trading.risk import (
    DrawdownState,
    LookAheadError,
    RiskLimits,
    StaleDataError,
    apply_limits,
    check_data_fresh,
    drawdown_state,
)

SYMBOLS = ["BTC", "ETH", "SOL", "XRP"]
LIMITS = RiskLimits(
    max_weight=0.4, min_cash=0.02, max_turnover=1.0, max_drawdown=0.3, cooldown_weeks=3,
    min_order_notional=10.0, data_lag_days=1,
)
CASH = np.array([0.0, 0.0, 0.0, 0.0, 1.0])


def w(*assets: float) -> np.ndarray:
    """Weights of the first assets (the others 0), with the rest in cash."""
    padded = list(assets) + [0.0] * (len(SYMBOLS) - len(assets))
    return np.append(padded, 1.0 - sum(assets))


def turnover(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[:-1] - b[:-1]).sum())


def test_config_is_read_and_checked() -> None:
    limits = RiskLimits.from_config()
    assert 0 < limits.max_weight <= 1 and 0 <= limits.min_cash < 1
    assert limits.data_lag_days == 1 and limits.cooldown_weeks >= 1
    with pytest.raises(ValueError, match="max_weight_per_asset must be in"):
        dataclasses.replace(LIMITS, max_weight=1.5)
    with pytest.raises(ValueError, match="data_lag_days must be >= 1"):
        dataclasses.replace(LIMITS, data_lag_days=0)


def test_a_target_within_every_limit_is_kept_as_is() -> None:
    target = w(0.3, 0.3, 0.2, 0.1)
    out = apply_limits(target, w(0.25, 0.3, 0.2, 0.1), LIMITS, symbols=SYMBOLS)
    np.testing.assert_array_equal(out.weights, target)
    assert out.bound == ()


def test_max_weight_caps_an_asset_and_sends_the_excess_to_cash() -> None:
    out = apply_limits(w(0.7, 0.2), w(0.4, 0.2), LIMITS, symbols=SYMBOLS)
    np.testing.assert_allclose(out.weights, [0.4, 0.2, 0.0, 0.0, 0.4])
    assert out.bound_names == ["max_weight_per_asset"]
    assert "BTC 0.7000 -> 0.4000" in out.bound[0].detail


def test_min_cash_scales_the_assets_down_pro_rata() -> None:
    target = w(0.4, 0.3, 0.2, 0.1)  # fully invested
    out = apply_limits(target, target, LIMITS, symbols=SYMBOLS)
    np.testing.assert_allclose(out.weights, [0.392, 0.294, 0.196, 0.098, 0.02])
    assert out.bound_names == ["min_cash_weight"]


def test_max_turnover_scales_the_move_toward_the_target() -> None:
    limits = dataclasses.replace(LIMITS, max_turnover=0.5)
    target = w(0.4, 0.3, 0.2)  # from all cash: turnover 0.9
    out = apply_limits(target, CASH, limits, symbols=SYMBOLS)
    assert out.requested_turnover == pytest.approx(0.9)
    assert out.turnover == pytest.approx(0.5)
    # The same direction, 5/9 of the way.
    np.testing.assert_allclose(out.weights, CASH + (target - CASH) * 0.5 / 0.9)
    assert out.bound_names == ["max_turnover"]
    assert "moved 55.56% of the way" in out.bound[0].detail


def test_the_caps_win_over_the_turnover_budget() -> None:
    # BTC drifted to 0.6, over its cap; the budget (0.1) is smaller than the trim (0.2).
    limits = dataclasses.replace(LIMITS, max_turnover=0.1)
    current = w(0.6, 0.1)
    out = apply_limits(w(0.2, 0.4), current, limits, symbols=SYMBOLS)
    np.testing.assert_allclose(out.weights, w(0.4, 0.1))
    assert out.turnover == pytest.approx(0.2)
    assert out.bound_names == ["max_turnover"] and "the caps alone need 0.2000" in out.bound[0].detail


def test_limited_weights_always_respect_every_cap() -> None:
    rng = np.random.default_rng(0)
    limits = dataclasses.replace(LIMITS, max_turnover=0.3)
    for _ in range(500):
        target, current = rng.dirichlet(np.full(5, 0.5)), rng.dirichlet(np.full(5, 0.5))
        out = apply_limits(target, current, limits).weights
        assert out.min() >= 0 and out.sum() == pytest.approx(1.0, abs=1e-12)
        assert out[:-1].max() <= limits.max_weight + 1e-12
        assert out[-1] >= limits.min_cash - 1e-12
        # Within the budget unless the caps alone need more.
        capped_current = np.minimum(current[:-1], limits.max_weight)
        capped_current *= min(1.0, (1 - limits.min_cash) / capped_current.sum())
        forced = float(np.abs(capped_current - current[:-1]).sum())
        assert turnover(out, current) <= max(limits.max_turnover, forced) + 1e-9


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to"):
        apply_limits(np.array([0.5, 0.6, 0, 0, 0]), CASH, LIMITS)
    with pytest.raises(ValueError, match="negative weight"):
        apply_limits(np.array([-0.1, 0.6, 0, 0, 0.5]), CASH, LIMITS)
    with pytest.raises(ValueError, match=r"current weights: expected 3 weights"):
        apply_limits(np.array([0.5, 0.5, 0.0]), CASH, LIMITS)


# -- drawdown stop ---------------------------------------------------------------------------


def test_drawdown_beyond_the_limit_goes_to_cash_and_says_so() -> None:
    state = drawdown_state([(10_000.0, False), (12_000.0, False), (9_000.0, False)], 8_300.0, LIMITS)
    assert state.stop and state.peak == 12_000.0
    assert state.drawdown == pytest.approx(1 - 8_300 / 12_000)  # 30.8 %
    assert "30.83% below its peak 12,000.00" in state.reason
    out = apply_limits(w(0.4, 0.3), w(0.4, 0.4), LIMITS, drawdown=state, symbols=SYMBOLS)
    np.testing.assert_array_equal(out.weights, CASH)
    assert out.bound_names == ["drawdown_stop"]
    assert out.turnover == pytest.approx(0.8)


def test_a_stop_is_never_throttled_by_max_turnover() -> None:
    state = DrawdownState(6_000.0, 10_000.0, 0.4, True, "test")
    limits = dataclasses.replace(LIMITS, max_turnover=0.1)
    out = apply_limits(w(0.4, 0.4), w(0.4, 0.4), limits, drawdown=state)
    np.testing.assert_array_equal(out.weights, CASH)


def test_drawdown_within_the_limit_trades_normally() -> None:
    state = drawdown_state([(10_000.0, False)], 7_100.0, LIMITS)  # 29 %
    assert not state.stop and state.drawdown == pytest.approx(0.29)
    out = apply_limits(w(0.4, 0.3), CASH, LIMITS, drawdown=state)
    assert "drawdown_stop" not in out.bound_names


def test_the_stop_holds_for_the_cooldown_then_the_peak_restarts() -> None:
    history = [(10_000.0, False), (6_500.0, True)]  # fired at 6,500 (35 % down)
    second = drawdown_state(history, 6_500.0, LIMITS)
    assert second.stop and "rebalance 2 of 3" in second.reason
    history.append((6_500.0, True))
    assert drawdown_state(history, 6_500.0, LIMITS).stop  # 3 of 3
    history.append((6_500.0, True))
    resumed = drawdown_state(history, 6_500.0, LIMITS)
    # Cooled down: measured from a new peak (the equity now), not from 10,000 again.
    assert not resumed.stop and resumed.peak == 6_500.0 and resumed.drawdown == 0.0
    history.append((6_500.0, False))
    assert drawdown_state(history, 4_500.0, LIMITS).stop  # a new 30.8 % fall from 6,500


def test_first_week_has_no_drawdown() -> None:
    state = drawdown_state([], 10_000.0, LIMITS)
    assert not state.stop and state.peak == 10_000.0 and state.drawdown == 0.0


# -- staleness guard ---------------------------------------------------------------------------

MONDAY = dt.date(2024, 1, 8)


def test_data_through_the_sunday_before_the_week_is_accepted() -> None:
    check_data_fresh(MONDAY, dt.date(2024, 1, 7), LIMITS)


@pytest.mark.parametrize("through", [dt.date(2024, 1, 6), dt.date(2023, 12, 31)])
def test_stale_data_is_refused_naming_the_dates_and_the_week(through: dt.date) -> None:
    with pytest.raises(StaleDataError) as info:
        check_data_fresh(MONDAY, through, LIMITS)
    message = str(info.value)
    assert "refusing to trade the week of 2024-01-08 (Monday)" in message
    assert f"latest data is through {through:%Y-%m-%d}" in message
    assert "needs data through 2024-01-07 (Sunday)" in message


def test_data_from_after_the_decision_is_refused_as_look_ahead() -> None:
    with pytest.raises(LookAheadError, match="look-ahead"):
        check_data_fresh(MONDAY, MONDAY, LIMITS)
