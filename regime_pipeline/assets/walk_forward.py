"""Stage 3b, walk-forward: per-origin labelers and detectors, out-of-sample probabilities, ladders.

Origin Y fits on the days before Y - 1 (purged), early-stops on Y - 1 and predicts Y
(``core/regimes/walk_forward.py``). `walk_forward_models` and `walk_forward_probabilities`
take several origins in one run (a single-run backfill), so the independent fits of all
origins share the worker processes; `walk_forward_reports` is one run per origin, so each
origin's ladder, confusion matrices and durations show on its own partition in the UI.
"""


import json
import os

import dagster as dg
import numpy as np
import pandas as pd

from regime_pipeline.configs import universe as universe_config
from regime_pipeline.core.data import universe as pit
from regime_pipeline.assets.metadata import warnings_to_log
from regime_pipeline.core.plots import figure_to_markdown, plot_training
from regime_pipeline.core.regimes import ladder
from regime_pipeline.core.regimes import walk_forward as wf
from regime_pipeline.core.regimes.metrics import plot_confusion
from regime_pipeline.partitions import ORIGIN
from regime_pipeline.resources.deployment import training_backfill_policy, step_tags
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "walk_forward"
ALL = dg.AllPartitionMapping()
HISTORY = {name: dg.AssetIn(partition_mapping=ALL) for name in ("daily_bars", "trend_features", "cross_features", "universe")}
PROFILE_ENV = "REGIME_WALK_FORWARD_PROFILE"


class WalkForwardConfig(dg.Config):
    profile: str = ""
    """Detector training profile in configs/walk_forward.yaml (`light`, `full`, `fast`); empty:
    $REGIME_WALK_FORWARD_PROFILE, else the file's `profile`."""
    workers: int = 0
    """Worker processes for the independent fits; 0: the file's `workers`."""


def _profile(config: WalkForwardConfig) -> str:
    return config.profile or os.environ.get(PROFILE_ENV) or wf.settings()["profile"]


def _md(frame: pd.DataFrame, floatfmt: str = ".3f") -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=floatfmt) if len(frame) else "no rows")


def _origins(context: dg.AssetExecutionContext) -> list[int]:
    return sorted(int(key) for key in context.partition_keys)


