"""Features: no look-ahead, batch == single day, masking, bad input, and hand-checked values.

Real data is the embedded Binance daily klines; the hand checks recompute every feature
with plain Python loops (math, lists) on small synthetic series, never with the module's helpers.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from arch import arch_model

from regime_pipeline.configs import load_yaml, universe
from regime_pipeline.core.features import daily as F
from regime_pipeline.core.data.bars import DAILY_BAR_COLUMNS
from regime_pipeline.core.features.daily import GarchParams, cross_features, fit_garch, trend_features, vol_features
from regime_pipeline_tests.conftest import train_window

DAY = dt.timedelta(days=1)
FIRST, END = dt.date(2017, 8, 17), dt.date(2026, 1, 1)
YEAR = 365


def all_features(bars: pd.DataFrame, params, start: dt.date, end: dt.date) -> dict[str, pd.DataFrame]:
    return {
        "vol": vol_features(bars, params, start, end),
        "trend": trend_features(bars, start, end),
        "cross": cross_features(bars, start, end),
    }


@pytest.fixture(scope="module")
def full(bars, params) -> dict[str, pd.DataFrame]:
    return all_features(bars, params, FIRST, END)


def synthetic(
    closes: dict[str, list[float]], first: dt.date, seed: int = 0, listed: dict[str, int] | None = None
) -> pd.DataFrame:
    """Daily bars from closes; open = previous close, high/low a random range around them.

    `listed[symbol]` = index of the symbol's first day (its closes start there).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for symbol, series in closes.items():
        offset = (listed or {}).get(symbol, 0)
        prev = series[0]
        for i, close in enumerate(series):
            o = prev
            if len(set(series)) == 1:
                high = low = close  # a constant price: no range either
            else:
                high = max(o, close) * (1 + 0.02 * rng.random())
                low = min(o, close) * (1 - 0.02 * rng.random())
            rows.append(
                {
                    "date": first + (offset + i) * DAY,
                    "symbol": symbol,
                    "open": o,
                    "high": high,
                    "low": low,
                    "close": close,
                    "volume": float(rng.uniform(100, 1000)) if len(set(series)) > 1 else 500.0,
                }
            )
            prev = close
    frame = pd.DataFrame(rows).assign(source="klines", n_minutes=pd.array([pd.NA] * len(rows), dtype="Int32"))
    return frame[DAILY_BAR_COLUMNS].sort_values(["date", "symbol"]).reset_index(drop=True)


def random_walk(n: int, seed: int, start: float = 100.0, vol: float = 0.04) -> list[float]:
    rng = np.random.default_rng(seed)
    steps = rng.standard_t(4, size=n) * vol
    return [start * math.exp(s) for s in np.cumsum(steps)]


# ---- plain reference formulas (independent of the module) ------------------------------


def ref_mean(xs):
    return sum(xs) / len(xs)


def ref_std(xs):
    m = ref_mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def ref_skew(xs):
    n, m = len(xs), ref_mean(xs)
    m2 = sum((x - m) ** 2 for x in xs) / n
    m3 = sum((x - m) ** 3 for x in xs) / n
    return 0.0 if m2 == 0 else m3 / m2**1.5 * math.sqrt(n * (n - 1)) / (n - 2)


def ref_signed_r2(ys):
    """sign(slope) * R^2 of an OLS line through (0, y0), (1, y1), ..."""
    n = len(ys)
    ts = list(range(n))
    tm, ym = ref_mean(ts), ref_mean(ys)
    stt = sum((t - tm) ** 2 for t in ts)
    sty = sum((t - tm) * (y - ym) for t, y in zip(ts, ys))
    slope = sty / stt
    intercept = ym - slope * tm
    ss_tot = sum((y - ym) ** 2 for y in ys)
    if ss_tot == 0:
        return 0.0
    ss_res = sum((y - intercept - slope * t) ** 2 for t, y in zip(ts, ys))
    return math.copysign(1 - ss_res / ss_tot, slope)


