"""Stage 4, allocation: the PPO policy trained on the detectors' probabilities, and per-split
backtests of it against the four benchmarks on the same accounting and costs."""

import datetime as dt
import io
import json

import dagster as dg
import numpy as np
import pandas as pd

from regime_pipeline.configs import splits, universe as universe_config
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation import performance
from regime_pipeline.core.allocation import ppo
from regime_pipeline.core.allocation.policy import AllocationData, AllocationPolicy
from regime_pipeline.core.plots import figure_to_markdown, plot_equity_curves, plot_validation_curves
from regime_pipeline.core.allocation.strategies import backtest_benchmarks
from regime_pipeline.partitions import SPLIT
from regime_pipeline.resources.artifacts import write_atomic
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "allocation"
ALL = dg.AllPartitionMapping()
METRICS = ["total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar", "annual_turnover"]


class PolicyConfig(dg.Config):
    profile: str = "default"
    """Training profile in configs/ppo.yaml (`default`, or `fast` for a quick check)."""


def _md(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=".4f"))


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


@dg.asset(
    group_name=GROUP,
    io_manager_key="model_io_manager",
    ins=MARKET_INS,
    kinds={"pytorch"},
)
def ppo_policy(
    context: dg.AssetExecutionContext, config: PolicyConfig, storage: ProjectStorage,
    daily_bars: pd.DataFrame, regime_probabilities: pd.DataFrame, daily_closes: pd.DataFrame, universe: pd.DataFrame,
) -> dg.Output[dict]:
    """The weekly allocation policy: SB3 PPO on the detectors' regime probabilities plus the
    portfolio's state, trained on `train` episodes from random starts, evaluated on the whole
    `val` year (Sortino of daily net returns) and early-stopped there, best evaluation kept;
    one policy per seed, the best val seed deployed, every seed reported."""
    settings = ppo.settings(config.profile)
    train, val = splits()["train"], splits()["val"]
    data = _inputs(daily_bars, regime_probabilities, daily_closes, universe)

    def make_train_env():
        return allocation.make_env(
            data, train.start, train.end, episode_weeks=settings.episode_weeks, random_start=True,
            action_scale=settings.action_scale,
        )

    def val_sortino(policy: AllocationPolicy) -> float:
        return performance.sortino(allocation.backtest_policy(policy, data, val.start, val.end).period_returns)

    runs = []
    for seed in settings.seeds:
        context.log.info(f"ppo_policy: seed {seed}, up to {settings.total_timesteps:,} steps, "
                         f"val every {settings.eval_every:,} (patience {settings.patience})")
        run = ppo.train_policy(make_train_env, val_sortino, settings, seed, log=context.log)
        context.log.info(f"ppo_policy: seed {seed} kept step {run.best.step:,} (val Sortino {run.best.score:+.4f}) "
                         f"after {run.steps_run:,} steps in {run.seconds:.0f}s")
        runs.append(run)
    chosen = max(runs, key=lambda r: r.best.score)

    # The SB3 model of the deployed seed, for inspection or further training; the observation
    # statistics it needs are the JSON artifact's `obs_mean`/`obs_var`.
    buffer = io.BytesIO()
    chosen.model.save(buffer)
    zip_path = storage.models_dir / "ppo_policy.zip"
    zip_sha = write_atomic(zip_path, buffer.getvalue())

    per_seed = []
    for run in runs:
        summary = allocation.backtest_policy(run.policy, data, val.start, val.end).summary()
        per_seed.append({"seed": run.seed, "kept_step": run.best.step, "steps_run": run.steps_run,
                         "stopped_early": run.stopped_early, "seconds": round(run.seconds, 1),
                         **{f"val_{k}": summary[k] for k in ("sortino", "sharpe", "total_return", "max_drawdown")}})
    table = pd.DataFrame(per_seed)
    sortino_mean, sortino_sd = allocation.mean_sd(table["val_sortino"])
    return_mean, return_sd = allocation.mean_sd(table["val_total_return"])
    curves = {f"seed {r.seed}": [(e.step, e.score) for e in r.history] for r in runs}
    fig = plot_validation_curves(curves, f"seed {chosen.seed}", chosen.best.step)
    artifact = {
        "chosen_seed": chosen.seed,
        "policy": chosen.policy.to_dict(),
        "seeds": {str(r.seed): {"policy": r.policy.to_dict(), "kept_step": r.best.step, "val_sortino": r.best.score,
                                "history": [[e.step, e.score] for e in r.history]} for r in runs},
        "observation": {"prob_columns": list(data.prob_columns), "symbols": list(data.prices.symbols),
                        "slots": int(make_train_env().n_slots), "universe": universe_config().mode},
        "settings": settings.as_dict(),
        "profile": config.profile,
        "train": [train.start, train.end],
        "val": [val.start, val.end],
        "sb3_model": {"path": str(zip_path), "sha256": zip_sha},
    }
    return dg.Output(artifact, metadata={
        "chosen_seed": chosen.seed,
        "chosen_step": chosen.best.step,
        "val_sortino": chosen.best.score,
        "val_sortino_seeds": f"{sortino_mean:.4f} ± {sortino_sd:.4f} (n={len(runs)})",
        "val_total_return_seeds": f"{return_mean:.2%} ± {return_sd:.2%}",
        "seeds": _md(table),
        "val_sortino_by_step": dg.MetadataValue.md(figure_to_markdown(fig, "val Sortino by step")),
        "sb3_model": dg.MetadataValue.path(str(zip_path)),
        "sb3_model_sha256": zip_sha,
        "profile": config.profile,
    })


