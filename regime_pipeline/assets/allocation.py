"""Stage 4, allocation: the PPO policy trained on the detectors' probabilities (an ensemble of
seeds), and per-split backtests of it against the benchmarks and the regime rules on the same
accounting and costs, every difference to equal weight and BTC with a bootstrap interval."""

import datetime as dt
import json
from collections.abc import Callable

import dagster as dg
import pandas as pd

from regime_pipeline.configs import splits, universe as universe_config
from regime_pipeline.core.allocation import comparison, ppo, rules
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.policy import AllocationData
from regime_pipeline.core.allocation.strategies import backtest_benchmarks
from regime_pipeline.core.plots import figure_to_markdown, plot_equity_curves, plot_learning_curves
from regime_pipeline.partitions import PPO_SEED, SPLIT
from regime_pipeline.resources.artifacts import write_atomic
from regime_pipeline.resources.deployment import step_tags, training_backfill_policy
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "allocation"
ALL = dg.AllPartitionMapping()


class PolicyConfig(dg.Config):
    profile: str = "default"
    """Training profile in configs/ppo.yaml (`default`; `full` trains longer; `fast` for a quick check)."""


def md_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=floatfmt) if len(frame) else "(none)")


def _inputs(
    daily_bars: pd.DataFrame, regime_probabilities: pd.DataFrame, daily_closes: pd.DataFrame, universe: pd.DataFrame,
) -> AllocationData:
    """Prices (close-only days included) and probabilities of the candidates, with the universe's
    members of each day: the assets a decision may weigh."""
    if regime_probabilities.empty:
        raise ValueError("regime_probabilities is empty: materialize it for the train and val days first")
    return allocation.allocation_data(daily_bars, regime_probabilities, daily_closes, universe)


# The universe and the close-only days, beside the bars and probabilities every allocation step reads.
MARKET_INS = {"daily_bars": dg.AssetIn(partition_mapping=ALL), "regime_probabilities": dg.AssetIn(partition_mapping=ALL),
              "daily_closes": dg.AssetIn(), "universe": dg.AssetIn(partition_mapping=ALL)}


def train_seed_records(
    context: dg.AssetExecutionContext, storage: ProjectStorage, jobs: list[ppo.TrainingJob], folders: list[str],
    profile: str,
) -> tuple[list[dict], pd.DataFrame, float]:
    """Train `jobs` (seeds of PPO `profile`) on the profile's worker processes; save each SB3
    model under ``models/<folder>/`` (`folders`, one per job).

    :returns: each seed's record (:func:`save_seed`'s, with its profile, settings, windows and
        its share of the wall time), a table of them, and the wall seconds of the training
    """
    settings = ppo.settings(profile)
    context.log.info(f"{len(jobs)} seeds ({profile} profile) on {settings.workers} worker(s), up to "
                     f"{settings.total_timesteps:,} steps each, no checkpoint before {settings.min_steps:,}, "
                     f"selected on {settings.val_score}")
    began = dt.datetime.now()
    runs = ppo.train_seeds(jobs, settings.workers, log=context.log)
    wall = (dt.datetime.now() - began).total_seconds()
    total = max(sum(r.seconds for r in runs), 1e-9)
    records, rows = [], []
    for job, run, folder in zip(jobs, runs, folders):
        # The run's wall time is shared among its seeds in proportion to their training time.
        records.append({**save_seed(storage, folder, run), "profile": profile, "settings": settings.as_dict(),
                        "train": list(job.train), "val": list(job.val), "wall_seconds": round(wall * run.seconds / total, 1)})
        rows.append({"seed": job.label or f"seed {run.seed}", "kept_step": run.best.step, "steps_run": run.steps_run,
                     "val_score": run.best.score, "seconds": round(run.seconds, 1)})
    return records, pd.DataFrame(rows), wall


def profile_seeds(
    records: list[dict], profile: str, train: tuple[dt.date, dt.date], val: tuple[dt.date, dt.date], what: str,
    seed_asset: str, key: Callable[[int], str],
) -> list[dict]:
    """The records of PPO `profile`'s seeds among `records`, in the profile's order, for the
    ensemble `what`; refused, naming the partitions of `seed_asset` (`key` of a seed) to
    materialize, when one is missing, was trained with another profile or other settings, or
    on other windows than `train` and `val`."""
    wanted = ppo.settings(profile).seeds
    seeds = {int(r["seed"]): r for r in records}
    trained_with = json.loads(json.dumps(ppo.settings(profile).as_dict()))
    windows = [[d.isoformat() for d in train], [d.isoformat() for d in val]]
    missing = [s for s in wanted if s not in seeds]
    other = [s for s in wanted if s in seeds and (seeds[s]["profile"] != profile or seeds[s]["settings"] != trained_with)]
    moved = [s for s in wanted if s in seeds and s not in other and [seeds[s]["train"], seeds[s]["val"]] != windows]
    if missing or other or moved:
        keys = ", ".join(key(s) for s in missing + other + moved)
        raise ValueError(f"{what} deploys the {len(wanted)} seeds of profile {profile!r}: "
                         + (f"seeds {missing} are not trained; " if missing else "")
                         + (f"seeds {other} were trained with another profile or other settings; " if other else "")
                         + (f"seeds {moved} were trained on other windows than {windows}; " if moved else "")
                         + f"materialize {seed_asset} [{keys}] with {{'profile': '{profile}'}} first")
    return [seeds[s] for s in wanted]