def ref_corr(xs, ys):
    mx, my = ref_mean(xs), ref_mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return 0.0 if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def ref_garch_var(returns, p: GarchParams, start_var: float) -> float:
    """sigma2 after a plain loop over `returns`: the forecast for the day after the last one."""
    s = start_var
    for r in returns:
        e = r - p.mu
        s = p.omega + p.alpha * e**2 + p.beta * s
    return s


def per_symbol(frame: pd.DataFrame, symbol: str) -> dict[str, list]:
    one = frame[frame.symbol == symbol].sort_values("date")
    return {c: one[c].tolist() for c in one.columns}


close_to = dict(rel=1e-10, abs=1e-12)


# ---- config ----------------------------------------------------------------------------


def test_config_documents_every_feature_and_the_lookback():
    config = load_yaml("features")
    for group, columns in (("vol", F.VOL_COLUMNS), ("trend", F.TREND_COLUMNS), ("cross", F.CROSS_COLUMNS)):
        assert set(config[group]["features"]) == set(columns), group
        for name in columns:
            entry = config[group]["features"][name]
            assert entry["description"] and entry["unit"], name
        assert F.MIN_HISTORY_DAYS[group] == config[group]["min_history_days"]
    assert F.MIN_HISTORY_DAYS == {"vol": F.GARCH_RET + 1, "trend": 51, "cross": 60}
    assert F.LOOKBACK_DAYS == max(F.MIN_HISTORY_DAYS.values()) + config["lookback_margin_days"]
    start, end = dt.date(2024, 1, 1), dt.date(2024, 2, 1)
    assert F.bars_window(start, end) == (start - F.LOOKBACK, end)


# ---- contract on real data ---------------------------------------------------------------


def test_output_contract_on_the_full_history(full):
    for group, columns in (("vol", F.VOL_COLUMNS), ("trend", F.TREND_COLUMNS)):
        frame = full[group]
        assert list(frame.columns) == ["date", "symbol", *columns]
        assert all(frame[c].dtype == "float64" for c in columns)
        assert isinstance(frame["date"].iloc[0], dt.date) and not isinstance(frame["date"].iloc[0], dt.datetime)
        keys = list(zip(frame["date"], frame["symbol"]))
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert np.isfinite(frame[columns].to_numpy()).all()
    cross = full["cross"]
    assert list(cross.columns) == ["date", *F.CROSS_COLUMNS]
    assert cross["n_assets"].dtype == "int64"
    assert cross["date"].is_monotonic_increasing and cross["date"].is_unique
    assert np.isfinite(cross[F.CROSS_COLUMNS].to_numpy(dtype=float)).all()
    assert cross["n_assets"].between(2, 13).all() and cross["n_assets"].iloc[-1] == 13
    assert cross["avg_pairwise_corr"].between(-1, 1).all() and cross["btc_dominance"].between(0, 1).all()
    assert full["trend"]["trend_strength"].between(-1, 1).all()


def test_late_listings_are_masked_until_the_group_history_is_full(full):
    for symbol in universe().candidates:
        listed = max(universe()[symbol].listed, FIRST)
        assert min(per_symbol(full["vol"], symbol)["date"]) == listed + (F.MIN_HISTORY_DAYS["vol"] - 1) * DAY
        assert min(per_symbol(full["trend"], symbol)["date"]) == listed + (F.MIN_HISTORY_DAYS["trend"] - 1) * DAY
    cross = full["cross"].set_index("date")["n_assets"]
    assert cross.index[0] == FIRST + 59 * DAY and cross.iloc[0] == 2  # BTC + ETH
    avax_in = dt.date(2020, 9, 22) + 59 * DAY
    assert cross[avax_in] == 13 and cross[avax_in - DAY] == 12