def backtest_table(
    data: AllocationData, artifact: dict, vol_forecasts: pd.DataFrame, start: dt.date, end: dt.date,
) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Metrics of the deployed PPO seed, the mean and sd over all seeds, and the benchmarks
    (inverse volatility on both trailing and forecast volatility) on ``start..end``; and their
    equity curves."""
    benchmarks = backtest_benchmarks(data.prices, vol_forecasts)
    seeds = {f"seed {s}": AllocationPolicy.from_dict(v["policy"]) for s, v in artifact["seeds"].items()}
    results = allocation.compare(data, seeds, start, end, benchmarks)
    per_seed = {name: results.pop(name) for name in seeds}
    results = {"ppo": per_seed[f"seed {artifact['chosen_seed']}"], **results}
    summaries = [r.summary() for r in per_seed.values()]
    stats = {k: allocation.mean_sd([s[k] for s in summaries]) for k in METRICS}
    rows = [{"strategy": name, **{k: r.summary()[k] for k in METRICS}} for name, r in results.items()]
    rows.insert(1, {"strategy": f"ppo_seeds_mean (n={len(summaries)})", **{k: m for k, (m, _) in stats.items()}})
    rows.insert(2, {"strategy": "ppo_seeds_sd", **{k: sd for k, (_, sd) in stats.items()}})
    curves = {name: (r.dates, r.equity) for name, r in results.items()}
    return pd.DataFrame(rows), curves


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
    """PPO (the deployed seed, and the mean ± sd over seeds) against BTC buy-and-hold, equal
    weight, inverse volatility (on trailing and on forecast volatility) and momentum + inverse
    vol on the split: weekly rebalances,
    decisions at Sunday's close traded at Monday's open, 10 bps fee + 5 bps slippage per side,
    metrics on daily net returns over 365 days a year."""
    split = splits()[context.partition_key]
    data = _inputs(daily_bars, regime_probabilities, daily_closes, universe)
    table, curves = backtest_table(data, ppo_policy, vol_forecasts, split.start, split.end)
    table.insert(0, "split", split.name)
    fig = plot_equity_curves(curves, f"{split.name} {split.start}..{split.end}, net of costs")
    report = storage.reports_dir / f"allocation_{split.name}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        f"# Allocation backtest, {split.name} ({split.start}..{split.end})\n\n"
        f"PPO seed {ppo_policy['chosen_seed']} (chosen on val), profile {ppo_policy['profile']}.\n\n"
        + table.drop(columns="split").to_markdown(index=False, floatfmt=".4f") + "\n"
    )
    (storage.reports_dir / f"allocation_{split.name}.json").write_text(
        json.dumps(table.to_dict(orient="records"), indent=1, default=float)
    )
    ppo_row = table.iloc[0]
    context.log.info(f"allocation_backtest[{split.name}]: ppo total {ppo_row['total_return']:+.2%}, "
                     f"Sortino {ppo_row['sortino']:.3f}")
    return dg.Output(table, metadata={
        "results": _md(table.drop(columns="split")),
        "equity": dg.MetadataValue.md(figure_to_markdown(fig, f"equity {split.name}")),
        "report": dg.MetadataValue.path(str(report)),
        "ppo_sortino": float(ppo_row["sortino"]),
        "ppo_total_return": float(ppo_row["total_return"]),
    })
