"""Stage 4b, walk-forward allocation: per origin year, a PPO ensemble trained only on days with
out-of-sample regime probabilities before the selection year, selected on it and scored on the
origin year beside the benchmarks and the regime rules; then every origin and all of them pooled
in one table with bootstrap intervals.

Reads `walk_forward_probabilities` (ORIGIN-partitioned, from the regime walk-forward): rows like
`regime_probabilities` plus ``origin`` and ``target``, origin Y holding the days of Y, each from
detectors that never saw it; the policies observe and the rules read the target of
configs/allocation.yaml (`forward`). The lineage says what each origin may read: the policy of
origin Y depends on the probability origins before Y, its backtest on those up to Y.
"""

import datetime as dt

import dagster as dg
import pandas as pd

from regime_pipeline.assets.allocation import (
    comparison_note,
    comparison_results,
    describe_comparison,
    describe_ensemble,
    md_table,
    profile_seeds,
    train_seed_records,
)
from regime_pipeline.core.allocation import comparison, ppo, rules, walk_forward
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.strategies import benchmark_strategies
from regime_pipeline.core.plots import figure_to_markdown, plot_differences
from regime_pipeline.partitions import POLICY_ORIGIN, POLICY_SEED
from regime_pipeline.resources.deployment import step_tags, training_backfill_policy
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "walk_forward_allocation"
PROBABILITIES = "walk_forward_probabilities"
ALL = dg.AllPartitionMapping()


def origins_mapping(include_own: bool) -> dg.StaticPartitionMapping:
    """Probability origin u -> the policy origins Y with u < Y (``include_own``: u <= Y)."""
    settings = walk_forward.WalkForwardSettings.from_config()
    mapping = {}
    for u in settings.probability_origins:
        downstream = [str(y) for y in settings.policy_origins if u < y or (include_own and u == y)]
        if downstream:
            mapping[str(u)] = downstream
    return dg.StaticPartitionMapping(mapping)


class WalkForwardPolicyConfig(dg.Config):
    profile: str = ""
    """Training profile in configs/ppo.yaml; empty: configs/allocation.yaml `walk_forward.ppo_profile`
    (`light`); `default` trains with the fixed split's budget, `fast` for a quick check."""


def _profile(config: WalkForwardPolicyConfig) -> str:
    return config.profile or walk_forward.WalkForwardSettings.from_config().ppo_profile


# The universe and the close-only days, as the fixed split's allocation assets read them.
UNIVERSE_INS = {"daily_closes": dg.AssetIn(), "universe": dg.AssetIn(partition_mapping=ALL)}


def _data(
    daily_bars: pd.DataFrame, probabilities: pd.DataFrame, daily_closes: pd.DataFrame, universe: pd.DataFrame,
    before: int,
) -> tuple[allocation.AllocationData, dt.date]:
    """Allocation inputs from the origins before `before` (the configured target's probabilities),
    with the close-only days and the universe's members of each day, and the first day with
    probabilities."""
    stitched = walk_forward.stitch(probabilities, target=walk_forward.WalkForwardSettings.from_config().target, before=before)
    return allocation.allocation_data(daily_bars, stitched, daily_closes, universe), walk_forward.first_day(stitched)


def seed_folder(origin: int) -> str:
    """Where origin `origin`'s SB3 models are saved, under ``models/``."""
    return f"walk_forward_policy/{origin}"