def test_a_missing_day_masks_the_windows_that_touch_it(bars, params, full):
    gap = dt.date(2022, 6, 15)
    holed = bars[~((bars.symbol == "ETHUSDT") & (bars.date == gap))]
    start, end = dt.date(2022, 1, 1), dt.date(2023, 3, 1)
    lo, _ = F.bars_window(start, end)
    holed = holed[(holed.date >= lo) & (holed.date < end)]
    got = all_features(holed, params, start, end)
    for group in ("vol", "trend"):
        eth = set(per_symbol(got[group], "ETHUSDT")["date"])
        need = F.MIN_HISTORY_DAYS[group]
        masked = {gap + k * DAY for k in range(need)}
        assert not eth & masked and gap - DAY in eth and gap + need * DAY in eth, group
        others = got[group][got[group].symbol != "ETHUSDT"].reset_index(drop=True)
        ref = full[group]
        ref = ref[(ref.date >= start) & (ref.date < end) & (ref.symbol != "ETHUSDT")].reset_index(drop=True)
        pd.testing.assert_frame_equal(others, ref, check_exact=True)
    n = got["cross"].set_index("date")["n_assets"]
    assert n[gap - DAY] == 13 and n[gap] == 12 and n[gap + 59 * DAY] == 12 and n[gap + 60 * DAY] == 13


# ---- no look-ahead, batch == single day --------------------------------------------------


@pytest.mark.parametrize("cutoff", [dt.date(2020, 9, 30), dt.date(2023, 6, 14)])
def test_no_lookahead_perturbing_the_future_changes_nothing_up_to_the_cutoff(bars, params, full, cutoff):
    rng = np.random.default_rng(cutoff.toordinal())
    future = (bars.date > cutoff).to_numpy()
    n = int(future.sum())
    perturbed = bars.copy()
    scale = rng.uniform(0.5, 2.0, n)
    for column in ("open", "close"):
        perturbed.loc[future, column] *= scale
    perturbed.loc[future, "high"] = perturbed.loc[future, ["open", "close"]].max(axis=1) * rng.uniform(1.0, 1.2, n)
    perturbed.loc[future, "low"] = perturbed.loc[future, ["open", "close"]].min(axis=1) * rng.uniform(0.8, 1.0, n)
    perturbed.loc[future, "volume"] *= rng.uniform(0.1, 10.0, n)
    # And some future bars disappear altogether.
    perturbed = perturbed[~(future & (rng.random(len(bars)) < 0.05))]

    got = all_features(perturbed, params, FIRST, END)
    for group, frame in got.items():
        before = frame[frame.date <= cutoff].reset_index(drop=True)
        ref = full[group][full[group].date <= cutoff].reset_index(drop=True)
        assert len(before) > 100
        pd.testing.assert_frame_equal(before, ref, check_exact=True, obj=group)
        after = frame[frame.date == cutoff + 30 * DAY].reset_index(drop=True)
        ref_after = full[group][full[group].date == cutoff + 30 * DAY].reset_index(drop=True)
        assert not after.equals(ref_after), group  # and the perturbation did reach the features


SINGLE_DAYS = [
    dt.date(2017, 10, 15),  # the first cross row (BTC and ETH)
    dt.date(2018, 1, 1),
    dt.date(2018, 2, 13),  # BTC's first vol row
    dt.date(2020, 9, 29),  # SOL's first trend row
    dt.date(2021, 2, 7),  # SOL's first vol row
    dt.date(2023, 1, 1),
    dt.date(2024, 1, 1),
    dt.date(2025, 1, 1),
    dt.date(2025, 10, 10),  # the October 2025 crash
    dt.date(2025, 12, 31),
]


def test_a_single_day_equals_the_batch_bit_for_bit(bars, params, full):
    for day in SINGLE_DAYS:
        lo, hi = F.bars_window(day, day + DAY)
        window = bars[(bars.date >= lo) & (bars.date < hi)]
        got = all_features(window, params, day, hi)
        for group, frame in got.items():
            ref = full[group][full[group].date == day].reset_index(drop=True)
            assert len(frame) == len(ref), (day, group)
            assert group == "vol" and day < dt.date(2018, 2, 13) or len(ref) > 0, (day, group)
            pd.testing.assert_frame_equal(frame, ref, check_exact=True, obj=f"{group} {day}")


def test_a_month_batch_with_its_lookback_equals_the_full_batch(bars, params, full):
    start, end = dt.date(2023, 2, 1), dt.date(2023, 3, 1)
    lo, _ = F.bars_window(start, end)
    got = all_features(bars[(bars.date >= lo) & (bars.date < end)], params, start, end)
    for group, frame in got.items():
        ref = full[group][(full[group].date >= start) & (full[group].date < end)].reset_index(drop=True)
        pd.testing.assert_frame_equal(frame, ref, check_exact=True)