def save_seed(storage: ProjectStorage, folder: str, run: ppo.TrainedPolicy) -> dict:
    """Save `run`'s SB3 model as ``models/<folder>/seed_<seed>.zip``; its :func:`ppo.seed_record`
    with the file's path and hash."""
    path = storage.models_dir / folder / f"seed_{run.seed}.zip"
    sha = write_atomic(path, run.sb3_zip)
    return {**ppo.seed_record(run), "sb3_model": {"path": str(path), "sha256": sha}}


def describe_ensemble(
    storage: ProjectStorage, data: AllocationData, records: list[dict], train: tuple[dt.date, dt.date],
    val: tuple[dt.date, dt.date], profile: str, folder: str, wall: float,
) -> tuple[dict, dict]:
    """The ensemble of the seeds in `records` (:func:`save_seed`'s, all of `profile`), deployed as
    the mean of their target weights.

    :param wall: seconds of wall time their training took
    :returns: the JSON artifact (the ensemble, every seed's curves and kept step, the settings)
        and the asset's metadata (learning curves plot, per-seed table, the ensemble's val score
        beside the seeds' mean ± sd).
    """
    config = ppo.settings(profile)
    runs = [ppo.from_seed_record(r) for r in records]
    deployed = ppo.ensemble(runs)
    seeds, rows = {}, []
    for run, record in zip(runs, records):
        summary = allocation.backtest_policy(run.policy, data, *val).summary()
        rows.append({"seed": run.seed, "kept_step": run.best.step, "steps_run": run.steps_run,
                     "stopped_early": run.stopped_early, "seconds": round(run.seconds, 1),
                     "val_score": run.best.score, "val_smoothed": run.best.smoothed,
                     **{f"val_{k}": summary[k] for k in ("total_return", "sharpe", "max_drawdown", "annual_turnover")}})
        seeds[str(run.seed)] = {k: v for k, v in record.items() if k not in ("seed", "policy", "seconds")}
    table = pd.DataFrame(rows)
    ensemble_val = allocation.backtest_policy(deployed, data, *val).summary()
    ensemble_score = ppo.validation_score(deployed, data, *val, config.val_score)
    score_mean, score_sd = allocation.mean_sd(table["val_score"])
    return_mean, return_sd = allocation.mean_sd(table["val_total_return"])
    fig = plot_learning_curves(
        {f"seed {r.seed}": r.train_curve for r in runs},
        {f"seed {r.seed}": [(e.step, e.score, e.smoothed) for e in r.history] for r in runs},
        {f"seed {r.seed}": r.best.step for r in runs}, config.min_steps, config.val_score,
        f"{folder}: {len(runs)} seeds, train {train[0]}..{train[1]}, selection {val[0]}..{val[1]}",
    )
    artifact = {
        "deployed": "ensemble",
        "policy": deployed.to_dict(),
        "seeds": seeds,
        "observation": {"prob_columns": list(data.prob_columns), "symbols": list(data.prices.symbols),
                        "slots": int(allocation.make_env(data, *train).n_slots), "universe": universe_config().mode},
        "settings": config.as_dict(),
        "profile": profile,
        "train": list(train),
        "val": list(val),
        "training": {"seconds": round(float(table["seconds"].sum()), 1), "wall_seconds": round(wall, 1),
                     "workers": config.workers},
    }
    metadata = {
        "deployed": f"ensemble of {len(runs)} seeds: the mean of their target weights",
        "val_score_ensemble": float(ensemble_score),
        "val_score_seeds": f"{score_mean:.5f} ± {score_sd:.5f} (n={len(runs)}, {config.val_score})",
        "val_total_return_ensemble": float(ensemble_val["total_return"]),
        "val_total_return_seeds": f"{return_mean:.2%} ± {return_sd:.2%}",
        "val_annual_turnover_ensemble": float(ensemble_val["annual_turnover"]),
        "seeds": md_table(table),
        "learning_curves": dg.MetadataValue.md(figure_to_markdown(fig, "learning curves")),
        "training_seconds": round(float(table["seconds"].sum()), 1),
        "wall_seconds": round(wall, 1),
        "sb3_models": dg.MetadataValue.path(str(storage.models_dir / folder)),
        "profile": profile,
    }
    return artifact, metadata


