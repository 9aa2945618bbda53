"""Volatility forecasts: fitting on train and forecasting every asset over the full history.

Times, in one process on the real embedded data, without Dagster:

(a) the baseline: ``features.vol_features`` over the full history (the forecasts' input);
(b) ``vol_forecasts.fit_models`` on train: 13 x 2 HAR regressions and 2 pooled LightGBM models;
(c) ``vol_forecasts.forecast`` of all four models, 13 assets, both horizons, over 2017-08-17..2025-12-31;
(d) the same forecasts one day at a time (each day from its 30-day look-back, as a daily
    partition is computed), over the last ``--days`` days, extrapolated to the full history.

Each step is the best of ``--runs`` runs. Goal: (b) + (c) <= 10 s, one day <= 1 s.
Run: ``python -m regime_pipeline_tests.benchmarks vol_forecasts``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import warnings

from regime_pipeline.configs import splits
from regime_pipeline.core.features import daily as F
from regime_pipeline.core.features import vol_forecasts as V
from regime_pipeline_tests.benchmarks import best_of, peak_rss_mib, print_table
from regime_pipeline_tests.conftest import embedded_daily_bars

DAY = dt.timedelta(days=1)
FIRST, END = dt.date(2017, 8, 17), dt.date(2026, 1, 1)
GOAL_FULL_S, GOAL_DAY_S = 10.0, 1.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench vol_forecasts", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per step (best is reported)")
    parser.add_argument("--days", type=int, default=30, help="days forecast one at a time in (d)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    bars = embedded_daily_bars()
    train = splits()["train"]
    train_end = train.end + DAY
    params = F.fit_garch(bars, train.start, train_end)

    feature_s, _, features = best_of(lambda: F.vol_features(bars, params, FIRST, END), args.runs)
    fit_s, _, models = best_of(lambda: V.fit_models(bars, features, train.start, train_end), args.runs)
    forecast_s, _, forecasts = best_of(lambda: V.forecast(bars, features, params, models, FIRST, END), args.runs)

    days = [END - (k + 1) * DAY for k in range(args.days)]
    slices = [(bars[(bars.date >= d - V.LOOKBACK_DAYS * DAY) & (bars.date <= d)], features[features.date == d], d) for d in days]

    def day_by_day() -> None:
        for b, f, d in slices:
            V.forecast(b, f, params, models, d, d + DAY)

    loop_s, _, _ = best_of(day_by_day, args.runs, warmup=0)
    per_day = loop_s / len(days)
    n_days = forecasts["date"].nunique()
    full_s = fit_s + forecast_s
    print_table([
        ("history", f"{n_days:,} days, {len(forecasts):,} forecast rows (asset-days x 2 horizons) x 4 models"),
        ("(a) vol_features, full history", f"{feature_s:.2f} s (baseline)"),
        ("(b) fit on train", f"{fit_s:.2f} s ({sum(models.n_rows[1].values()):,} train asset-days per horizon)"),
        ("(c) forecast, full history", f"{forecast_s:.2f} s"),
        ("(b) + (c)", f"{full_s:.2f} s = {full_s / feature_s:.1f}x the feature compute  "
                      f"goal <= {GOAL_FULL_S:.0f} s: {'PASS' if full_s <= GOAL_FULL_S else 'FAIL'}"),
        ("(d) one day at a time", f"{1000 * per_day:.1f} ms per day  goal <= {GOAL_DAY_S:.0f} s: "
                                  f"{'PASS' if per_day <= GOAL_DAY_S else 'FAIL'}; the full history so: "
                                  f"~{per_day * n_days:.0f} s, {per_day * n_days / forecast_s:.0f}x the batch"),
        ("peak RSS", f"{peak_rss_mib():,.0f} MiB"),
    ])
    return 0 if full_s <= GOAL_FULL_S and per_day <= GOAL_DAY_S else 1