# ---- bad input -------------------------------------------------------------------------


def test_nan_inf_non_positive_and_duplicate_bars_are_refused_naming_symbol_and_dates(bars, params):
    start, end = dt.date(2022, 1, 1), dt.date(2022, 2, 1)
    lo, _ = F.bars_window(start, end)
    window = bars[(bars.date >= lo) & (bars.date < end)].reset_index(drop=True)
    bad_days = [dt.date(2022, 1, 5), dt.date(2022, 1, 9)]

    nan = window.copy()
    nan.loc[(nan.symbol == "ETHUSDT") & nan.date.isin(bad_days), "close"] = np.nan
    for call in (
        lambda b: vol_features(b, params, start, end),
        lambda b: trend_features(b, start, end),
        lambda b: cross_features(b, start, end),
        lambda b: fit_garch(b, lo, end),
    ):
        with pytest.raises(ValueError, match=r"ETHUSDT on 2022-01-05, 2022-01-09") as info:
            call(nan)
        assert "close" in str(info.value)

    inf = window.copy()
    inf.loc[(inf.symbol == "SOLUSDT") & (inf.date == bad_days[0]), "volume"] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite.*SOLUSDT on 2022-01-05"):
        trend_features(inf, start, end)
    zero = window.copy()
    zero.loc[(zero.symbol == "XRPUSDT") & (zero.date == bad_days[1]), "low"] = 0.0
    with pytest.raises(ValueError, match=r"non-positive price for XRPUSDT on 2022-01-09"):
        vol_features(zero, params, start, end)
    dup = pd.concat([window, window.iloc[[3]]])
    with pytest.raises(ValueError, match="duplicate"):
        cross_features(dup, start, end)
    with pytest.raises(ValueError, match=r"no GARCH parameters for \['BTCUSDT'\]"):
        vol_features(window, {k: v for k, v in params.items() if k != "BTCUSDT"}, start, end)
    with pytest.raises(ValueError, match="BTCUSDT"):
        cross_features(window[window.symbol != "BTCUSDT"], start, end)
    with pytest.raises(ValueError, match="empty date range"):
        trend_features(window, end, start)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_non_finite_result_is_refused_naming_the_feature():
    closes = {"BTCUSDT": random_walk(80, 1), "ETHUSDT": random_walk(80, 2)}
    frame = synthetic(closes, dt.date(2024, 1, 1))
    frame.loc[frame.symbol == "BTCUSDT", "volume"] = 1e308  # volume * close and 7-day sums overflow
    with pytest.raises(ValueError, match="btc_dominance"):
        cross_features(frame, dt.date(2024, 1, 1), dt.date(2024, 4, 1))
    with pytest.raises(ValueError, match="volume_trend"):
        trend_features(frame, dt.date(2024, 1, 1), dt.date(2024, 4, 1))


def test_too_little_history_gives_no_rows_not_nan_rows(params):
    frame = synthetic({"BTCUSDT": random_walk(45, 1), "ETHUSDT": random_walk(45, 2)}, dt.date(2024, 1, 1))
    start, end = dt.date(2024, 1, 1), dt.date(2024, 3, 1)
    vol = vol_features(frame, params, start, end)
    trend = trend_features(frame, start, end)
    cross = cross_features(frame, start, end)
    assert vol.empty and trend.empty and cross.empty
    assert list(vol.columns) == ["date", "symbol", *F.VOL_COLUMNS] and (vol.dtypes[F.VOL_COLUMNS] == "float64").all()
    assert list(cross.columns) == ["date", *F.CROSS_COLUMNS] and cross["n_assets"].dtype == "int64"
    # One day short of a trend window, then exactly enough.
    assert trend_features(frame, start, end).empty
    longer = synthetic({"BTCUSDT": random_walk(51, 1)}, dt.date(2024, 1, 1))
    assert trend_features(longer, start, end)["date"].tolist() == [dt.date(2024, 2, 20)]
    assert vol_features(frame.iloc[:0], params, start, end).empty


