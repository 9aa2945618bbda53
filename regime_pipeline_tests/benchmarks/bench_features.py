"""Feature assets: all 3,059 daily partitions in one run, one new day alone, and Dagster's
bookkeeping per asset-partition on the stock and the project's event log storage.

Times, in one process on the real embedded data:

(a) the baseline: the three ``core.features.daily`` functions over the full history, no Dagster;
(b) one new day's partition (2025-12-31) of vol/trend/cross features materialized alone,
    reading its look-back from the warehouse;
(c) every partition 2017-08-17..2025-12-31 materialized in one run (a single-run backfill);
(d) the last ``--stock-days`` days (default 365) materialized in one run on Dagster's stock SQLite
    storage and on the project's (``dagster.yaml``: the batching event log), each on an on-disk
    instance of its own. Bookkeeping per asset-partition = (run time - the core functions' time
    over the same days) / (3 x days): everything Dagster adds, the IO manager's DuckDB writes
    included, so the batching figure is an upper bound. Bytes: the event log databases' size.

Every run keeps Dagster's console logger quiet, as `regime-pipeline run` does (the events are
stored all the same). (b) and (c) run on the project's storage. Goals: (c) <= 30 s, (b) <= 5 s, (d) >= 10x fewer ms.
Peak memory is the process's peak RSS after each step.
Run: ``python -m regime_pipeline_tests.benchmarks features [--stock-days N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.cli import QUIET_CONSOLE
from regime_pipeline.configs import splits
from regime_pipeline.core.features import daily as F
from regime_pipeline.definitions import all_assets
from regime_pipeline.instance.event_log import BATCH_SIZE_ENV
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline_tests.benchmarks import cpu_seconds, peak_rss_mib, print_table
from regime_pipeline_tests.conftest import embedded_daily_bars, write_instance_yaml, write_table

FIRST, LAST = dt.date(2017, 8, 17), dt.date(2025, 12, 31)
GOAL_FULL_S, GOAL_DAY_S, GOAL_RATIO = 30.0, 5.0, 10.0
FEATURES = ["vol_features", "trend_features", "cross_features"]


def _materialize(resources, instance, first: dt.date, last: dt.date) -> float:
    began = time.perf_counter()
    result = dg.materialize(
        all_assets, selection=FEATURES, resources=resources, instance=instance, run_config=QUIET_CONSOLE,
        tags={ASSET_PARTITION_RANGE_START_TAG: first.isoformat(), ASSET_PARTITION_RANGE_END_TAG: last.isoformat()},
    )
    assert result.success
    return time.perf_counter() - began


def _core(bars, params, first: dt.date, last: dt.date) -> float:
    began, end = time.perf_counter(), last + dt.timedelta(days=1)
    F.vol_features(bars, params, first, end), F.trend_features(bars, first, end), F.cross_features(bars, first, end)
    return time.perf_counter() - began


def _event_log_bytes(home: Path) -> int:
    return sum(f.stat().st_size for f in (home / "storage" / "history" / "runs").iterdir() if f.is_file())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="features")
    parser.add_argument("--stock-days", type=int, default=365, help="days materialized on each storage for (d)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    bars = embedded_daily_bars()
    train = splits()["train"]
    params = F.fit_garch(bars, train.start, train.end + dt.timedelta(days=1))
    compare_first = LAST - dt.timedelta(days=args.stock_days - 1)

    cpu = cpu_seconds()
    core_s = _core(bars, params, FIRST, LAST)
    core_cpu = cpu_seconds() - cpu
    core_compare_s = _core(bars, params, compare_first, LAST)
    rss_core = peak_rss_mib()

    bookkeeping_ms, event_bytes = {}, {}
    batch_env = os.environ.pop(BATCH_SIZE_ENV, None)
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        write_table(str(data_dir / "warehouse.duckdb"), "daily_bars", bars)
        (data_dir / "models").mkdir()
        (data_dir / "models" / "garch_params.json").write_text(json.dumps({s: p.to_dict() for s, p in params.items()}))
        resources = build_resources(str(data_dir), MarketData(source="embedded"))

        # Stock first, unbatched as Dagster ships; the project's storage switches batching on.
        os.environ[BATCH_SIZE_ENV] = "0"
        stock_home = Path(tmp) / "stock"
        write_instance_yaml(stock_home, "stock")
        with dg.DagsterInstance.from_config(str(stock_home)) as instance:
            compare_s = _materialize(resources, instance, compare_first, LAST)
        bookkeeping_ms["stock"] = 1000 * (compare_s - core_compare_s) / (3 * args.stock_days)
        event_bytes["stock"] = _event_log_bytes(stock_home) / (3 * args.stock_days)
        del os.environ[BATCH_SIZE_ENV]

        home = Path(tmp) / "project"
        write_instance_yaml(home, "project")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            compare_s = _materialize(resources, instance, compare_first, LAST)
            bookkeeping_ms["batching"] = 1000 * (compare_s - core_compare_s) / (3 * args.stock_days)
            event_bytes["batching"] = _event_log_bytes(home) / (3 * args.stock_days)
            day_s = _materialize(resources, instance, LAST, LAST)
            rss_day = peak_rss_mib()
            cpu = cpu_seconds()
            full_s = _materialize(resources, instance, FIRST, LAST)
            full_cpu = cpu_seconds() - cpu
            rss_full = peak_rss_mib()
    if batch_env is None:
        os.environ.pop(BATCH_SIZE_ENV, None)
    else:
        os.environ[BATCH_SIZE_ENV] = batch_env

    n_partitions = (LAST - FIRST).days + 1
    ratio = bookkeeping_ms["stock"] / bookkeeping_ms["batching"]
    print_table([
        ("partitions", f"{n_partitions:,} days x 3 assets"),
        ("core compute, full range", f"{core_s:.2f} s ({core_cpu:.2f} CPU-s), peak RSS {rss_core:,.0f} MiB"),
        ("one day, materialized", f"{day_s:.2f} s, peak RSS {rss_day:,.0f} MiB  goal <= {GOAL_DAY_S:.0f} s: {'PASS' if day_s <= GOAL_DAY_S else 'FAIL'}"),
        ("full range, one run", f"{full_s:.1f} s ({full_cpu:.1f} CPU-s), peak RSS {rss_full:,.0f} MiB  goal <= {GOAL_FULL_S:.0f} s: {'PASS' if full_s <= GOAL_FULL_S else 'FAIL'}"),
        ("full run / core compute", f"{full_s / core_s:.0f}x ({1000 * (full_s - core_s) / (3 * n_partitions):.2f} ms per asset-partition besides the computation)"),
        (f"bookkeeping, {args.stock_days} days x 3 assets",
         f"stock {bookkeeping_ms['stock']:.2f} ms, batching {bookkeeping_ms['batching']:.2f} ms per asset-partition: "
         f"{ratio:.1f}x fewer  goal >= {GOAL_RATIO:.0f}x: {'PASS' if ratio >= GOAL_RATIO else 'FAIL'}"),
        ("event log size", f"stock {event_bytes['stock'] / 1024:.1f} KiB, batching {event_bytes['batching'] / 1024:.1f} KiB per asset-partition"),
    ])
    return 0 if day_s <= GOAL_DAY_S and full_s <= GOAL_FULL_S and ratio >= GOAL_RATIO else 1