def _on_universe(daily_bars: pd.DataFrame, universe: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The candidates' bars and the universe's member rows (``date, symbol``)."""
    return daily_bars.loc[daily_bars["symbol"].isin(universe_config().candidates)], pit.members_by_day(universe)


@dg.asset(
    group_name=GROUP,
    partitions_def=ORIGIN,
    backfill_policy=training_backfill_policy(),
    ins=HISTORY,
    kinds={"pytorch", "hmmlearn"},
    op_tags=step_tags("walk_forward_models"),
)
def walk_forward_models(
    context: dg.AssetExecutionContext, config: WalkForwardConfig, storage: ProjectStorage,
    daily_bars: pd.DataFrame, trend_features: pd.DataFrame, cross_features: pd.DataFrame, universe: pd.DataFrame,
) -> dg.MaterializeResult:
    """Per origin: GARCH parameters, vol/trend HMMs, a cross HMM (filter baseline), jump models
    and forward-target cuts fitted on the origin's fit window; then the three detectors for
    each target (forward, same_day), early-stopped on Y - 1. Files under
    data/models/walk_forward/<origin>/, every detector with its recorded windows."""
    origins = _origins(context)
    profile = _profile(config)
    workers = config.workers or int(wf.settings()["workers"])
    bars, members = _on_universe(daily_bars, universe)
    with warnings_to_log(context):
        labelers, trained = wf.fit_origins(bars, trend_features, cross_features, origins, storage.models_dir,
                                           profile, workers, log=context.log.info, warn=context.log.warning, members=members)
    windows = pd.DataFrame([{**labelers[o].windows.record(), "garch_median_for": ", ".join(labelers[o].garch_pooled) or "none"}
                            for o in origins])
    summary = pd.DataFrame([{k: r[k] for k in ("origin", "target", "kind", "best_epoch", "epochs_run", "val_macro_f1",
                                               "seconds")} for r in trained])
    curves = {}
    for r in trained:
        if r["origin"] == origins[-1]:
            fig = plot_training(r["history"], r["best_epoch"] - 1, f"{r['origin']} {r['target']} {r['kind']}_detector")
            curves[f"training_{r['target']}_{r['kind']}"] = dg.MetadataValue.md(figure_to_markdown(fig, "training"))
    return dg.MaterializeResult(metadata={
        "profile": profile,
        "windows": _md(windows),
        "detectors": _md(summary),
        "train_seconds_total": round(float(summary["seconds"].sum()), 1),
        "paths": dg.MetadataValue.path(str(storage.models_dir / "walk_forward")),
        **curves,
    })


NO_MODEL_SAW_ITS_DAY = dg.AssetCheckSpec(
    "no_model_saw_its_day", asset="walk_forward_probabilities", blocking=True,
    description="every row's day d is after its models' fit window + purge and their val window + label horizon",
)


@dg.asset(
    group_name=GROUP,
    partitions_def=ORIGIN,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[walk_forward_models],
    ins=HISTORY,
    metadata={"partition_expr": "origin"},
    check_specs=[NO_MODEL_SAW_ITS_DAY],
    pool="warehouse",
)
def walk_forward_probabilities(
    context: dg.AssetExecutionContext, storage: ProjectStorage,
    daily_bars: pd.DataFrame, trend_features: pd.DataFrame, cross_features: pd.DataFrame, universe: pd.DataFrame,
):
    """For origin Y, the days of Y only: per (target, date, symbol) the three detectors' class
    probabilities from inputs ending that day, by models that never saw Y or its label horizon.
    The columns of `regime_probabilities` plus `origin` and `target` (forward, same_day):
    stitched over origins, every day from the first origin on has a probability no model saw."""
    parts, records = [], []
    bars, members = _on_universe(daily_bars, universe)
    with warnings_to_log(context):  # once for all origins, not once per origin
        for origin in _origins(context):
            labelers = wf.Labelers.from_dict(json.loads(wf.labelers_path(storage.models_dir, origin).read_text()))
            data = wf.origin_data(labelers, bars, trend_features, cross_features, members)
            parts.append(wf.probabilities(data, storage.models_dir))
            records.append(wf.model_records(storage.models_dir, origin))
            context.log.info(f"origin {origin}: {len(parts[-1])} rows")
    frame = pd.concat(parts, ignore_index=True)
    bad = wf.unseen_violations(frame, pd.concat(records, ignore_index=True))
    counts = frame.groupby(["origin", "target"]).agg(rows=("date", "size"), first=("date", "min"), last=("date", "max"),
                                                     symbols=("symbol", "nunique")).reset_index()
    yield dg.Output(frame, metadata={"rows": len(frame), "per_origin": _md(counts)})
    yield dg.AssetCheckResult(
        check_name="no_model_saw_its_day", passed=bad.empty,
        metadata={"rows_checked": len(frame), "violations": len(bad),
                  "first_violation": str(bad.iloc[0].to_dict()) if len(bad) else "none"},
    )


@dg.asset(
    group_name=GROUP,
    partitions_def=ORIGIN,
    ins={**HISTORY, "walk_forward_probabilities": dg.AssetIn()},
    metadata={"partition_expr": "origin"},
    pool="warehouse",
)
def walk_forward_reports(
    context: dg.AssetExecutionContext, storage: ProjectStorage, daily_bars: pd.DataFrame,
    trend_features: pd.DataFrame, cross_features: pd.DataFrame, universe: pd.DataFrame,
    walk_forward_probabilities: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """The origin's ladder: for every detector and target (and the jump model's labels), the
    majority class, persistence, the HMM's causal filter, logistic regression and a depth-3
    tree beside the detector on the same days of Y -- accuracy, balanced accuracy, macro-F1,
    log loss, per-class recall, the lift over the best baseline with a block-bootstrap
    interval; confusion matrices and mean regime durations. Also data/reports/walk_forward_<Y>.md."""
    origin = int(context.partition_key)
    labelers = wf.Labelers.from_dict(json.loads(wf.labelers_path(storage.models_dir, origin).read_text()))
    bars, members = _on_universe(daily_bars, universe)
    with warnings_to_log(context):
        data = wf.origin_data(labelers, bars, trend_features, cross_features, members)
    rows, plots, durations, summary = ladder_rows(data, walk_forward_probabilities)
    table = pd.DataFrame(rows)
    write_report(storage, origin, table, summary, durations)
    context.log.info(f"origin {origin}:\n{summary.to_string(index=False)}")
    return dg.Output(table, metadata={
        "detector_vs_best_baseline": _md(summary),
        "ladder": _md(table.drop(columns=["origin"])),
        "mean_regime_days": _md(durations, ".1f"),
        **plots,
    })


def ladder_rows(data: wf.OriginData, probs: pd.DataFrame):
    """Run every ladder of an origin: (table rows, confusion plots, durations, summary)."""
    w = data.labelers.windows
    config = wf.settings()
    h = wf.horizons()
    rows, plots, durations, summary = [], {}, [], []
    for kind in wf.KINDS:
        inputs = ladder.kind_inputs(kind, data)
        classes = ladder.regime_names(kind)
        targets = ("forward", "same_day", "jump") if kind in wf.LABELED_KINDS else ("forward", "same_day")
        for target in targets:
            detector = probs.loc[probs["target"] == target] if target in wf.TARGETS else None
            result = ladder.run_ladder(kind, target, h.get(target, {}).get(kind, 0), inputs, data.targets[target],
                                       classes, (w.fit_start, w.fit_end), (w.predict_start, w.predict_end),
                                       detector, config)
            for r in result["rows"]:
                recall = ", ".join(f"{c} {v:.2f}" if v is not None else f"{c} -" for c, v in r["recall"].items())
                rows.append({"origin": str(w.origin), "detector": f"{kind}_detector", "target": target, "model": r["model"],
                             "days": result["days"], **{k: r[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1",
                                                                         "log_loss")},
                             "recall": recall, "best_baseline": r.get("best_baseline"), "lift": r.get("lift", np.nan),
                             "lift_low": r.get("lift_low", np.nan), "lift_high": r.get("lift_high", np.nan)})
            best = result.get("best_baseline")
            det = next((r for r in result["rows"] if r["model"] == "detector"), None)
            best_row = next((r for r in result["rows"] if r["model"] == best), None)
            summary.append({"detector": f"{kind}_detector", "target": target, "n": result["scored"],
                            "detector_bal_acc": det["balanced_accuracy"] if det else np.nan,
                            "best_baseline": best, "baseline_bal_acc": best_row["balanced_accuracy"] if best_row else np.nan,
                            "lift": det["lift"] if det else np.nan, "lift_low": det["lift_low"] if det else np.nan,
                            "lift_high": det["lift_high"] if det else np.nan})
            for model in ("detector", best):
                if model in result["confusion"]:
                    fig = plot_confusion(result["confusion"][model], classes, f"{w.origin} {kind} {target}: {model}")
                    plots[f"confusion_{kind}_{target}_{model}"] = dg.MetadataValue.md(figure_to_markdown(fig, "confusion"))
        mean_days = ladder.mean_durations(kind, data, inputs, classes, (w.predict_start, w.predict_end))
        durations.append({"kind": kind, **mean_days})
    return rows, plots, pd.DataFrame(durations), pd.DataFrame(summary)


def write_report(storage: ProjectStorage, origin: int, table: pd.DataFrame, summary: pd.DataFrame,
                 durations: pd.DataFrame) -> None:
    path = storage.reports_dir / f"walk_forward_{origin}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# Walk-forward origin {origin}", "",
             "Detector against the best baseline (balanced accuracy; lift with a block-bootstrap interval)", "",
             summary.to_markdown(index=False, floatfmt=".3f"), "", "Ladder", "",
             table.drop(columns=["origin"]).to_markdown(index=False, floatfmt=".3f"), "",
             "Mean regime duration (days) over the origin's year", "", durations.to_markdown(index=False, floatfmt=".1f"), ""]
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps({"summary": summary.to_dict("records"), "ladder": table.to_dict("records"),
                                                     "durations": durations.to_dict("records")}, indent=1, default=str))