def test_a_constant_price_gives_the_documented_values():
    n = 200
    walk = random_walk(n, 3)
    frame = synthetic({"BTCUSDT": [100.0] * n, "ETHUSDT": walk, "XRPUSDT": [0.5] * n}, dt.date(2024, 1, 1))
    start, end = dt.date(2024, 1, 1), dt.date(2025, 1, 1)
    p = GarchParams(mu=0.001, omega=2e-5, alpha=0.1, beta=0.85)
    vol = vol_features(frame, dict.fromkeys(["BTCUSDT", "ETHUSDT", "XRPUSDT"], p), start, end)
    const = vol[vol.symbol != "ETHUSDT"]
    assert len(const) == 2 * (n - 180)
    assert (const[["realized_vol_20d", "har_daily", "har_weekly"]] == 0).all().all()
    assert (const["vol_ratio"] == 1).all()
    # eps = -mu every day: the filter sits at its level, not at 0.
    expected = math.sqrt(YEAR * ref_garch_var([0.0] * 180, p, p.omega / (1 - p.alpha - p.beta)))
    assert const["garch_sigma"].to_numpy() == pytest.approx(expected, rel=1e-12)

    trend = trend_features(frame, start, end)
    const = trend[trend.symbol != "ETHUSDT"]
    assert (const[F.TREND_COLUMNS] == 0).all().all()

    cross = cross_features(frame, start, end)
    assert (cross["n_assets"] == 3).all() and (cross["avg_pairwise_corr"] == 0).all()
    assert (cross["corr_stability"] == 1).all()
    eth_vol = per_symbol(vol, "ETHUSDT")
    last = cross.iloc[-1]
    assert last["vol_dispersion"] == pytest.approx(ref_std([0.0, eth_vol["realized_vol_20d"][-1], 0.0]), **close_to)


# ---- hand-checked values on synthetic series ---------------------------------------------


def test_vol_features_equal_plain_loops():
    n, first = 215, dt.date(2023, 1, 1)
    closes = {"BTCUSDT": random_walk(n, 11), "ETHUSDT": random_walk(n - 5, 12, start=3.0, vol=0.06)}
    frame = synthetic(closes, first, listed={"ETHUSDT": 5})
    params = {
        "BTCUSDT": GarchParams(mu=0.0005, omega=2e-5, alpha=0.08, beta=0.9),
        "ETHUSDT": GarchParams(mu=-0.001, omega=5e-5, alpha=0.2, beta=0.8, var0=0.002),  # integrated: starts at var0
    }
    got = vol_features(frame, params, first, first + n * DAY)
    assert set(got.symbol) == {"BTCUSDT", "ETHUSDT"}
    for symbol, p in params.items():
        bars = frame[frame.symbol == symbol].reset_index(drop=True)
        c, h, lo = bars["close"].tolist(), bars["high"].tolist(), bars["low"].tolist()
        r = [None] + [math.log(c[i] / c[i - 1]) for i in range(1, len(c))]
        rv = [math.log(h[i] / lo[i]) ** 2 / (4 * math.log(2)) for i in range(len(c))]
        start_var = p.var0 if p.alpha + p.beta >= 0.999 else p.omega / (1 - p.alpha - p.beta)
        rows = per_symbol(got, symbol)
        assert rows["date"] == bars["date"].tolist()[180:]
        for k, i in enumerate(range(180, len(c))):
            realized = ref_std(r[i - 19 : i + 1]) * math.sqrt(YEAR)
            assert rows["realized_vol_20d"][k] == pytest.approx(realized, **close_to)
            garch = math.sqrt(YEAR * ref_garch_var(r[i - 179 : i + 1], p, start_var))
            assert rows["garch_sigma"][k] == pytest.approx(garch, rel=1e-12)
            assert rows["har_daily"][k] == pytest.approx(math.sqrt(YEAR * rv[i]), **close_to)
            assert rows["har_weekly"][k] == pytest.approx(math.sqrt(YEAR * ref_mean(rv[i - 6 : i + 1])), **close_to)
            ratio = ref_std(r[i - 6 : i + 1]) / ref_std(r[i - 29 : i + 1])
            assert rows["vol_ratio"][k] == pytest.approx(ratio, **close_to)


