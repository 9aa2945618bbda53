"""Volatility forecasts: HAR against least squares, GARCH against arch, no look-ahead, the
scores against a hand computation, and the inverse-volatility strategy on forecasts.

Real data is the embedded Binance daily klines. Reference values are rebuilt with plain
Python (dicts of closes, math) rather than with the module's helpers.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from arch import arch_model

from regime_pipeline.configs import load_yaml, splits
from regime_pipeline.core.features import daily as F
from regime_pipeline.core.allocation import strategies as S
from regime_pipeline.core.features import vol_forecasts as V
from regime_pipeline.core.allocation.portfolio import validate_weights
from regime_pipeline_tests.conftest import train_window

DAY = dt.timedelta(days=1)
FIRST, END = dt.date(2017, 8, 17), dt.date(2026, 1, 1)
YEAR = 365


@pytest.fixture(scope="module")
def vol_features(bars, params) -> pd.DataFrame:
    return F.vol_features(bars, params, FIRST, END)


@pytest.fixture(scope="module")
def models(bars, vol_features) -> V.VolForecastModels:
    return V.fit_models(bars, vol_features, *train_window())


@pytest.fixture(scope="module")
def full(bars, vol_features, params, models) -> pd.DataFrame:
    return V.forecast(bars, vol_features, params, models, FIRST, END)


def closes(bars: pd.DataFrame, symbol: str) -> dict[dt.date, float]:
    one = bars[bars.symbol == symbol]
    return dict(zip(one["date"], one["close"]))


def log_returns(c: dict[dt.date, float]) -> dict[dt.date, float]:
    """r_d for every d whose close and the previous day's close exist."""
    return {d: math.log(c[d] / c[d - DAY]) for d in c if d - DAY in c}


def rms(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values))


def window(r: dict[dt.date, float], last: dt.date, n: int) -> list[float] | None:
    """r_{last-n+1} .. r_last, or None if any is missing."""
    days = [last - k * DAY for k in range(n - 1, -1, -1)]
    return [r[d] for d in days] if all(d in r for d in days) else None


# ---- config ----------------------------------------------------------------------------


def test_config_defines_the_target_horizons_and_windows():
    config = load_yaml("forecasts")
    assert V.HORIZONS == (1, 7) and V.HAR_WINDOWS == (1, 7, 30)
    assert "sqrt(mean(r_{d+1}^2 .. r_{d+h}^2))" in config["target"]["description"]
    assert "not annualised" in config["target"]["unit"]
    assert set(config["models"]) == set(V.MODELS)
    assert V.LOOKBACK_DAYS == 30  # 30 returns end on d: closes d-30 .. d
    assert V.RV_COLUMNS == ["rv_1d", "rv_7d", "rv_30d"]


# ---- targets ---------------------------------------------------------------------------


def test_realized_targets_equal_plain_loops_and_stay_inside_the_window(bars):
    start, end = dt.date(2024, 1, 1), dt.date(2024, 3, 1)
    got = V.realized(bars, start, end)
    r = log_returns({d: c for d, c in closes(bars, "SOLUSDT").items() if start <= d < end})
    for h in V.HORIZONS:
        one = got[(got.symbol == "SOLUSDT") & (got.horizon_days == h)].set_index("date")["realized"]
        # The last target needs r_{d+h} dated before `end`; r_start needs a close before `start`.
        assert one.index.min() == start and one.index.max() == end - (h + 1) * DAY
        for d, value in one.items():
            assert value == pytest.approx(rms(window(r, d + h * DAY, h)), rel=1e-12)
    assert got["horizon_days"].dtype == "int64" and np.isfinite(got["realized"]).all()


# ---- HAR against least squares -----------------------------------------------------------


