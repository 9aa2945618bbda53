"""`regime-pipeline`: run the pipeline end to end on the embedded data, stage by stage.

Each stage materializes a selection of assets in this process against the Dagster
instance in ``$DAGSTER_HOME`` (the project root's ``dagster.yaml`` keeps it under
``data/``), so every run, materialization and check shows up in the UI afterwards.

The terminal shows one progress line per stage (partitions materialized, elapsed time),
the runs' warnings and errors in full, then the results. Dagster's own per-event log lines
stay in the runs' logs, in the UI; ``--verbose`` prints them here as well.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import dagster as dg
import pandas as pd
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from dagster._core.utils import make_new_run_id

from regime_pipeline.configs import PROJECT_ROOT, data_settings, history_start, splits
from regime_pipeline.core.regimes import labels as regimes
from regime_pipeline.core.features import vol_forecasts
from regime_pipeline.partitions import ORIGIN_NAMES, POLICY_ORIGIN_NAMES, POLICY_SEED_NAMES, SPLIT_NAMES
from regime_pipeline.recovery import SayLog, free_dead_runs, stop_on_signals
from regime_pipeline.resources import default_data_dir
from regime_pipeline.resources.warehouse import read_table


@dataclass(frozen=True)
class Stage:
    name: str
    assets: tuple[str, ...]
    partitions: str  # "daily" (the run's date range), "split" (each split), "weekly", "origins" (every
    # walk-forward origin in one run), "origin" (one run per origin), "policy_origin" (one run per
    # walk-forward policy origin), "seeds" (the fixed split's PPO seeds in one run), "policy_seeds" (every
    # seed of every policy origin in one run), or "none"


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
    Stage("policy_seeds", ("ppo_seed_policy",), "seeds"),
    Stage("policy", ("ppo_policy",), "none"),
    Stage("backtest", ("allocation_backtest",), "split"),
    Stage("walk_forward_seeds", ("walk_forward_seed_policy",), "policy_seeds"),
    Stage("walk_forward_policy", ("walk_forward_policy",), "policy_origin"),
    Stage("walk_forward_backtest", ("walk_forward_backtest",), "policy_origin"),
    Stage("walk_forward_allocation", ("walk_forward_allocation",), "none"),
    Stage("rebalance", ("weekly_rebalance",), "weekly"),
)


# Run config that keeps Dagster's console logger, which prints a line per event, quiet; the
# events stay in the run's logs, in the UI.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class StageRun:
    """One Dagster run of a stage."""

    label: str  # which partitions, as the stage's header shows them
    kwargs: dict[str, Any]  # the partition arguments of `execute_in_process`
    partitions: int  # partitions of each of the stage's assets the run materializes


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


def _range_tags(first: dt.date, last: dt.date) -> dict[str, Any]:
    return {"tags": {ASSET_PARTITION_RANGE_START_TAG: first.isoformat(), ASSET_PARTITION_RANGE_END_TAG: last.isoformat()}}


def _seed_runs(profile: str, origins: list[str] | None = None) -> list[StageRun]:
    """The runs that train the PPO seeds of `profile`: of the fixed split (`origins` None) in one
    run; of the walk-forward's `origins` all in one run when the profile trains every seed
    partition, else one run per origin over its seeds (a range of seed partitions)."""
    from regime_pipeline.core.allocation import ppo

    seeds = [str(s) for s in ppo.settings(profile).seeds]
    start = POLICY_SEED_NAMES.index(seeds[0]) if seeds[0] in POLICY_SEED_NAMES else -1
    if start < 0 or POLICY_SEED_NAMES[start : start + len(seeds)] != seeds:
        raise SystemExit(f"PPO profile {profile!r} trains seeds {seeds}: the seed partitions are "
                         f"{POLICY_SEED_NAMES} (configs/ppo.yaml `default`), and a run takes a contiguous range of them")

    def over(first: str, last: str) -> dict[str, Any]:
        return {"tags": {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}}

    if origins is None:
        return [StageRun(f"seeds {seeds[0]} .. {seeds[-1]}", over(seeds[0], seeds[-1]), len(seeds))]
    if seeds == POLICY_SEED_NAMES:
        return [StageRun(f"origins {origins[0]} .. {origins[-1]} x seeds {seeds[0]} .. {seeds[-1]}",
                         over(f"{origins[0]}|{seeds[0]}", f"{origins[-1]}|{seeds[-1]}"), len(origins) * len(seeds))]
    return [StageRun(f"origin {o} x seeds {seeds[0]} .. {seeds[-1]}", over(f"{o}|{seeds[0]}", f"{o}|{seeds[-1]}"),
                     len(seeds)) for o in origins]


def stage_runs(stage: Stage, first: dt.date, last: dt.date, ppo_profile: str = "") -> list[StageRun]:
    """The runs that materialize `stage`: one over ``first..last``, one per split, every origin in
    one, one per origin, one per policy origin, the PPO seeds of `ppo_profile` (empty: `default`
    for the fixed split's, configs/allocation.yaml's for the walk-forward's), or one."""
    if stage.partitions == "daily":
        return [StageRun(f"{first} .. {last}", _range_tags(first, last), (last - first).days + 1)]
    if stage.partitions == "weekly":
        weeks = paper_weeks(last)
        return [StageRun(f"{weeks[0]} .. {weeks[-1]} ({len(weeks)} weeks)", _range_tags(weeks[0], weeks[-1]), len(weeks))]
    if stage.partitions == "split":
        return [StageRun(split, {"partition_key": split}, 1) for split in SPLIT_NAMES]
    if stage.partitions == "origins":
        tags = {ASSET_PARTITION_RANGE_START_TAG: ORIGIN_NAMES[0], ASSET_PARTITION_RANGE_END_TAG: ORIGIN_NAMES[-1]}
        return [StageRun(f"origins {ORIGIN_NAMES[0]} .. {ORIGIN_NAMES[-1]}", {"tags": tags}, len(ORIGIN_NAMES))]
    if stage.partitions == "origin":
        return [StageRun(f"origin {origin}", {"partition_key": origin}, 1) for origin in ORIGIN_NAMES]
    if stage.partitions == "policy_origin":
        return [StageRun(f"origin {origin}", {"partition_key": origin}, 1) for origin in POLICY_ORIGIN_NAMES]
    if stage.partitions == "policy_seeds":
        from regime_pipeline.core.allocation.walk_forward import WalkForwardSettings

        return _seed_runs(ppo_profile or WalkForwardSettings.from_config().ppo_profile, POLICY_ORIGIN_NAMES)
    if stage.partitions == "seeds":
        return _seed_runs(ppo_profile or "default")
    return [StageRun("", {}, 1)]


def _seconds(elapsed: float) -> str:
    return f"{elapsed:.1f} s" if elapsed < 60 else f"{int(elapsed // 60)} min {elapsed % 60:02.0f} s"


def _level(entry: EventLogEntry) -> int:
    level = entry.level
    return level if isinstance(level, int) else logging.getLevelName(str(level).upper())


@dataclass
class Progress:
    """What `regime-pipeline run` prints while it works.

    Per stage: a header naming its assets and partitions, then one line with the partitions
    materialized (of those its runs planned) and the elapsed time. On a terminal the line is
    redrawn in place every second and ends with the stage's latest log message; otherwise it is
    printed once, when the stage ends. Warnings and errors of the runs are printed in full, as
    they come, each text once per stage (a stage of one run per origin would otherwise repeat
    the same caveat for every origin). `on_event` is registered as an event listener of each run.
    """

    out: TextIO = field(default_factory=lambda: sys.stdout)
    live: bool = False
    planned: int = 0
    done: int = 0
    note: str = ""
    began: float = 0.0
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ticker: threading.Thread | None = None
    _drawn: bool = False
    _said: set[str] = field(default_factory=set)

    def begin(self, stage: Stage, runs: list[StageRun]) -> None:
        labels = ", ".join(r.label for r in runs if r.label)
        self.planned, self.done, self.note = len(stage.assets) * sum(r.partitions for r in runs), 0, ""
        self.began = time.monotonic()
        self._said.clear()
        self._print(f"==> {stage.name}: {', '.join(stage.assets)} {labels}".rstrip())
        if self.live:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

    def on_event(self, entry: EventLogEntry) -> None:
        event = entry.dagster_event
        with self._lock:
            if event is not None and event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                self.done += 1
            elif event is None and entry.user_message:
                self.note = entry.user_message.splitlines()[0]
            if _level(entry) >= logging.WARNING:
                text = self._describe(entry)
                if _level(entry) >= logging.ERROR or text not in self._said:
                    self._said.add(text)
                    self._print(text)
            elif self.live and (event is None or self.done % 500 == 0):
                self._draw()

    def end(self) -> float:
        """Stop the stage's line and print it for good; the stage's elapsed seconds."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        elapsed = time.monotonic() - self.began
        with self._lock:
            self.note = ""
            self._draw(final=True)
        return elapsed

    def _describe(self, entry: EventLogEntry) -> str:
        kind = logging.getLevelName(_level(entry)).lower()
        where = f" [{entry.step_key}]" if entry.step_key else ""
        text = f"    {kind}{where}: {entry.user_message or entry.message}"
        event = entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event is not None else None
        if error is not None:
            text += "\n" + error.to_string().rstrip()
        return text

    def _line(self) -> str:
        line = f"    {self.done:,}/{self.planned:,} partitions, {_seconds(time.monotonic() - self.began)}"
        return f"{line}  {self.note}" if self.note else line

    def _draw(self, final: bool = False) -> None:
        if self.live:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.out.write("\r\033[K" + self._line()[:width] + ("\n" if final else ""))
            self.out.flush()
            self._drawn = not final
        elif final:
            self._print(self._line())

    def _print(self, text: str) -> None:
        with self._lock:
            if self._drawn:
                self.out.write("\r\033[K")
            self.out.write(text + "\n")
            self.out.flush()
            if self._drawn:
                self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw()


def run_stage(stage: Stage, first: dt.date, last: dt.date, instance: dg.DagsterInstance, progress: Progress,
              verbose: bool = False, op_config: dict[str, dict] | None = None) -> float:
    """Materialize `stage` (see `stage_runs`), reporting to `progress`; its elapsed seconds.
    `op_config` holds the run config of assets by name (those of the stage are passed)."""
    from regime_pipeline.definitions import build_defs

    # Resources are read from the environment now, not when the module was first imported.
    defs = build_defs()
    keys = [dg.AssetKey(name) for name in stage.assets]
    job = defs.resolve_implicit_job_def_def_for_assets(keys)
    run_config = {} if verbose else dict(QUIET_CONSOLE)
    ops = {name: config for name, config in (op_config or {}).items() if name in stage.assets}
    if ops:
        run_config["ops"] = ops
    seed_asset = next((name for name in stage.assets if name.endswith("seed_policy")), "")
    profile = (op_config or {}).get(seed_asset, {}).get("config", {}).get("profile", "")
    runs = stage_runs(stage, first, last, profile)
    failed = None
    progress.begin(stage, runs)
    try:
        for run in runs:
            run_id = make_new_run_id()
            instance.add_event_listener(run_id, progress.on_event)
            result = job.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=False,
                                            run_id=run_id, run_config=run_config, **run.kwargs)
            failed_checks = [e for e in result.get_asset_check_evaluations() if not e.passed]
            if not result.success or failed_checks:
                failed = (result.run_id, failed_checks)
                break
    finally:
        elapsed = progress.end()
    if failed is not None:
        run_id, failed_checks = failed
        for check in failed_checks:
            print(f"    check failed: {check.asset_key.to_user_string()}.{check.check_name}", file=sys.stderr)
        raise SystemExit(f"{stage.name} failed (run {run_id}); see the run's logs in the UI (make ui)")
    return elapsed


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
        score = policy["settings"]["val_score"]
        seeds = ", ".join(f"{seed}: {s['val_smoothed']:+.4f} at {s['kept_step']:,}" for seed, s in policy["seeds"].items())
        out.append(f"\nPPO policy, profile {policy['profile']}: ensemble of {len(policy['seeds'])} seeds deployed "
                   f"(mean of their target weights). Kept step and smoothed val {score} per seed: {seeds}")
    if names.index(upto) >= names.index("backtest"):
        table = read_table(database, "allocation_backtest")
        table = table.set_index(["split", "strategy"]).loc[SPLIT_NAMES].reset_index()
        columns = ["split", "strategy", "total_return", "cagr", "sharpe", "sortino", "max_drawdown", "calmar",
                   "annual_turnover", "sharpe_vs_ew", "sharpe_vs_ew_low", "sharpe_vs_ew_high"]
        out += ["\nAllocation backtests (weekly, net of 15 bps per side, 365-day annualisation; Sharpe difference "
                "to equal weight with its 95% bootstrap interval; full tables in data/reports/allocation_<split>.md):",
                table[columns].to_string(index=False, float_format="{:.4f}".format)]
    if names.index(upto) >= names.index("walk_forward_allocation"):
        out.append(walk_forward_allocation_summary(database))
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


def walk_forward_allocation_summary(database: str) -> str:
    """Per policy origin and pooled: each strategy's Sharpe difference to equal weight and BTC."""
    table = read_table(database, "walk_forward_allocation")
    table = table.loc[~table["strategy"].str.startswith("ppo_seeds_")]
    columns = ["origin", "strategy", "total_return", "sharpe", "max_drawdown", "annual_turnover", "sharpe_vs_ew",
               "sharpe_vs_ew_low", "sharpe_vs_ew_high", "sharpe_vs_btc", "sharpe_vs_btc_low", "sharpe_vs_btc_high"]
    return ("\nWalk-forward allocation (origin Y: policy trained before Y - 1 on out-of-sample probabilities, "
            "selected on Y - 1, every strategy scored on Y from cash; net of costs; Sharpe differences with 95% "
            "bootstrap intervals; data/reports/walk_forward_allocation.md):\n"
            + table[columns].to_string(index=False, float_format="{:.3f}".format))


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


def history_note(instance: dg.DagsterInstance, seconds: float) -> str:
    """How much of the run Dagster's event log took, and the size of the run history."""
    storage = instance.event_log_storage
    home = Path(os.environ["DAGSTER_HOME"])
    size = sum(f.stat().st_size for f in home.rglob("*") if f.is_file())
    writes = ""
    if hasattr(storage, "seconds_writing"):
        writes = (f"{storage.events_written:,} events written in {_seconds(storage.seconds_writing)} "
                  f"({storage.seconds_writing / seconds:.0%} of the {_seconds(seconds)}), ")
    return f"Dagster run history: {writes}{size / 2**20:,.0f} MB in {home}"


def cmd_run(args: argparse.Namespace) -> None:
    instance = _instance()
    if args.walk_forward_profile:
        os.environ["REGIME_WALK_FORWARD_PROFILE"] = args.walk_forward_profile
    first = dt.date.fromisoformat(args.start)
    last = dt.date.fromisoformat(args.end)
    names = [s.name for s in STAGES]
    op_config = {name: {"config": {"profile": args.ppo_profile}} for name in ("ppo_seed_policy", "ppo_policy")}
    if args.walk_forward_ppo_profile:
        for name in ("walk_forward_seed_policy", "walk_forward_policy"):
            op_config[name] = {"config": {"profile": args.walk_forward_ppo_profile}}
    progress = Progress(live=sys.stdout.isatty() and not args.verbose)
    began = time.monotonic()
    # Ctrl-C and SIGTERM stop the command; runs whose process died are failed and their pool slots freed.
    with stop_on_signals(instance, _say):
        for stage in STAGES[names.index(args.from_stage) : names.index(args.until) + 1]:
            run_stage(stage, first, last, instance, progress, verbose=args.verbose, op_config=op_config)
    elapsed = time.monotonic() - began
    print()
    print(summarize(default_data_dir(), args.until))
    print(f"\n{history_note(instance, elapsed)}")
    print("Open the UI with `make ui` to see every asset, its metadata, plots and checks.")


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
    run.add_argument("--ppo-profile", default="default", help="PPO training profile in configs/ppo.yaml "
                     "(default; full: longer training, the published figures)")
    run.add_argument("--walk-forward-ppo-profile", help="PPO training profile of the walk-forward policies in "
                     "configs/ppo.yaml (default: configs/allocation.yaml's, light; `default`: the README's table)")
    run.add_argument("--verbose", action="store_true", help="also print Dagster's log line for every event")
    run.set_defaults(func=cmd_run)
    recover = sub.add_parser("recover", help="after a crash: fail the runs whose process died, free their pool slots")
    recover.set_defaults(func=cmd_recover)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