def test_trend_features_equal_plain_loops():
    n, first = 60, dt.date(2024, 3, 1)
    frame = synthetic({"ETHUSDT": random_walk(n, 21), "SOLUSDT": random_walk(n, 22, start=20.0)}, first, seed=5)
    got = trend_features(frame, first, first + n * DAY)
    for symbol in ("ETHUSDT", "SOLUSDT"):
        bars = frame[frame.symbol == symbol].reset_index(drop=True)
        c, v = bars["close"].tolist(), bars["volume"].tolist()
        r = [None] + [math.log(c[i] / c[i - 1]) for i in range(1, n)]
        rows = per_symbol(got, symbol)
        assert rows["date"] == bars["date"].tolist()[50:]
        for k, i in enumerate(range(50, n)):
            last20 = c[i - 19 : i + 1]
            assert rows["rate_of_change"][k] == pytest.approx(c[i] / c[i - 10] - 1, **close_to)
            assert rows["close_normalized"][k] == pytest.approx((c[i] - ref_mean(last20)) / ref_std(last20), rel=1e-9)
            assert rows["momentum_50d"][k] == pytest.approx(c[i] / c[i - 50] - 1, **close_to)
            assert rows["return_skewness_30d"][k] == pytest.approx(ref_skew(r[i - 29 : i + 1]), rel=1e-9)
            ys = [math.log(x) for x in c[i - 29 : i + 1]]
            assert rows["trend_strength"][k] == pytest.approx(ref_signed_r2(ys), rel=1e-9, abs=1e-12)
            volume_trend = ref_mean(v[i - 6 : i + 1]) / ref_mean(v[i - 29 : i + 1]) - 1
            assert rows["volume_trend"][k] == pytest.approx(volume_trend, **close_to)


def test_skewness_matches_pandas_on_real_returns(bars):
    btc = bars[bars.symbol == "BTCUSDT"].reset_index(drop=True)
    got = trend_features(btc, dt.date(2024, 1, 1), dt.date(2024, 2, 1))
    r = np.log(btc["close"] / btc["close"].shift(1))
    expected = r.rolling(30).skew().set_axis(btc["date"]).loc[got["date"]]
    assert got["return_skewness_30d"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-8)


def test_cross_features_equal_plain_loops():
    n, first = 100, dt.date(2024, 1, 1)
    closes = {
        "BTCUSDT": random_walk(n, 31),
        "ETHUSDT": random_walk(n, 32, start=10.0),
        "SOLUSDT": random_walk(n - 20, 33, start=5.0, vol=0.08),  # listed 20 days later
    }
    frame = synthetic(closes, first, seed=9, listed={"SOLUSDT": 20})
    got = cross_features(frame, first, first + n * DAY).set_index("date")
    wide = {s: frame[frame.symbol == s].set_index("date") for s in closes}
    days = [first + i * DAY for i in range(n)]

    def returns(symbol, day, count):
        c = wide[symbol]["close"]
        return [math.log(c[day - (k - 1) * DAY] / c[day - k * DAY]) for k in range(count, 0, -1)]

    assert got.index[0] == first + 59 * DAY
    for day in days[59:]:
        eligible = [s for s in closes if all((day - k * DAY) in wide[s].index for k in range(60))]
        row = got.loc[day]
        assert row["n_assets"] == len(eligible) == (3 if day >= first + 79 * DAY else 2)
        pairs = [(a, b) for i, a in enumerate(eligible) for b in eligible[i + 1 :]]

        def avg_corr(on):
            return ref_mean([ref_corr(returns(a, on, 30), returns(b, on, 30)) for a, b in pairs])

        assert row["avg_pairwise_corr"] == pytest.approx(avg_corr(day), **close_to)
        series = [avg_corr(day - k * DAY) for k in range(30)]
        assert row["corr_stability"] == pytest.approx(1 - ref_std(series), **close_to)
        week = [day - k * DAY for k in range(7)]
        qv = {s: sum(wide[s]["volume"][d] * wide[s]["close"][d] for d in week) for s in eligible}
        assert row["btc_dominance"] == pytest.approx(qv["BTCUSDT"] / sum(qv.values()), **close_to)
        rv = [ref_std(returns(s, day, 20)) * math.sqrt(YEAR) for s in eligible]
        assert row["vol_dispersion"] == pytest.approx(ref_std(rv), **close_to)