@pytest.mark.parametrize("symbol", ["BTCUSDT", "AVAXUSDT"])
def test_har_coefficients_equal_a_direct_least_squares_solve(bars, vol_features, models, symbol):
    start, end = train_window()
    c = {d: v for d, v in closes(bars, symbol).items() if start <= d < end}  # train bars only
    r = log_returns(c)
    feature_days = set(vol_features.loc[vol_features.symbol == symbol, "date"])
    for h in V.HORIZONS:
        X, y = [], []
        for d in sorted(c):
            comps = [window(r, d, n) for n in (1, 7, 30)]
            target = window(r, d + h * DAY, h)
            if d in feature_days and target is not None and all(w is not None for w in comps):
                X.append([1.0, *(rms(w) for w in comps)])
                y.append(rms(target))
        expected, *_ = np.linalg.lstsq(np.array(X), np.array(y), rcond=None)
        assert models.n_rows[h][symbol] == len(y)
        np.testing.assert_allclose(models.har[h][symbol], expected, rtol=1e-9, atol=1e-12)
    # The components matter: a daily-vol regression is not a constant.
    assert abs(models.har[7][symbol][1:]).sum() > 0.1


def test_one_day_of_forecasts_equals_hand_formulas(bars, vol_features, params, models, full):
    day, symbol = dt.date(2024, 6, 30), "ETHUSDT"
    r = log_returns(closes(bars, symbol))
    feats = vol_features[(vol_features.symbol == symbol) & (vol_features.date == day)].iloc[0]
    p = params[symbol]
    rv = {n: rms(window(r, day, n)) for n in (1, 7, 30)}
    for h in V.HORIZONS:
        row = full[(full.date == day) & (full.symbol == symbol) & (full.horizon_days == h)].iloc[0]
        assert row["naive"] == pytest.approx(rms(window(r, day, h)), rel=1e-12)
        b = models.har[h][symbol]
        assert row["har"] == pytest.approx(b[0] + b[1] * rv[1] + b[2] * rv[7] + b[3] * rv[30], rel=1e-12)
        s2, path = feats["garch_sigma"] ** 2 / YEAR, []
        for _ in range(h):
            path.append(s2)
            s2 = p.omega + (p.alpha + p.beta) * s2
        assert row["garch"] == pytest.approx(math.sqrt(sum(path) / h + p.mu**2), rel=1e-12)
        x = [{**feats.to_dict(), "rv_1d": rv[1], "rv_7d": rv[7], "rv_30d": rv[30]}[f] for f in V.LGBM_FEATURES]
        assert row["lgbm"] == pytest.approx(models.booster(h).predict(np.array([x]))[0], rel=1e-12)


# ---- GARCH against arch ------------------------------------------------------------------


def test_garch_forecasts_equal_arch_forecast_for_the_same_parameters(bars, params, full):
    p = params["BTCUSDT"]
    btc = bars[bars.symbol == "BTCUSDT"].reset_index(drop=True)
    r = np.log(btc["close"] / btc["close"].shift(1)).to_numpy()[1:]
    fixed = arch_model(100 * r, mean="Constant", vol="GARCH", p=1, q=1, dist="normal").fix(
        [100 * p.mu, 1e4 * p.omega, p.alpha, p.beta]
    )
    H = max(V.HORIZONS)
    arch_var = fixed.forecast(horizon=H, start=0, reindex=False).variance.to_numpy() / 1e4  # (n, H), origin t
    # The multi-step recursion alone, from arch's own one-step variance: exact.
    np.testing.assert_allclose(V.garch_variance_path(arch_var[:, 0], p, H), arch_var, rtol=1e-12)
    # The full forecasts: ours filter over a 180-return window, arch over all history, so
    # they agree once arch's start value has decayed (as garch_sigma does, test_features).
    origin_days = btc["date"].to_numpy()[1:]
    ours = full[full.symbol == "BTCUSDT"]
    burn_in = 400
    for h in V.HORIZONS:
        expected = pd.Series(np.sqrt(arch_var[:, :h].mean(axis=1) + p.mu**2), index=origin_days).iloc[burn_in:]
        got = ours[ours.horizon_days == h].set_index("date")["garch"]
        np.testing.assert_allclose(got.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=1e-6)


# ---- no look-ahead, batch == single day -------------------------------------------------------