@dg.asset(
    group_name=GROUP,
    partitions_def=POLICY_SEED,
    backfill_policy=training_backfill_policy(),
    io_manager_key="model_io_manager",
    # Every probability origin: Dagster maps a single-dimension upstream onto one dimension of a
    # multi-partition only key for key, not "the origins before Y". Each seed's data are cut
    # before its selection year in code (tested); walk_forward_policy's lineage is exact.
    ins={"daily_bars": dg.AssetIn(partition_mapping=ALL), PROBABILITIES: dg.AssetIn(partition_mapping=ALL),
         **UNIVERSE_INS},
    metadata={"artifacts": "by_partition"},
    kinds={"pytorch"},
    op_tags=step_tags("walk_forward_seed_policy"),
)
def walk_forward_seed_policy(
    context: dg.AssetExecutionContext, config: WalkForwardPolicyConfig, storage: ProjectStorage,
    daily_bars: pd.DataFrame, walk_forward_probabilities: pd.DataFrame, daily_closes: pd.DataFrame,
    universe: pd.DataFrame,
) -> dg.Output[dict]:
    """One PPO seed of origin Y's ensemble: trained on the days before Y - 1 that have
    out-of-sample probabilities (the configured target's), early-stopped on a smoothed curve
    over Y - 1; it never reads a day of Y. Several (origin, seed) partitions in one run train on
    the profile's worker processes; the SB3 model is saved beside the JSON record."""
    profile = _profile(config)
    settings = ppo.settings(profile)
    # A run launched with the partition as a tag hands its key over as a plain string.
    keys = sorted((POLICY_SEED.get_partition_key_from_str(str(k)) for k in context.partition_keys),
                  key=lambda k: (k.keys_by_dimension["origin"], int(k.keys_by_dimension["seed"])))
    by_origin: dict[int, list[int]] = {}
    for key in keys:
        origin, seed = int(key.keys_by_dimension["origin"]), int(key.keys_by_dimension["seed"])
        if seed not in settings.seeds:
            raise ValueError(f"walk_forward_seed_policy[{key}]: seed {seed} is not one of profile {profile!r}'s seeds "
                             f"{list(settings.seeds)} (configs/ppo.yaml)")
        by_origin.setdefault(origin, []).append(seed)
    jobs = []
    for origin, seeds in by_origin.items():
        data, first = _data(daily_bars, walk_forward_probabilities, daily_closes, universe, before=origin)
        windows = walk_forward.origin_windows(origin, first)
        jobs += ppo.seed_jobs(data, windows.train, windows.select, settings, seeds, f"origin {origin}")
    folders = [seed_folder(int(key.keys_by_dimension["origin"])) for key in keys]
    records, table, wall = train_seed_records(context, storage, jobs, folders, profile)
    return dg.Output({key: {**r, "origin": int(key.keys_by_dimension["origin"])} for key, r in zip(keys, records)},
                     metadata={"profile": profile, "seeds": md_table(table), "wall_seconds": round(wall, 1),
                               "training_seconds": round(float(table["seconds"].sum()), 1)})


@dg.asset(
    group_name=GROUP,
    partitions_def=POLICY_ORIGIN,
    io_manager_key="model_io_manager",
    ins={"daily_bars": dg.AssetIn(partition_mapping=ALL),
         PROBABILITIES: dg.AssetIn(partition_mapping=origins_mapping(include_own=False)), **UNIVERSE_INS,
         "walk_forward_seed_policy": dg.AssetIn(
             partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="origin"),
             metadata={"artifacts": "by_partition"})},
    kinds={"pytorch"},
)
def walk_forward_policy(
    context: dg.AssetExecutionContext, config: WalkForwardPolicyConfig, storage: ProjectStorage,
    daily_bars: pd.DataFrame, walk_forward_probabilities: pd.DataFrame, daily_closes: pd.DataFrame,
    universe: pd.DataFrame, walk_forward_seed_policy: dict,
) -> dg.Output[dict]:
    """The PPO ensemble of origin Y: every seed of the profile (`walk_forward_seed_policy`, each
    trained on the days before Y - 1 and early-stopped on Y - 1), deployed as the mean of their
    target weights, decided before any score; it never reads a day of Y."""
    origin = int(context.partition_key)
    profile = _profile(config)
    data, first = _data(daily_bars, walk_forward_probabilities, daily_closes, universe, before=origin)
    windows = walk_forward.origin_windows(origin, first)
    records = profile_seeds([r for r in walk_forward_seed_policy.values() if int(r["origin"]) == origin], profile,
                            windows.train, windows.select, f"walk_forward_policy[{origin}]", "walk_forward_seed_policy",
                            lambda seed: f"{origin}|{seed}")
    wall = sum(float(r["wall_seconds"]) for r in records)
    artifact, metadata = describe_ensemble(storage, data, records, windows.train, windows.select, profile,
                                           seed_folder(origin), wall)
    artifact.update({"origin": origin, "windows": windows.as_dict(), "target": walk_forward.WalkForwardSettings.from_config().target})
    metadata.update({"origin": origin, "windows": dg.MetadataValue.json(windows.as_dict()), "target": artifact["target"]})
    return dg.Output(artifact, metadata=metadata)


