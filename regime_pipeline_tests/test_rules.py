"""Regime rules: the two rules' weights, calibration on training days only, the detector and raw
versions reading the right signal, and decisions that never see the future."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from functools import cache

import numpy as np
import pytest

from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation import rules
from regime_pipeline.core.allocation.strategies import decision_days, run_strategy, settings, trailing_volatility
from regime_pipeline_tests.conftest import embedded_daily_bars, shocked_after, synthetic_probabilities

D = dt.date
TRAIN = (D(2019, 1, 1), D(2021, 12, 31))
CONFIG = rules.RuleSettings(share=0.5, horizon_days=7, target_quantile=0.5)


@cache
def _data() -> allocation.AllocationData:
    return allocation.allocation_data(embedded_daily_bars(), synthetic_probabilities(classes=(4, 4, 3)))


def test_settings_come_from_the_config() -> None:
    assert rules.RuleSettings.from_config() == CONFIG


def test_trend_risk_off_goes_to_cash_only_when_more_than_the_share_is_down() -> None:
    listed = np.array([True, True, True, True, False])
    ew = rules.trend_risk_off(np.array([True, True, False, False, True]), listed, 0.5)
    np.testing.assert_allclose(ew, [0.25, 0.25, 0.25, 0.25, 0, 0])  # 2 of 4 is not more than half
    cash = rules.trend_risk_off(np.array([True, True, True, False, False]), listed, 0.5)
    np.testing.assert_array_equal(cash, [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(rules.trend_risk_off(np.zeros(5, bool), np.zeros(5, bool), 0.5), [0, 0, 0, 0, 0, 1])


def test_vol_target_scales_each_asset_down_to_the_target_and_keeps_the_rest_in_cash() -> None:
    listed = np.array([True, True, True, False])
    w = rules.vol_target(np.array([0.4, 1.6, np.nan, 0.1]), listed, target=0.8)
    np.testing.assert_allclose(w, [1 / 3, 0.5 / 3, 1 / 3, 0, 0.5 / 3])  # calm: full; 2x target: half; unknown: full
    assert w.sum() == pytest.approx(1.0)


def test_calibration_uses_the_training_days_only() -> None:
    data = _data()
    cal = rules.calibrate(data, *TRAIN, CONFIG)
    # The target is the median of the trailing vols of the training asset-days, as the benchmark measures them.
    bt = settings()
    first, last = data.index(TRAIN[0]), data.index(TRAIN[1])
    vols = np.concatenate([trailing_volatility(data.prices.close[: t + 1], bt.inverse_vol_window_days)
                           for t in range(first, last + 1)]) * math.sqrt(365)
    assert cal.target_vol == pytest.approx(np.median(vols[np.isfinite(vols)]), rel=1e-9)
    assert cal.vol_classes == ("0", "1", "2", "3") and len(cal.vol_levels) == 4
    assert all(0.2 < v < 3.0 for v in cal.vol_levels)
    # Anything after the training window (prices and probabilities) changes nothing.
    t = data.index(TRAIN[1])
    prices = dataclasses.replace(data.prices, close=data.prices.close.copy(), open=data.prices.open.copy())
    prices.close[t + 1 :] *= 3.0
    probs = data.probs.copy()
    probs[t + 1 :] = 0.25
    assert rules.calibrate(allocation.AllocationData(prices, probs, data.prob_columns), *TRAIN, CONFIG) == cal


def test_class_levels_measure_the_volatility_that_follows_each_class() -> None:
    """Vol probabilities that put class 1 on the days before a calm week and class 0 before a
    turbulent one give v_1 < v_0."""
    data = _data()
    cal_close = data.prices.close
    forward = rules._forward_vol(cal_close, 7)
    btc = data.prices.symbols.index("BTCUSDT")
    median = np.nanmedian(forward[:, btc])
    probs = data.probs.copy()
    columns = rules._columns(data, rules.VOL_PREFIX)
    probs[:, columns.ravel()] = np.nan  # only BTC has vol probabilities
    one_hot = np.where((forward[:, btc] < median)[:, None], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    probs[:, columns[btc]] = one_hot
    cal = rules.calibrate(allocation.AllocationData(data.prices, probs, data.prob_columns), *TRAIN, CONFIG)
    assert cal.vol_levels[1] < median < cal.vol_levels[0]
    assert cal.vol_levels[2] == cal.vol_levels[3]  # never most probable: the training mean


def test_detector_trend_rule_reads_the_worst_class_and_the_raw_one_momentum() -> None:
    data = _data()
    start, end = D(2022, 1, 1), D(2022, 6, 30)
    columns = rules._columns(data, rules.TREND_PREFIX)
    probs = data.probs.copy()
    days = decision_days(data.prices.dates, start, end, settings().rebalance_weekday)
    bearish = days[::2]  # every other decision: every asset's most probable trend class is the worst
    probs[:, columns.ravel()] = np.tile([0.1, 0.5, 0.3, 0.1], columns.shape[0])
    probs[np.ix_(bearish, columns.ravel())] = np.tile([0.7, 0.1, 0.1, 0.1], columns.shape[0])
    altered = allocation.AllocationData(data.prices, probs, data.prob_columns)
    cal = rules.calibrate(altered, *TRAIN, CONFIG)
    strategies = rules.rule_strategies(altered, cal, CONFIG)
    result = run_strategy(strategies["trend_risk_off_detector"], altered.prices, start, end)
    cash = result.targets[:, -1] == 1.0
    np.testing.assert_array_equal(cash, np.isin(days, bearish))
    # Raw: cash exactly when more than half the listed assets have negative 28-day momentum.
    raw = run_strategy(strategies["trend_risk_off_momentum"], data.prices, start, end)
    close = data.prices.close
    for k, d in enumerate(days):
        momentum = close[d] / close[d - 28] - 1
        listed = np.isfinite(close[d])
        assert (raw.targets[k, -1] == 1.0) == ((momentum[listed] < 0).sum() > 0.5 * listed.sum())


def test_vol_target_rules_hold_less_when_volatility_is_high() -> None:
    data = _data()
    strategies = rules.rule_strategies(data, rules.calibrate(data, *TRAIN, CONFIG), CONFIG)
    result = run_strategy(strategies["vol_target_trailing"], data.prices, D(2022, 1, 1), D(2022, 12, 31))
    days = decision_days(data.prices.dates, D(2022, 1, 1), D(2022, 12, 31), settings().rebalance_weekday)
    market_vol = np.array([np.nanmean(trailing_volatility(data.prices.close[: d + 1], 30)) for d in days])
    invested = 1.0 - result.targets[:, -1]
    assert np.corrcoef(market_vol, invested)[0, 1] < -0.5
    assert invested.max() <= 1.0 + 1e-12 and invested.min() > 0.0


@pytest.mark.parametrize("name", ["trend_risk_off_detector", "trend_risk_off_momentum", "vol_target_detector", "vol_target_trailing"])
def test_rules_do_not_see_the_future(name: str) -> None:
    data = _data()
    start, end, cut = D(2022, 1, 1), D(2022, 12, 31), D(2022, 7, 3)  # a Sunday: a decision day
    cal = rules.calibrate(data, *TRAIN, CONFIG)
    t = data.index(cut)
    rng = np.random.default_rng(2)
    altered = shocked_after(data, t, rng)
    a = run_strategy(rules.rule_strategies(data, cal, CONFIG)[name], data.prices, start, end)
    b = run_strategy(rules.rule_strategies(altered, cal, CONFIG)[name], altered.prices, start, end)
    known = a.dates[a.rebalance_days - 1] <= cut
    assert known.sum() > 20
    # To the last bits: numpy's vectorised sums may round differently on another array's memory.
    np.testing.assert_allclose(a.targets[known], b.targets[known], rtol=1e-12, atol=1e-15)


def test_a_detector_rule_refuses_closes_of_another_calendar() -> None:
    data = _data()
    strategy = rules.rule_strategies(data, rules.calibrate(data, *TRAIN, CONFIG), CONFIG)["vol_target_detector"]
    with pytest.raises(ValueError, match="do not match"):
        strategy(data.prices.close[:1000] * 1.01)


def test_all_decisions_at_once_equal_one_decision_at_a_time() -> None:
    data = _data()
    start, end = D(2022, 1, 1), D(2023, 6, 30)
    days = decision_days(data.prices.dates, start, end, settings().rebalance_weekday)
    for name, strategy in rules.rule_strategies(data, rules.calibrate(data, *TRAIN, CONFIG), CONFIG).items():
        at_once = strategy.targets(data.prices.close, days)
        one_by_one = np.stack([strategy(data.prices.close[: d + 1]) for d in days])
        np.testing.assert_array_equal(at_once, one_by_one, err_msg=name)
        assert np.allclose(at_once.sum(axis=1), 1.0) and (at_once >= 0).all()
        with pytest.raises(ValueError, match="do not match"):
            strategy.targets(data.prices.close * 1.01, days)
