"""The point-in-time universe's cost: 31 candidates instead of 13 assets.

Times, in one process on the real embedded data, without Dagster, each stage on the fixed 13
(the baseline) and on every candidate of the point-in-time universe, and prints the ratio:

(a) the `universe` membership over the full history;
(b) the three feature groups over the full history (vol with train-fitted GARCH, trend, cross on
    the members of each day);
(c) the backtest of the four benchmarks over 2018-2025.

Also counts the rows each stage produces and the member asset-days the regime stages and the
detectors read. Each step is the best of ``--runs`` runs. Goal: features (b) at most 3x the fixed
universe's (31 / 13 = 2.4x the assets).
Run: ``python -m regime_pipeline_tests.benchmarks universe``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import warnings

from regime_pipeline.configs import history_start, load_yaml, splits
from regime_pipeline.core.allocation.strategies import benchmark_results, wide_prices
from regime_pipeline.core.data import universe as pit
from regime_pipeline.core.features import daily as F
from regime_pipeline_tests.benchmarks import best_of, print_table
from regime_pipeline_tests.conftest import embedded_daily_bars, embedded_daily_closes, universe_mode

DAY = dt.timedelta(days=1)
END = dt.date(2026, 1, 1)
GOAL_RATIO = 3.0


def _stages(mode: str, runs: int) -> dict[str, tuple[float, int]]:
    """{stage: (best seconds, rows)} on the universe of `mode`."""
    with universe_mode(mode) as config:
        bars = embedded_daily_bars(config.candidates)
        weekday = int(load_yaml("backtest")["rebalance_weekday"])
        member_s, _, rows = best_of(lambda: pit.membership(bars, history_start(), END, config, weekday), runs)
        members = pit.members_by_day(rows)
        train = splits()["train"]
        params, _ = F.fit_garch_pooled(bars, train.start, train.end + DAY, config.candidates)

        def features():
            return (F.vol_features(bars, params, history_start(), END), F.trend_features(bars, history_start(), END),
                    F.cross_features(bars, history_start(), END, members))

        feature_s, _, (vol, trend, cross) = best_of(features, runs)
        prices = wide_prices(bars, closes=embedded_daily_closes(), universe_rows=rows)
        backtest_s, _, _ = best_of(lambda: benchmark_results(prices, dt.date(2018, 1, 1), dt.date(2025, 12, 31)), runs)
        on_members = vol.merge(members, on=["date", "symbol"])
        return {"universe": (member_s, len(rows)), "features": (feature_s, len(vol) + len(trend) + len(cross)),
                "benchmarks": (backtest_s, 0), "member asset-days with vol features": (0.0, len(on_members))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench universe", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="timed runs per step (best is reported)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    fixed = _stages("fixed", args.runs)
    point = _stages("point_in_time", args.runs)
    rows = []
    for stage in fixed:
        (fs, fr), (ps, pr) = fixed[stage], point[stage]
        time = f"{fs:.2f} s -> {ps:.2f} s ({ps / fs:.2f}x)" if fs > 0 else "-"
        rows.append((stage, f"{time}; rows {fr:,} -> {pr:,} ({pr / max(fr, 1):.2f}x)"))
    ratio = point["features"][0] / fixed["features"][0]
    rows.append(("features goal", f"<= {GOAL_RATIO:.0f}x: {'PASS' if ratio <= GOAL_RATIO else 'FAIL'}"))
    print_table(rows)
    return 0 if ratio <= GOAL_RATIO else 1