@dg.asset(
    group_name=GROUP,
    partitions_def=POLICY_ORIGIN,
    ins={"daily_bars": dg.AssetIn(partition_mapping=ALL),
         PROBABILITIES: dg.AssetIn(partition_mapping=origins_mapping(include_own=True)), **UNIVERSE_INS,
         "walk_forward_policy": dg.AssetIn()},
    metadata={"partition_expr": "origin"},
    pool="warehouse",
)
def walk_forward_backtest(
    context: dg.AssetExecutionContext, storage: ProjectStorage, daily_bars: pd.DataFrame,
    walk_forward_probabilities: pd.DataFrame, daily_closes: pd.DataFrame, universe: pd.DataFrame,
    walk_forward_policy: dict,
) -> dg.Output[pd.DataFrame]:
    """Origin Y's year, every strategy from cash on its first day: the origin's PPO ensemble
    (and each seed alone), BTC buy-and-hold, equal weight, inverse volatility, momentum +
    inverse vol, and the four regime rules calibrated on the days before Y. Net of costs, with
    differences to equal weight and BTC and their bootstrap intervals in the metadata. Stored:
    each strategy's daily net returns and turnover (``origin, strategy, date, net_return,
    turnover``), from which the walk-forward table recomputes and pools everything."""
    origin = int(context.partition_key)
    data, first = _data(daily_bars, walk_forward_probabilities, daily_closes, universe, before=origin + 1)
    windows = walk_forward.origin_windows(origin, first)
    strategies = benchmark_strategies(data.prices.symbols)
    calibration = rules.calibrate(data, *windows.calibrate)
    strategies.update(rules.rule_strategies(data, calibration))
    results = comparison_results(data, walk_forward_policy, strategies, *windows.score)
    n_shown = len([n for n in results if not n.startswith(comparison.SEED_PREFIX)])
    table, metadata = describe_comparison(
        results, f"Walk-forward origin {origin} ({windows.score[0]}..{windows.score[1]})", storage,
        f"walk_forward_allocation_{origin}", comparison_note(n_shown),
    )
    ensemble = table.loc[table["strategy"] == comparison.ENSEMBLE].iloc[0]
    context.log.info(f"walk_forward_backtest[{origin}]: ppo ensemble {ensemble['total_return']:+.2%}, Sharpe "
                     f"{ensemble['sharpe_vs_ew']:+.2f} vs EW [{ensemble['sharpe_vs_ew_low']:+.2f}, "
                     f"{ensemble['sharpe_vs_ew_high']:+.2f}]")
    metadata.update({"windows": dg.MetadataValue.json(windows.as_dict()),
                     "rule_calibration": dg.MetadataValue.json(calibration.as_dict())})
    frame = comparison.long_returns(results)
    frame.insert(0, "origin", str(origin))
    return dg.Output(frame, metadata=metadata)