@dg.asset(
    group_name=GROUP,
    partitions_def=PPO_SEED,
    backfill_policy=training_backfill_policy(),
    io_manager_key="model_io_manager",
    ins=MARKET_INS,
    metadata={"artifacts": "by_partition"},
    kinds={"pytorch"},
    op_tags=step_tags("ppo_seed_policy"),
)
def ppo_seed_policy(
    context: dg.AssetExecutionContext, config: PolicyConfig, storage: ProjectStorage,
    daily_bars: pd.DataFrame, regime_probabilities: pd.DataFrame, daily_closes: pd.DataFrame, universe: pd.DataFrame,
) -> dg.Output[dict]:
    """One seed of the weekly allocation policy: SB3 PPO on the detectors' regime probabilities
    plus the portfolio's state, trained on `train` episodes from random starts, early-stopped on
    a smoothed `val` curve after a minimum number of updates. Several seeds in one run train on
    the profile's worker processes; the SB3 model is saved beside the JSON record."""
    train, val = splits()["train"], splits()["val"]
    data = _inputs(daily_bars, regime_probabilities, daily_closes, universe)
    settings = ppo.settings(config.profile)
    seeds = sorted(int(k) for k in context.partition_keys)
    unknown = [s for s in seeds if s not in settings.seeds]
    if unknown:
        raise ValueError(f"ppo_seed_policy: seeds {unknown} are not among profile {config.profile!r}'s seeds "
                         f"{list(settings.seeds)} (configs/ppo.yaml)")
    jobs = ppo.seed_jobs(data, (train.start, train.end), (val.start, val.end), settings, seeds)
    records, table, wall = train_seed_records(context, storage, jobs, ["ppo_policy"] * len(jobs), config.profile)
    return dg.Output({str(r["seed"]): r for r in records}, metadata={
        "profile": config.profile, "seeds": md_table(table), "wall_seconds": round(wall, 1),
        "training_seconds": round(float(table["seconds"].sum()), 1),
    })


@dg.asset(
    group_name=GROUP,
    io_manager_key="model_io_manager",
    ins={**MARKET_INS, "ppo_seed_policy": dg.AssetIn(partition_mapping=ALL, metadata={"artifacts": "by_partition"})},
    kinds={"pytorch"},
)
def ppo_policy(
    context: dg.AssetExecutionContext, config: PolicyConfig, storage: ProjectStorage,
    daily_bars: pd.DataFrame, regime_probabilities: pd.DataFrame, daily_closes: pd.DataFrame, universe: pd.DataFrame,
    ppo_seed_policy: dict,
) -> dg.Output[dict]:
    """The weekly allocation policy: the ensemble of every seed of the profile
    (`ppo_seed_policy`), the mean of their target weights, decided before any score is seen;
    the seeds' learning curves and val scores beside the ensemble's."""
    train, val = splits()["train"], splits()["val"]
    windows = (train.start, train.end), (val.start, val.end)
    data = _inputs(daily_bars, regime_probabilities, daily_closes, universe)
    records = profile_seeds(list(ppo_seed_policy.values()), config.profile, *windows, "ppo_policy", "ppo_seed_policy", str)
    wall = sum(float(r["wall_seconds"]) for r in records)
    artifact, metadata = describe_ensemble(storage, data, records, *windows, config.profile, "ppo_policy", wall)
    return dg.Output(artifact, metadata=metadata)


def comparison_results(
    data: AllocationData, artifact: dict, strategies: dict, start: dt.date, end: dt.date,
) -> dict[str, comparison.Series]:
    """Every strategy's run over ``start..end``: the artifact's deployed ensemble, each of its
    seeds, and `strategies` (benchmarks and rules)."""
    deployed = allocation.load_policy(artifact["policy"])
    members = deployed.members if isinstance(deployed, allocation.EnsemblePolicy) else (deployed,)
    seeds = dict(zip((int(s) for s in artifact["seeds"]), members))
    results = comparison.run_strategies(data, start, end, deployed, seeds, strategies)
    return results