def perturb_after(bars: pd.DataFrame, cutoff: dt.date, seed: int = 1) -> pd.DataFrame:
    """Every bar after `cutoff` rescaled at random (still valid OHLC), 5% of them dropped."""
    rng = np.random.default_rng(seed)
    future = (bars["date"] > cutoff).to_numpy()
    n = int(future.sum())
    out = bars.copy()
    scale = rng.uniform(0.5, 2.0, n)
    for column in ("open", "close"):
        out.loc[future, column] *= scale * rng.uniform(0.9, 1.1, n)
    out.loc[future, "high"] = out.loc[future, ["open", "close"]].max(axis=1) * rng.uniform(1.0, 1.2, n)
    out.loc[future, "low"] = out.loc[future, ["open", "close"]].min(axis=1) * rng.uniform(0.8, 1.0, n)
    return out[~(future & (rng.random(len(bars)) < 0.05))]


@pytest.mark.parametrize("cutoff", [dt.date(2019, 3, 15), dt.date(2024, 6, 30)])
def test_no_lookahead_perturbing_the_future_changes_nothing_up_to_the_cutoff(bars, params, models, full, cutoff):
    perturbed = perturb_after(bars, cutoff)
    features = F.vol_features(perturbed, params, FIRST, END)
    if cutoff >= train_window()[1]:
        # Past the train split the whole chain is refitted: the models see train only.
        refit = V.fit_models(perturbed, features, *train_window())
        assert refit.to_dict() == models.to_dict()
        got = V.forecast(perturbed, features, F.fit_garch(perturbed, *train_window()), refit, FIRST, END)
    else:
        # Inside train the fitted models legitimately depend on all of train: hold them fixed.
        got = V.forecast(perturbed, features, params, models, FIRST, END)
    before = got[got.date <= cutoff].reset_index(drop=True)
    expected = full[full.date <= cutoff].reset_index(drop=True)
    assert len(expected) > 1000
    pd.testing.assert_frame_equal(before, expected, check_exact=True)
    after, ref_after = got[got.date > cutoff].reset_index(drop=True), full[full.date > cutoff].reset_index(drop=True)
    assert not after.equals(ref_after)  # and the perturbation did reach the forecasts


def test_fit_models_reads_nothing_outside_its_window(bars, vol_features):
    # A window whose first days have vol features, so HAR components and targets at both
    # ends would reach outside it if they could (train's first days have none yet).
    start, end = dt.date(2019, 7, 1), dt.date(2020, 7, 1)
    outside = (bars["date"] < start) | (bars["date"] >= end)
    scrambled = bars.copy()
    scrambled.loc[outside, "close"] *= np.random.default_rng(0).uniform(0.5, 2.0, int(outside.sum()))
    features = vol_features.copy()
    features.loc[(features["date"] < start) | (features["date"] >= end), F.VOL_COLUMNS] *= 5.0
    fitted = V.fit_models(bars, vol_features, start, end)
    assert min(fitted.n_rows[1].values()) > 150 and "BTCUSDT" in fitted.har[7]
    assert V.fit_models(scrambled, features, start, end).to_dict() == fitted.to_dict()


