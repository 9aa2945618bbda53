"""Feature assets: all 3,059 daily partitions in one run, and one new day alone.

Times, in one process on the real embedded data:

(a) the baseline: the three ``core.features.daily`` functions over the full history, no Dagster;
(b) one new day's partition (2025-12-31) of vol/trend/cross features materialized alone,
    reading its look-back from the warehouse;
(c) every partition 2017-08-17..2025-12-31 materialized in one run (a single-run backfill).

(b) and (c) run against an on-disk SQLite Dagster instance, as `make ui` and `make run` use,
so they include Dagster's per-partition bookkeeping (two events per partition per asset).
Goal: (c) <= 60 s, (b) <= 5 s. Peak memory is the process's peak RSS after each step.
Run: ``python -m regime_pipeline_tests.benchmarks features``.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.configs import splits
from regime_pipeline.core.features import daily as F
from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline_tests.benchmarks import cpu_seconds, peak_rss_mib, print_table
from regime_pipeline_tests.conftest import embedded_daily_bars, write_table

FIRST, LAST = dt.date(2017, 8, 17), dt.date(2025, 12, 31)
GOAL_FULL_S, GOAL_DAY_S = 60.0, 5.0
FEATURES = ["vol_features", "trend_features", "cross_features"]


def _materialize(resources, instance, first: dt.date, last: dt.date) -> float:
    began = time.perf_counter()
    result = dg.materialize(
        all_assets, selection=FEATURES, resources=resources, instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: first.isoformat(), ASSET_PARTITION_RANGE_END_TAG: last.isoformat()},
    )
    assert result.success
    return time.perf_counter() - began


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore")
    bars = embedded_daily_bars()
    train = splits()["train"]
    params = F.fit_garch(bars, train.start, train.end + dt.timedelta(days=1))
    end = LAST + dt.timedelta(days=1)

    began, cpu = time.perf_counter(), cpu_seconds()
    F.vol_features(bars, params, FIRST, end), F.trend_features(bars, FIRST, end), F.cross_features(bars, FIRST, end)
    core_s, core_cpu = time.perf_counter() - began, cpu_seconds() - cpu
    rss_core = peak_rss_mib()

    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        write_table(str(data_dir / "warehouse.duckdb"), "daily_bars", bars)
        (data_dir / "models").mkdir()
        (data_dir / "models" / "garch_params.json").write_text(json.dumps({s: p.to_dict() for s, p in params.items()}))
        resources = build_resources(str(data_dir), MarketData(source="embedded"))
        (Path(tmp) / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(Path(tmp) / "dagster")) as instance:
            day_s = _materialize(resources, instance, LAST, LAST)
            rss_day = peak_rss_mib()
            full_s = _materialize(resources, instance, FIRST, LAST)
            rss_full = peak_rss_mib()

    n_partitions = (end - FIRST).days
    print_table([
        ("partitions", f"{n_partitions:,} days x 3 assets"),
        ("core compute, full range", f"{core_s:.2f} s ({core_cpu:.2f} CPU-s), peak RSS {rss_core:,.0f} MiB"),
        ("one day, materialized", f"{day_s:.2f} s, peak RSS {rss_day:,.0f} MiB  goal <= {GOAL_DAY_S:.0f} s: {'PASS' if day_s <= GOAL_DAY_S else 'FAIL'}"),
        ("full range, one run", f"{full_s:.1f} s, peak RSS {rss_full:,.0f} MiB  goal <= {GOAL_FULL_S:.0f} s: {'PASS' if full_s <= GOAL_FULL_S else 'FAIL'}"),
        ("full run / core compute", f"{full_s / core_s:.0f}x (Dagster bookkeeping: {1000 * (full_s - core_s) / (3 * n_partitions):.1f} ms per asset-partition)"),
    ])
    return 0 if day_s <= GOAL_DAY_S and full_s <= GOAL_FULL_S else 1