@dg.asset(
    group_name=GROUP,
    ins={"walk_forward_backtest": dg.AssetIn(partition_mapping=ALL),
         "walk_forward_policy": dg.AssetIn(partition_mapping=ALL, metadata={"artifacts": "by_partition"})},
    pool="warehouse",
)
def walk_forward_allocation(
    context: dg.AssetExecutionContext, storage: ProjectStorage, walk_forward_backtest: pd.DataFrame,
    walk_forward_policy: dict,
) -> dg.Output[pd.DataFrame]:
    """The walk-forward table: per origin year and pooled over them, every strategy's metrics
    net of costs and its differences to equal weight and BTC with bootstrap intervals; how
    often each beat both; the training time of every origin's policy."""
    origins = sorted(walk_forward_backtest["origin"].astype(str).unique())
    missing = [o for o in POLICY_ORIGIN.get_partition_keys() if o not in origins]
    if not origins:
        raise ValueError("walk_forward_backtest has no origin yet: materialize it first")
    per_origin = {o: comparison.series_from_long(walk_forward_backtest.loc[walk_forward_backtest["origin"].astype(str) == o])
                  for o in origins}
    tables = {o: comparison.table(series) for o, series in per_origin.items()}
    tables["pooled"] = comparison.table(comparison.pooled(list(per_origin.values())))
    frame = pd.concat([t.assign(origin=o) for o, t in tables.items()], ignore_index=True)
    frame = frame[["origin", *[c for c in frame.columns if c != "origin"]]]
    score = comparison.scorecard({o: tables[o] for o in origins}, tables["pooled"])
    sharpe_ew = comparison.pivot(tables, "sharpe_vs_ew")
    sharpe_btc = comparison.pivot(tables, "sharpe_vs_btc")
    returns = comparison.pivot(tables, "total_return", fmt="{:+.1%}")
    training = pd.DataFrame([{"origin": o, "profile": a["profile"], "seeds": len(a["seeds"]),
                              "train": " .. ".join(a["train"]), "select": " .. ".join(a["val"]),
                              "seconds_all_seeds": a.get("training", {}).get("seconds"),
                              "wall_seconds": a.get("training", {}).get("wall_seconds")}
                             for o, a in sorted(walk_forward_policy.items())])
    shown = frame.loc[~frame["strategy"].str.startswith("ppo_seeds_")]
    fig = plot_differences(shown.loc[shown["strategy"] != comparison.EQUAL_WEIGHT], "sharpe", "ew",
                           "Sharpe difference to equal weight per origin year, pooled last (95% interval)")
    note = comparison_note(len(tables["pooled"]) - 2)
    report = storage.reports_dir / "walk_forward_allocation.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    sections = [
        "# Walk-forward allocation", "", note, "",
        f"Origins {', '.join(origins)}; pooled = their days concatenated (each year from cash)."
        + (f" **Not materialized yet: {', '.join(missing)}.**" if missing else ""), "",
        "## Sharpe difference to equal weight [95%]", "", sharpe_ew.to_markdown(index=False), "",
        "## Sharpe difference to BTC buy-and-hold [95%]", "", sharpe_btc.to_markdown(index=False), "",
        "## Total return", "", returns.to_markdown(index=False), "",
        "## Scorecard (Sharpe, point estimates; intervals above)", "", score.to_markdown(index=False, floatfmt=".2f"), "",
        "## Training", "", training.to_markdown(index=False), "",
    ]
    for o, t in tables.items():
        sections += [f"## {o}", "", comparison.formatted(t).to_markdown(index=False), ""]
    report.write_text("\n".join(sections))
    total = training["wall_seconds"].dropna().sum()
    context.log.info(f"walk_forward_allocation: {len(origins)} origins; policies trained in {total:.0f}s wall")
    return dg.Output(frame, metadata={
        "sharpe_vs_equal_weight": dg.MetadataValue.md(sharpe_ew.to_markdown(index=False)),
        "sharpe_vs_btc": dg.MetadataValue.md(sharpe_btc.to_markdown(index=False)),
        "total_return": dg.MetadataValue.md(returns.to_markdown(index=False)),
        "scorecard": md_table(score, ".2f"),
        "differences": dg.MetadataValue.md(figure_to_markdown(fig, "Sharpe differences")),
        "training": md_table(training, ".1f"),
        "training_wall_seconds": float(total),
        "origins": ", ".join(origins),
        "origins_missing": ", ".join(missing) or "none",
        "variants_tried": comparison.variants_tried(),
        "report": dg.MetadataValue.path(str(report)),
    })

