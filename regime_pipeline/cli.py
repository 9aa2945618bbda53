"""`regime-pipeline`: run the pipeline end to end on the embedded data, stage by stage.

Each stage materializes a selection of assets in this process against the Dagster
instance in ``$DAGSTER_HOME`` (the project root's ``dagster.yaml`` keeps it under
``data/``), so every run, materialization and check shows up in the UI afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.configs import PROJECT_ROOT, data_settings, history_start, splits
from regime_pipeline.core.regimes import labels as regimes
from regime_pipeline.core.features import vol_forecasts
from regime_pipeline.partitions import ORIGIN_NAMES, SPLIT_NAMES
from regime_pipeline.recovery import SayLog, free_dead_runs, stop_on_signals
from regime_pipeline.resources import default_data_dir
from regime_pipeline.resources.warehouse import read_table


@dataclass(frozen=True)
class Stage:
    name: str
    assets: tuple[str, ...]
    partitions: str  # "daily" (the run's date range), "split" (each split), "weekly", "origins" (every
    # walk-forward origin in one run), "origin" (one run per origin), or "none"


STAGES = (
    Stage("bars", ("minute_bars", "daily_bars"), "daily"),
    Stage("closes", ("daily_closes",), "none"),
    Stage("universe", ("universe",), "daily"),
    Stage("garch", ("garch_params",), "none"),
    Stage("features", ("vol_features", "trend_features", "cross_features"), "daily"),
    Stage("forecast_models", ("vol_forecast_models",), "none"),
    Stage("forecasts", ("vol_forecasts",), "daily"),
    Stage("forecast_reports", ("vol_forecast_report",), "split"),
    Stage("hmm", ("hmm_models",), "none"),
    Stage("labels", ("regime_labels",), "split"),
    Stage("selection", ("selected_features",), "none"),
    Stage("detectors", ("vol_detector", "trend_detector", "cross_detector"), "none"),
    Stage("reports", ("detector_reports",), "split"),
    Stage("probabilities", ("regime_probabilities",), "daily"),
    Stage("walk_forward_models", ("walk_forward_models",), "origins"),
    Stage("walk_forward", ("walk_forward_probabilities",), "origins"),
    Stage("walk_forward_reports", ("walk_forward_reports",), "origin"),
    Stage("policy", ("ppo_policy",), "none"),
    Stage("backtest", ("allocation_backtest",), "split"),
    Stage("rebalance", ("weekly_rebalance",), "weekly"),
)


def _instance() -> dg.DagsterInstance:
    """The instance in ``$DAGSTER_HOME``; by default ``data/dagster``, configured by the
    project root's ``dagster.yaml`` (linked there, as `make` does)."""
    if "DAGSTER_HOME" not in os.environ:
        home = PROJECT_ROOT / "data" / "dagster"
        home.mkdir(parents=True, exist_ok=True)
        link = home / "dagster.yaml"
        if not link.exists():
            link.symlink_to(Path("..") / ".." / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


def paper_weeks(last: dt.date) -> list[dt.date]:
    """The Mondays the paper book trades in a run ending on `last`: every week of the holdout
    split (a year of weekly rebalances replayed), through the last Monday whose Sunday close is
    at or before `last`."""
    holdout = splits()["holdout"].start
    first = holdout + dt.timedelta(days=(7 - holdout.weekday()) % 7)
    final = last + dt.timedelta(days=1) - dt.timedelta(days=(last + dt.timedelta(days=1)).weekday())
    if final < first:
        first = final
    return [first + dt.timedelta(days=7 * i) for i in range((final - first).days // 7 + 1)]


def run_stage(stage: Stage, first: dt.date, last: dt.date, instance: dg.DagsterInstance) -> None:
    """Materialize `stage`: one run over ``first..last``, one run per split, or one run."""
    from regime_pipeline.definitions import build_defs

    # Resources are read from the environment now, not when the module was first imported.
    defs = build_defs()
    keys = [dg.AssetKey(name) for name in stage.assets]
    job = defs.resolve_implicit_job_def_def_for_assets(keys)
    if stage.partitions == "daily":
        runs = [(f"{first} .. {last}", {"tags": {ASSET_PARTITION_RANGE_START_TAG: first.isoformat(),
                                                  ASSET_PARTITION_RANGE_END_TAG: last.isoformat()}})]
    elif stage.partitions == "weekly":
        weeks = paper_weeks(last)
        runs = [(f"{weeks[0]} .. {weeks[-1]} ({len(weeks)} weeks)",
                 {"tags": {ASSET_PARTITION_RANGE_START_TAG: weeks[0].isoformat(),
                           ASSET_PARTITION_RANGE_END_TAG: weeks[-1].isoformat()}})]
    elif stage.partitions == "split":
        runs = [(split, {"partition_key": split}) for split in SPLIT_NAMES]
    elif stage.partitions == "origins":
        runs = [(f"origins {ORIGIN_NAMES[0]} .. {ORIGIN_NAMES[-1]}",
                 {"tags": {ASSET_PARTITION_RANGE_START_TAG: ORIGIN_NAMES[0], ASSET_PARTITION_RANGE_END_TAG: ORIGIN_NAMES[-1]}})]
    elif stage.partitions == "origin":
        runs = [(f"origin {origin}", {"partition_key": origin}) for origin in ORIGIN_NAMES]
    else:
        runs = [("", {})]
    for label, kwargs in runs:
        began = time.monotonic()
        print(f"==> {stage.name}: {', '.join(stage.assets)} {label}".rstrip(), flush=True)
        result = job.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=False, **kwargs)
        failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
        for check in failed_checks:
            print(f"    check failed: {check.asset_key.to_user_string()}.{check.check_name}", file=sys.stderr)
        if not result.success or failed_checks:
            raise SystemExit(f"{stage.name} failed (run {result.run_id}); see the run's logs in the UI (make ui)")
        print(f"    done in {time.monotonic() - began:.1f}s", flush=True)


def summarize(data_dir: str, upto: str) -> str:
    """A short text report of what the run produced."""
    database = os.path.join(data_dir, "warehouse.duckdb")
    bars = read_table(database, "daily_bars")
    out = ["Daily bars by asset:", bars.groupby("symbol").agg(
        first=("date", "min"), last=("date", "max"), bars=("date", "size"),
        from_minutes=("source", lambda s: int((s == "minutes").sum())), last_close=("close", "last"),
    ).sort_values("first").to_string()]
    names = [s.name for s in STAGES]
    if names.index(upto) >= names.index("universe"):
        out.append(universe_summary(database))
    if names.index(upto) >= names.index("forecast_reports"):
        out.append(forecast_summary(data_dir))
    if names.index(upto) >= names.index("labels"):
        labels = read_table(database, "regime_labels")
        regime_names = {kind: regimes.settings()[kind]["names"] for kind in ("vol", "trend", "cross")}
        for kind in ("vol", "trend", "cross"):
            frame = labels.drop_duplicates(["split", "date"]) if kind == "cross" else labels
            table = pd.crosstab(frame[f"{kind}_regime"], frame["split"]).reindex(
                index=regime_names[kind], columns=SPLIT_NAMES, fill_value=0
            )
            out += [f"\n{kind} regime days per split ({'dates' if kind == 'cross' else 'asset-days'}):", table.to_string()]
    if names.index(upto) >= names.index("selection"):
        chosen = json.loads((Path(data_dir) / "models" / "selected_features.json").read_text())
        out.append("\nSelected features:")
        out += [f"  {group:5s} {', '.join(chosen[group]['selected'])}" for group in ("vol", "trend", "cross")]
    if names.index(upto) >= names.index("reports"):
        rows = []
        for kind in ("vol", "trend", "cross"):
            for split in SPLIT_NAMES:
                report = json.loads((Path(data_dir) / "reports" / f"{kind}_detector_{split}.json").read_text())
                rows.append({"detector": f"{kind}_detector", "split": split, "accuracy": report["accuracy"],
                             "balanced_accuracy": report["balanced_accuracy"], "macro_f1": report["macro_f1"]})
        out += ["\nDetectors (fitted on train, early-stopped on val):",
                pd.DataFrame(rows).to_string(index=False, float_format="{:.4f}".format)]
    if names.index(upto) >= names.index("walk_forward_reports"):
        out.append(walk_forward_summary(data_dir))
    if names.index(upto) >= names.index("policy"):
        policy = json.loads((Path(data_dir) / "models" / "ppo_policy.json").read_text())
        seeds = ", ".join(f"seed {seed}: {s['val_sortino']:+.3f} at step {s['kept_step']:,}" for seed, s in policy["seeds"].items())
        out.append(f"\nPPO policy (val Sortino, early-stopped): {seeds}; deployed seed {policy['chosen_seed']}")
    if names.index(upto) >= names.index("backtest"):
        table = read_table(database, "allocation_backtest")
        table = table.set_index(["split", "strategy"]).loc[SPLIT_NAMES].reset_index()
        out += ["\nAllocation backtests (weekly, net of 15 bps per side, 365-day annualisation):",
                table.to_string(index=False, float_format="{:.4f}".format)]
    if names.index(upto) >= names.index("rebalance"):
        out += ["", (Path(data_dir) / "reports" / "weekly_rebalance.md").read_text()]
    return "\n".join(out)


def universe_summary(database: str) -> str:
    """The universe's mode, its membership changes and the members of its last day."""
    from regime_pipeline.configs import universe
    from regime_pipeline.core.data.universe import changes

    rows = read_table(database, "universe")
    table = changes(rows)
    last = rows.loc[rows["member"] & (rows["date"] == rows["date"].max()), "symbol"]
    members = rows.loc[rows["member"]].groupby("symbol").size().sort_values(ascending=False)
    per_asset = ", ".join(f"{symbol.removesuffix('USDT')} {days}" for symbol, days in members.items())
    names = ", ".join(sorted(symbol.removesuffix("USDT") for symbol in last))
    return (f"\nUniverse ({universe().mode}): {len(table)} membership changes; members on {rows['date'].max()}: {names}\n"
            f"Member-days per asset: {per_asset}")


def walk_forward_summary(data_dir: str) -> str:
    """Per origin, detector and target: the detector's balanced accuracy against the best baseline's."""
    rows = []
    for origin in ORIGIN_NAMES:
        report = json.loads((Path(data_dir) / "reports" / f"walk_forward_{origin}.json").read_text())
        rows += [{"origin": origin, **r} for r in report["summary"] if r["target"] != "jump"]
    table = pd.DataFrame(rows)[["origin", "detector", "target", "n", "detector_bal_acc", "best_baseline",
                                "baseline_bal_acc", "lift", "lift_low", "lift_high"]]
    return ("\nWalk-forward (origin Y: fitted before Y - 1, early-stopped on Y - 1, scored on Y; balanced accuracy,"
            " lift over the best baseline with a 90% block-bootstrap interval):\n"
            + table.to_string(index=False, float_format="{:.3f}".format))


def forecast_summary(data_dir: str) -> str:
    """The vol forecasts' pooled RMSE and QLIKE per split, from the reports' JSON files."""
    rows = []
    for split in SPLIT_NAMES:
        scores = json.loads((Path(data_dir) / "reports" / f"vol_forecasts_{split}.json").read_text())
        rows += [{**r, "split": split} for r in scores if r["symbol"] == "pooled"]
    frame = pd.DataFrame(rows).assign(model=lambda f: pd.Categorical(f["model"], list(vol_forecasts.MODELS)))
    out = ["\nVol forecasts, pooled across assets (target: realized vol of the next h days, daily units; fitted on train):"]
    for metric in ("rmse", "qlike"):
        table = frame.pivot_table(index=["horizon_days", "model"], columns="split", values=metric, observed=True)
        table = table.reindex(columns=SPLIT_NAMES)
        out += [f"{metric.upper()}:", table.to_string(float_format="{:.4f}".format)]
    return "\n".join(out)


def _say(message: str) -> None:
    print(f"    {message}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> None:
    instance = _instance()
    if args.walk_forward_profile:
        os.environ["REGIME_WALK_FORWARD_PROFILE"] = args.walk_forward_profile
    first = dt.date.fromisoformat(args.start)
    last = dt.date.fromisoformat(args.end)
    names = [s.name for s in STAGES]
    # Ctrl-C and SIGTERM stop the command; runs whose process died are failed and their pool slots freed.
    with stop_on_signals(instance, _say):
        for stage in STAGES[names.index(args.from_stage) : names.index(args.until) + 1]:
            run_stage(stage, first, last, instance)
    print()
    print(summarize(default_data_dir(), args.until))
    print("\nOpen the UI with `make ui` to see every asset, its metadata, plots and checks.")


def cmd_recover(args: argparse.Namespace) -> None:
    """Fail the runs whose process died and free their pool slots (after a crash, without the daemon)."""
    freed = free_dead_runs(_instance(), SayLog(_say))
    print(f"{len(freed)} run(s) freed" if freed else "no dead run holds a pool slot")


def main(argv: list[str] | None = None) -> None:
    # Single-run backfill policies are marked beta in Dagster; the notice would repeat on every run.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    pd.set_option("display.width", 160)
    parser = argparse.ArgumentParser(prog="regime-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the pipeline over a date range (default: all embedded data)")
    run.add_argument("--start", default=history_start().isoformat(), help="first UTC day (YYYY-MM-DD)")
    run.add_argument("--end", default=data_settings()["embedded"]["last_day"].isoformat(), help="last UTC day (YYYY-MM-DD)")
    stage_names = [s.name for s in STAGES]
    run.add_argument("--from", dest="from_stage", default=stage_names[0], choices=stage_names, help="first stage to run")
    run.add_argument("--until", default=stage_names[-1], choices=stage_names, help="last stage to run")
    run.add_argument("--walk-forward-profile", choices=["light", "full"],
                     help="detector profile of the walk-forward (default: configs/walk_forward.yaml's, light)")
    run.set_defaults(func=cmd_run)
    recover = sub.add_parser("recover", help="after a crash: fail the runs whose process died, free their pool slots")
    recover.set_defaults(func=cmd_recover)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
