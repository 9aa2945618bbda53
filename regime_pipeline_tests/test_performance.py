"""Performance metrics: hand-computed values, edge cases, and empyrical as an independent check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from regime_pipeline.core.allocation import performance as perf
from regime_pipeline_tests.conftest import embedded_daily_bars

empyrical = pytest.importorskip("empyrical")

# Five daily returns, worked by hand below.
R = [0.10, -0.05, 0.02, -0.10, 0.05]


def test_periods_per_year_is_365_in_config_and_default() -> None:
    assert perf.periods_per_year() == 365 == perf.PERIODS_PER_YEAR


def test_hand_computed_values() -> None:
    # mean = (0.10 - 0.05 + 0.02 - 0.10 + 0.05) / 5 = 0.02 / 5 = 0.004
    # deviations 0.096, -0.054, 0.016, -0.104, 0.046; squares 0.009216 + 0.002916 + 0.000256
    # + 0.010816 + 0.002116 = 0.02532; sample variance 0.02532 / 4 = 0.00633
    assert perf.sharpe(R) == pytest.approx(0.004 / math.sqrt(0.00633) * math.sqrt(365), rel=1e-12)
    assert perf.annual_volatility(R) == pytest.approx(math.sqrt(0.00633 * 365), rel=1e-12)
    # downside: min(r, 0) = 0, -0.05, 0, -0.10, 0 -> mean of squares (0.0025 + 0.01) / 5 = 0.0025
    # -> downside deviation 0.05 (averaged over ALL five days, not the two negative ones)
    assert perf.sortino(R) == pytest.approx(0.004 / 0.05 * math.sqrt(365), rel=1e-12)
    # equity 1, 1.1, 1.045, 1.0659, 0.95931, 1.0072755; peak 1.1 from day 1 on
    assert perf.total_return(R) == pytest.approx(0.0072755, rel=1e-9)
    assert perf.max_drawdown(R) == pytest.approx(0.95931 / 1.1 - 1, rel=1e-12)  # -0.12790
    cagr = 1.0072755 ** (365 / 5) - 1
    assert perf.cagr(R) == pytest.approx(cagr, rel=1e-9)
    assert perf.calmar(R) == pytest.approx(cagr / (1 - 0.95931 / 1.1), rel=1e-9)
    np.testing.assert_allclose(perf.equity_curve(R), [1, 1.1, 1.045, 1.0659, 0.95931, 1.0072755])


def test_max_drawdown_counts_the_start_value() -> None:
    # equity 1.0 -> 0.9 -> 0.945: the fall from the start value 1.0 is the drawdown (-10%);
    # a curve that started at the first close (0.9) would report no drawdown at all.
    assert perf.max_drawdown([-0.10, 0.05]) == pytest.approx(-0.10)
    assert perf.max_drawdown([0.01, 0.02]) == 0.0


def test_edge_cases() -> None:
    flat = [0.0] * 10
    assert math.isnan(perf.sharpe(flat))  # zero std -> nan (not 0, not inf)
    assert perf.annual_volatility(flat) == 0.0
    assert math.isnan(perf.sortino(flat))  # no downside and mean 0 -> nan
    assert math.isnan(perf.calmar(flat))  # no drawdown -> nan
    assert perf.sortino([0.01, 0.02, 0.0]) == math.inf  # no negative day, mean > 0 -> +inf
    assert math.isnan(perf.sharpe([0.01]))  # one return: no sample std
    assert math.isnan(perf.cagr([])) and math.isnan(perf.max_drawdown([]))
    assert perf.cagr([-1.0, 0.5]) == -1.0
    with pytest.raises(ValueError, match="finite"):
        perf.sharpe([0.01, float("nan")])


def test_summary_keys_and_turnover() -> None:
    s = perf.summary(R, turnover=[1.0, 0.5])
    assert s["n_days"] == 5 and s["n_rebalances"] == 2
    assert s["mean_turnover"] == 0.75
    assert s["annual_turnover"] == pytest.approx(1.5 * 365 / 5)
    assert s["sharpe"] == perf.sharpe(R)
    assert s["sortino_mean_negative"] is False


def test_sortino_is_flagged_where_the_mean_is_negative_because_it_misranks_losers() -> None:
    # Two losers with the same mean: the one with the deeper losses has the better Sortino.
    calm, wild = [-0.02, 0.01] * 50, [-0.06, 0.05] * 50
    assert perf.sortino(wild) > perf.sortino(calm)
    assert perf.total_return(wild) < perf.total_return(calm) and perf.max_drawdown(wild) < perf.max_drawdown(calm)
    assert perf.summary(wild)["sortino_mean_negative"] and perf.summary(calm)["sortino_mean_negative"]


def _btc_returns() -> np.ndarray:
    bars = embedded_daily_bars()
    close = bars.loc[bars["symbol"] == "BTCUSDT", "close"].to_numpy()
    return close[1:] / close[:-1] - 1


@pytest.mark.parametrize("source", ["random", "btc"])
def test_matches_empyrical_with_365(source: str) -> None:
    if source == "random":
        r = np.random.default_rng(7).normal(0.001, 0.03, 1000)
    else:
        r = _btc_returns()
    a = 365
    assert perf.sharpe(r) == pytest.approx(empyrical.sharpe_ratio(r, annualization=a), rel=1e-10)
    assert perf.sortino(r) == pytest.approx(empyrical.sortino_ratio(r, annualization=a), rel=1e-10)
    assert perf.max_drawdown(r) == pytest.approx(empyrical.max_drawdown(r), rel=1e-10)
    assert perf.cagr(r) == pytest.approx(empyrical.annual_return(r, annualization=a), rel=1e-10)
    assert perf.calmar(r) == pytest.approx(empyrical.calmar_ratio(r, annualization=a), rel=1e-10)
    assert perf.annual_volatility(r) == pytest.approx(empyrical.annual_volatility(r, annualization=a), rel=1e-10)
    assert perf.total_return(r) == pytest.approx(empyrical.cum_returns_final(r), rel=1e-10)


def test_empyrical_edge_cases_agree() -> None:
    assert perf.sortino([0.01, 0.02, 0.0]) == empyrical.sortino_ratio(np.array([0.01, 0.02, 0.0]), annualization=365)
    assert math.isnan(empyrical.calmar_ratio(np.array([0.01, 0.02]), annualization=365))
    assert math.isnan(perf.calmar([0.01, 0.02]))


def test_the_252_day_default_would_differ() -> None:
    """empyrical's (and most libraries') default is 252 trading days; crypto needs 365."""
    r = _btc_returns()
    ours = perf.sharpe(r)
    default = empyrical.sharpe_ratio(r)  # period="daily" -> 252
    assert default == pytest.approx(ours * math.sqrt(252 / 365), rel=1e-10)
    assert abs(default - ours) > 0.1  # ~17% lower: not a rounding difference
    assert empyrical.annual_return(r) != pytest.approx(perf.cagr(r), rel=1e-3)
    assert perf.sharpe(r, periods=252) == pytest.approx(default, rel=1e-10)