def test_a_single_day_equals_the_batch_bit_for_bit(bars, vol_features, params, models, full):
    for day in (dt.date(2020, 9, 1), dt.date(2025, 12, 31)):
        lookback = bars[(bars.date >= day - V.LOOKBACK_DAYS * DAY) & (bars.date <= day)]
        got = V.forecast(lookback, vol_features[vol_features.date == day], params, models, day, day + DAY)
        expected = full[full.date == day].reset_index(drop=True)
        assert len(got) == 2 * len(expected[expected.horizon_days == 1]) > 0
        pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_rows_exist_where_vol_features_do_and_are_valid(vol_features, full):
    assert list(full.columns) == V.FORECAST_COLUMNS
    for h in V.HORIZONS:
        keys = full.loc[full.horizon_days == h, ["date", "symbol"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(keys, vol_features[["date", "symbol"]].reset_index(drop=True))
    values = full[list(V.MODELS)].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all()
    assert (full[["garch", "har", "lgbm"]].to_numpy() > 0).all()


def test_models_round_trip_through_json(models):
    import json

    again = V.VolForecastModels.from_dict(json.loads(json.dumps(models.to_dict())))
    assert again.to_dict() == models.to_dict()
    bad = {**models.to_dict(), "lgbm_features": ["rv_1d"]}
    with pytest.raises(ValueError, match="refit"):
        V.VolForecastModels.from_dict(bad)


# ---- scores against a hand computation ------------------------------------------------------


def test_report_metrics_equal_a_hand_computation():
    d1, d2, d3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
    # naive, garch, har, lgbm for (date, symbol); A's naive of d2 is 0 (a flat day): floored.
    rows = [
        (d1, "A", [0.02, 0.03, 0.025, 0.021]),
        (d2, "A", [0.00, 0.03, 0.020, 0.022]),
        (d1, "B", [0.05, 0.04, 0.045, 0.050]),
        (d3, "B", [0.01, 0.02, 0.030, 0.015]),  # no target: not scored
    ]
    forecasts = pd.DataFrame([{"date": d, "symbol": s, "horizon_days": 1, **dict(zip(V.MODELS, f))} for d, s, f in rows])
    realized = {(d1, "A"): 0.03, (d2, "A"): 0.0005, (d1, "B"): 0.06}
    targets = pd.DataFrame([{"date": d, "symbol": s, "horizon_days": 1, "realized": v} for (d, s), v in realized.items()])
    scores = V.evaluate(forecasts, targets, floor=0.001).set_index(["symbol", "model"])

    def hand(keys, model):
        errors, losses = [], []
        for key in keys:
            f = dict(zip(V.MODELS, next(x[2] for x in rows if (x[0], x[1]) == key)))[model]
            y = realized[key]
            errors.append((f - y) ** 2)
            v, q = max(y, 0.001) ** 2, max(f, 0.001) ** 2
            losses.append(v / q - math.log(v / q) - 1)
        return math.sqrt(sum(errors) / len(errors)), sum(losses) / len(losses)

    groups = {"A": [(d1, "A"), (d2, "A")], "B": [(d1, "B")], "pooled": list(realized)}
    for symbol, keys in groups.items():
        naive_rmse, naive_qlike = hand(keys, "naive")
        for model in V.MODELS:
            rmse, ql = hand(keys, model)
            row = scores.loc[(symbol, model)]
            assert row["n"] == len(keys)
            assert row["rmse"] == pytest.approx(rmse, rel=1e-12)
            assert row["qlike"] == pytest.approx(ql, rel=1e-12)
            assert row["rmse_vs_naive"] == pytest.approx(rmse / naive_rmse, rel=1e-12)
            assert row["qlike_vs_naive"] == pytest.approx(ql / naive_qlike, rel=1e-12)
    # A perfect forecast scores 0 on both; QLIKE punishes under-forecasts more than over-forecasts.
    assert V.qlike(np.array([0.02]), np.array([0.02]))[0] == 0.0
    assert V.qlike(np.array([0.02]), np.array([0.01]))[0] > V.qlike(np.array([0.02]), np.array([0.04]))[0]


def test_report_markdown_states_the_target_and_the_study_figure(bars, full):
    split = splits()["holdout"]
    scores = V.evaluate(full, V.realized(bars, split.start, split.end + DAY))
    text = V.report_markdown("holdout", scores, "plot.png")
    assert "sqrt(mean(r_{d+1}^2 .. r_{d+h}^2))" in text and "not annualised" in text
    assert "0.027" in text and "daily returns" in text
    assert "| lgbm" in text and "![forecasts](plot.png)" in text
    pooled = scores[scores.symbol == "pooled"]
    assert set(pooled.model) == set(V.MODELS) and (pooled.n > 4000).all()


# ---- inverse volatility on forecasts ---------------------------------------------------------


def hand_prices() -> S.Prices:
    dates = np.array([dt.date(2024, 1, 1) + k * DAY for k in range(3)])
    close = np.array([[100.0, 50.0, np.nan], [101.0, 49.0, np.nan], [102.0, 48.0, 10.0]])
    return S.Prices(dates, ("A", "B", "C"), close.copy(), close)


def test_inverse_vol_forecast_strategy_weights_by_the_decision_days_forecast():
    prices = hand_prices()
    d = prices.dates
    table = pd.DataFrame({"A": [0.01, np.nan, 0.02], "B": [0.02, 0.03, 0.04], "C": [0.01, 0.01, 0.0]}, index=list(d))
    strategy = S.inverse_vol_forecast_strategy(table, prices)
    # Day 0: C is not listed (no close) even with a forecast; 1/σ_A : 1/σ_B = 2 : 1.
    np.testing.assert_allclose(strategy(prices.close[:1]), [2 / 3, 1 / 3, 0.0, 0.0])
    # Day 1: no forecast for A: all in B.
    np.testing.assert_allclose(strategy(prices.close[:2]), [0.0, 1.0, 0.0, 0.0])
    # Day 2: C's forecast is 0: excluded rather than an infinite weight.
    np.testing.assert_allclose(strategy(prices.close[:3]), [2 / 3, 1 / 3, 0.0, 0.0])
    # Causal: what the table says about later days does not matter on day 0.
    later = table.copy()
    later.iloc[1:] = 99.0
    np.testing.assert_array_equal(S.inverse_vol_forecast_strategy(later, prices)(prices.close[:1]), strategy(prices.close[:1]))
    # Closes from another calendar are refused, not silently misread.
    with pytest.raises(ValueError, match="do not match"):
        strategy(prices.close[1:3])


def test_the_default_switch_is_trailing_and_leaves_the_benchmark_unchanged(bars):
    assert S.inverse_vol_estimate() == S.InverseVolEstimate("trailing", "lgbm", 7)
    prices = S.wide_prices(bars)
    configured = S.configured_inverse_volatility(prices)
    benchmark = S.benchmark_strategies(prices.symbols)["inverse_volatility"]
    for d in range(40, len(prices.dates), 97):
        np.testing.assert_array_equal(configured(prices.close[: d + 1]), benchmark(prices.close[: d + 1]))


def test_the_forecast_switch_uses_the_configured_model_and_horizon(bars, full, monkeypatch):
    monkeypatch.setattr(S, "inverse_vol_estimate", lambda: S.InverseVolEstimate("forecast", "har", 7))
    prices = S.wide_prices(bars)
    with pytest.raises(ValueError, match="no vol_forecasts"):
        S.configured_inverse_volatility(prices)
    configured = S.configured_inverse_volatility(prices, full)
    table = S.forecast_table(full, "har", 7)
    d = int(np.flatnonzero(prices.dates == dt.date(2024, 6, 30))[0])
    w = configured(prices.close[: d + 1])
    sigma = table.loc[dt.date(2024, 6, 30)].reindex(list(prices.symbols)).to_numpy()
    np.testing.assert_allclose(w[:-1], (1 / sigma) / (1 / sigma).sum(), rtol=1e-12)


def test_forecast_inverse_vol_runs_as_a_fifth_benchmark(bars, full):
    end = dt.date(2024, 12, 31)
    prices = S.wide_prices(bars, end)
    strategies = S.benchmark_strategies(prices.symbols)
    strategies["inverse_vol_forecast"] = S.inverse_vol_forecast_strategy(S.forecast_table(full, "lgbm", 7), prices)
    results = S.run_benchmarks(bars, dt.date(2024, 1, 1), end, strategies=strategies)
    assert list(results) == ["btc_buy_and_hold", "equal_weight", "inverse_volatility", "momentum_inverse_vol",
                             "inverse_vol_forecast"]
    returns = {name: np.asarray(r.period_returns) for name, r in results.items()}
    assert all(np.isfinite(v).all() and len(v) == 366 for v in returns.values())
    assert not np.allclose(returns["inverse_vol_forecast"], returns["inverse_volatility"])
    strategy = strategies["inverse_vol_forecast"]
    for d in S.decision_days(prices.dates, dt.date(2024, 1, 1), end, S.settings().rebalance_weekday):
        validate_weights(strategy(prices.close[: d + 1]), prices.open[d + 1], symbol_names=prices.symbols)
