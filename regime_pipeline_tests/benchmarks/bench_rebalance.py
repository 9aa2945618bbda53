"""Weekly rebalance: the 52-week 2025 backfill in one run, then one more week, from
`materialize()` to the paper ledger.

On the embedded daily bars with synthetic regime probabilities of the real shape and an
untrained policy of the default architecture (the cost does not depend on the weights), in a
temporary data directory and Dagster instance. Baseline in the same process: the same week's
`core.trading.rebalance.rebalance` call alone (broker + ledger), so the ratio is what loading the
inputs, deciding and Dagster's bookkeeping add.

Goal: one weekly rebalance <= 5 s with the paper broker.
Run: ``python -m regime_pipeline_tests.benchmarks rebalance``.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.core.allocation import policy as allocation

from regime_pipeline.core.allocation import ppo
from regime_pipeline.core.trading.rebalance import rebalance
from regime_pipeline.core.trading.risk import RiskLimits
from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.broker import BrokerResource
from regime_pipeline_tests.benchmarks import peak_rss_mib, print_table
from regime_pipeline_tests.benchmarks.bench_allocation import _random_actor
from regime_pipeline_tests.conftest import embedded_daily_bars, synthetic_probabilities, write_table

GOAL_WEEK_S = 5.0
FIRST, LAST_BACKFILL, NEXT = dt.date(2025, 1, 6), dt.date(2025, 12, 22), dt.date(2025, 12, 29)


def main(argv: list[str]) -> int:
    bars, probabilities = embedded_daily_bars(), synthetic_probabilities(classes=(4, 4, 3))
    data = allocation.allocation_data(bars, probabilities)
    policy = _random_actor(allocation.make_env(data, FIRST, NEXT), ppo.settings())
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        data_dir = Path(tmp) / "data"
        (data_dir / "models").mkdir(parents=True)
        write_table(str(data_dir / "warehouse.duckdb"), "daily_bars", bars)
        write_table(str(data_dir / "warehouse.duckdb"), "regime_probabilities", probabilities)
        (data_dir / "models" / "ppo_policy.json").write_text(json.dumps({"policy": policy.to_dict()}))
        resources = build_resources(str(data_dir))

        def run(first: dt.date, last: dt.date) -> float:
            began = time.perf_counter()
            result = dg.materialize(all_assets, selection=["weekly_rebalance"], resources=resources, instance=instance,
                                    tags={ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
                                          ASSET_PARTITION_RANGE_END_TAG: last.isoformat()})
            assert result.success
            return time.perf_counter() - began

        backfill = run(FIRST, LAST_BACKFILL)
        week = run(NEXT, NEXT)
        again = run(NEXT, NEXT)

        # Baseline: the core call alone for the same week, on a fresh paper book of its own.
        trading = BrokerResource(data_dir=str(Path(tmp) / "baseline")).open()
        decision = allocation.decide_week(policy, data, NEXT, NEXT, RiskLimits.from_config())
        prices = {s: float(p) for s, p in zip(data.prices.symbols, data.prices.open[data.index(NEXT)])}
        began = time.perf_counter()
        rebalance(NEXT, decision.target, prices, decision.data_through, trading.broker, trading.ledger,
                  symbols=data.prices.symbols)
        core = time.perf_counter() - began

    rows = [
        ("2025 backfill: weeks 1-51 (2025-01-06 .. 2025-12-22) in one run", f"{backfill:.1f} s ({backfill / 51:.2f} s a week)"),
        ("week 52, materialize -> ledger", f"{week:.2f} s; core rebalance() alone {core:.2f} s: {week / core:.1f}x  "
         f"goal <= {GOAL_WEEK_S:.0f} s: {'PASS' if week <= GOAL_WEEK_S else 'FAIL'}"),
        ("the same week again (nothing sent)", f"{again:.2f} s"),
        ("peak RSS", f"{peak_rss_mib():,.0f} MiB"),
    ]
    print_table(rows)
    return 0 if week <= GOAL_WEEK_S else 1