# ---- GARCH against arch ------------------------------------------------------------------


def train_returns(bars: pd.DataFrame, symbol: str) -> pd.Series:
    start, end = train_window()
    c = bars[bars.symbol == symbol].set_index("date")["close"]
    r = np.log(c / c.shift(1)).dropna()
    return r[(r.index >= start) & (r.index < end)]


def test_fit_garch_equals_arch_in_return_units(bars, params):
    assert set(params) == set(universe().candidates)
    for symbol in ("BTCUSDT", "SOLUSDT"):
        r = train_returns(bars, symbol)
        assert len(r) >= 800
        res = arch_model(100 * r.to_numpy(), mean="Constant", vol="GARCH", p=1, q=1, dist="normal").fit(disp="off")
        p = params[symbol]
        assert p.mu == pytest.approx(res.params["mu"] / 100, rel=1e-9)
        assert p.omega == pytest.approx(res.params["omega"] / 1e4, rel=1e-9)
        assert p.alpha == pytest.approx(res.params["alpha[1]"], rel=1e-9)
        assert p.beta == pytest.approx(res.params["beta[1]"], rel=1e-9)
        assert p.var0 == pytest.approx(float(np.mean((r.to_numpy() - p.mu) ** 2)), rel=1e-12)
    for symbol in universe().candidates:
        assert len(train_returns(bars, symbol)) >= 800, symbol
    assert GarchParams.from_dict(params["BTCUSDT"].to_dict()) == params["BTCUSDT"]


def test_windowed_garch_equals_arch_filter_after_burn_in(bars, params):
    p = params["BTCUSDT"]
    btc = bars[bars.symbol == "BTCUSDT"].reset_index(drop=True)
    r = np.log(btc["close"] / btc["close"].shift(1)).to_numpy()[1:]
    fixed = arch_model(100 * r, mean="Constant", vol="GARCH", p=1, q=1, dist="normal").fix(
        [100 * p.mu, 1e4 * p.omega, p.alpha, p.beta]
    )
    # arch's sigma_t uses returns up to t-1: it is our forecast made at the close of t-1.
    arch_sigma = fixed.conditional_volatility[1:] / 100 * math.sqrt(YEAR)
    forecast_day = btc["date"].to_numpy()[1:-1]
    got = vol_features(btc, {"BTCUSDT": p}, FIRST, END).set_index("date")["garch_sigma"]
    burn_in = 400
    compare = pd.Series(arch_sigma, index=forecast_day).iloc[burn_in:]
    np.testing.assert_allclose(got.loc[compare.index].to_numpy(), compare.to_numpy(), rtol=1e-6)
    # and the last day's forecast is arch's one-step forecast from the full sample
    last = math.sqrt(fixed.forecast(horizon=1, reindex=False).variance.iloc[-1, 0] / 1e4 * YEAR)
    assert got.iloc[-1] == pytest.approx(last, rel=1e-6)


def test_fit_garch_refuses_an_asset_with_too_few_returns(bars):
    window = bars[bars.symbol.isin(["BTCUSDT", "AVAXUSDT"])]
    with pytest.raises(ValueError, match=r"AVAXUSDT has 100 log returns in \[2020-09-23, 2021-01-01\)"):
        fit_garch(window[window.date >= dt.date(2020, 6, 1)], dt.date(2020, 9, 23), dt.date(2021, 1, 1))


def test_garch_params_validate():
    with pytest.raises(ValueError, match="need var0"):
        GarchParams(mu=0.0, omega=1e-5, alpha=0.1, beta=0.9)
    with pytest.raises(ValueError, match="omega > 0"):
        GarchParams(mu=0.0, omega=0.0, alpha=0.1, beta=0.8)
    integrated = GarchParams(mu=0.0, omega=1e-5, alpha=0.1, beta=0.9, var0=4e-4)
    assert integrated.start_variance == 4e-4
    assert GarchParams(mu=0.0, omega=1e-5, alpha=0.1, beta=0.8).start_variance == pytest.approx(1e-4)
