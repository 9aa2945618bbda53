"""Partitions of the asset graph, and the split windows and origins they are derived from.

The single source of truth: every asset, job and schedule imports its partitions from
here, and the split windows come from ``configs/splits.yaml``.
"""

from __future__ import annotations

import dagster as dg

from regime_pipeline.configs import history_start, load_yaml, splits, walk_forward
from regime_pipeline.core.allocation.walk_forward import WalkForwardSettings

# One partition per UTC day from the first Binance spot USDT candle.
DAILY = dg.DailyPartitionsDefinition(start_date=history_start().isoformat(), timezone="UTC")

# Monday weeks, UTC: one rebalance a week. The key is the Monday the trade happens at (decided
# at the Sunday close before). end_offset=1: the week that starts today exists as soon as it
# starts, so Monday's schedule tick targets it rather than the week that just ended.
WEEKLY = dg.WeeklyPartitionsDefinition(start_date="2018-01-01", day_offset=1, timezone="UTC", end_offset=1)

# The evaluation unit of the study. A date belongs to exactly one split, so a
# date-by-split grid would be three quarters empty; split assets are their own axis.
SPLIT_NAMES = list(splits())
SPLIT = dg.StaticPartitionsDefinition(SPLIT_NAMES)

# Walk-forward origins (configs/walk_forward.yaml): origin Y fits on the days before Y - 1,
# early-stops on Y - 1 and predicts the days of Y.
ORIGIN_NAMES = [str(y) for y in walk_forward()["origins"]]
ORIGIN = dg.StaticPartitionsDefinition(ORIGIN_NAMES)

# The origins an allocation policy can have (configs/allocation.yaml `walk_forward`): origin Y's
# policy trains on the out-of-sample probabilities of the origins before Y - 1, so the first one
# is two years after the first ORIGIN. A partitions definition of its own rather than two
# origins of ORIGIN that could never be materialized.
POLICY_ORIGIN_NAMES = [str(y) for y in WalkForwardSettings.from_config().policy_origins]
POLICY_ORIGIN = dg.StaticPartitionsDefinition(POLICY_ORIGIN_NAMES)

# One PPO seed: the seeds of configs/ppo.yaml `default` (a profile trains these or a subset of
# them), of the fixed split's policy (PPO_SEED) and of each walk-forward policy origin
# (POLICY_SEED, keys ``2024|3``: origin, then seed). A backfill trains each seed as its own run
# where runs are spread over machines (a pod each in the cluster), and retraining one seed
# replaces only that seed.
POLICY_SEED_NAMES = [str(s) for s in load_yaml("ppo")["default"]["seeds"]]
PPO_SEED = dg.StaticPartitionsDefinition(POLICY_SEED_NAMES)
POLICY_SEED = dg.MultiPartitionsDefinition({"origin": POLICY_ORIGIN, "seed": PPO_SEED})


def summary_partition(partition_keys: list[str]) -> str | None:
    """The partition that carries the metadata describing a whole run: the last of a run of
    several partitions (a single-run backfill would otherwise copy it onto each of them), none
    for a run of one partition or of an unpartitioned asset."""
    return partition_keys[-1] if len(partition_keys) > 1 else None