def describe_comparison(
    results: dict, title: str, storage: ProjectStorage, report_name: str, note: str,
) -> tuple[pd.DataFrame, dict]:
    """The comparison table of `results`, its report file and metadata (table, seeds, equity plot)."""
    series = {name: comparison.Series.of(r) for name, r in results.items()}
    table = comparison.table(series)
    seeds = comparison.seed_table(series)
    shown = {n: (r.dates, r.equity) for n, r in results.items() if not n.startswith(comparison.SEED_PREFIX)}
    fig = plot_equity_curves(shown, f"{title}, net of costs")
    readable = comparison.formatted(table)
    report = storage.reports_dir / f"{report_name}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"# {title}\n\n{note}\n\n" + readable.to_markdown(index=False) + "\n\n"
                      + "Single seeds:\n\n" + comparison.formatted(seeds).to_markdown(index=False) + "\n")
    (storage.reports_dir / f"{report_name}.json").write_text(json.dumps(table.to_dict(orient="records"), indent=1, default=float))
    metadata = {
        "results": dg.MetadataValue.md(readable.to_markdown(index=False)),
        "seeds": dg.MetadataValue.md(comparison.formatted(seeds).to_markdown(index=False)),
        "equity": dg.MetadataValue.md(figure_to_markdown(fig, f"equity {title}")),
        "report": dg.MetadataValue.path(str(report)),
        "variants_tried": comparison.variants_tried(),
        "note": note,
    }
    return table, metadata


def comparison_note(n_strategies: int) -> str:
    return (f"Net of 10 bps fee + 5 bps slippage per side; weekly rebalances decided at Sunday's close. "
            f"ΔSharpe: strategy minus equal weight (EW) or BTC buy-and-hold; ΔCAGR: (1 + CAGR) / (1 + CAGR of "
            f"the reference) - 1, how much faster it compounded per year; 95% stationary-bootstrap intervals "
            f"(configs/allocation.yaml). † Sortino with a negative mean return (it ranks losers by volatility). "
            f"{n_strategies} strategies in this table; {comparison.variants_tried()} variants tried on these data "
            f"(configs/allocation.yaml variants_tried).")


@dg.asset(
    group_name=GROUP,
    partitions_def=SPLIT,
    ins={**MARKET_INS, "vol_forecasts": dg.AssetIn(partition_mapping=ALL), "ppo_policy": dg.AssetIn()},
    metadata={"partition_expr": "split"},
    pool="warehouse",
)
def allocation_backtest(
    context: dg.AssetExecutionContext, storage: ProjectStorage, daily_bars: pd.DataFrame,
    regime_probabilities: pd.DataFrame, daily_closes: pd.DataFrame, universe: pd.DataFrame,
    vol_forecasts: pd.DataFrame, ppo_policy: dict,
) -> dg.Output[pd.DataFrame]:
    """The PPO ensemble (and the mean ± sd of its seeds alone) against BTC buy-and-hold, equal
    weight, inverse volatility (on trailing and on forecast volatility), momentum + inverse vol
    and the regime rules (calibrated on `train`) on the split: weekly rebalances, decisions at
    Sunday's close traded at Monday's open, 10 bps fee + 5 bps slippage per side, metrics on
    daily net returns over 365 days a year, differences to equal weight and BTC with bootstrap
    intervals."""
    split = splits()[context.partition_key]
    train = splits()["train"]
    data = _inputs(daily_bars, regime_probabilities, daily_closes, universe)
    strategies = backtest_benchmarks(data.prices, vol_forecasts)
    calibration = rules.calibrate(data, train.start, train.end)
    strategies.update(rules.rule_strategies(data, calibration))
    results = comparison_results(data, ppo_policy, strategies, split.start, split.end)
    n_shown = len([n for n in results if not n.startswith(comparison.SEED_PREFIX)])
    table, metadata = describe_comparison(
        results, f"Allocation backtest, {split.name} ({split.start}..{split.end})", storage,
        f"allocation_{split.name}", comparison_note(n_shown),
    )
    table.insert(0, "split", split.name)
    ensemble = table.loc[table["strategy"] == comparison.ENSEMBLE].iloc[0]
    context.log.info(f"allocation_backtest[{split.name}]: ppo ensemble total {ensemble['total_return']:+.2%}, "
                     f"Sharpe {ensemble['sharpe']:.3f} ({ensemble['sharpe_vs_ew']:+.2f} vs EW "
                     f"[{ensemble['sharpe_vs_ew_low']:+.2f}, {ensemble['sharpe_vs_ew_high']:+.2f}])")
    metadata.update({
        "rule_calibration": dg.MetadataValue.json(calibration.as_dict()),
        "ppo_sharpe": float(ensemble["sharpe"]),
        "ppo_total_return": float(ensemble["total_return"]),
        "ppo_annual_turnover": float(ensemble["annual_turnover"]),
    })
    return dg.Output(table, metadata=metadata)
