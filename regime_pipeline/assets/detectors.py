"""Stage 3, detectors: two attention LSTMs and a graph network, their reports and daily probabilities."""

import datetime as dt
import json

import dagster as dg
import pandas as pd

from regime_pipeline.assets.bars import window_days
from regime_pipeline.assets.metadata import add_run_metadata
from regime_pipeline.configs import splits
from regime_pipeline.core.data import universe as pit
from regime_pipeline.core.regimes import detectors
from regime_pipeline.core.regimes.metrics import plot_confusion
from regime_pipeline.core.plots import figure_to_markdown, plot_attention, plot_training
from regime_pipeline.partitions import DAILY, SPLIT
from regime_pipeline.resources.deployment import step_tags
from regime_pipeline.resources.storage import ProjectStorage

GROUP = "detectors"
TRAIN_VAL = dg.SpecificPartitionsPartitionMapping(["train", "val"])
ALL = dg.AllPartitionMapping()


class DetectorConfig(dg.Config):
    profile: str = "default"
    """Training profile in configs/models.yaml (`default`, or `fast` for a quick check)."""


def _model_path(storage: ProjectStorage, kind: str):
    return storage.models_dir / f"{kind}_detector.pt"


def _store_detector(storage: ProjectStorage, det: detectors.Detector, result) -> dg.MaterializeResult:
    """Save the fitted detector and describe it: path, hash, chosen epoch, training curve."""
    path = _model_path(storage, det.kind)
    sha = det.save(path, result)
    best = result.best
    fig = plot_training(result.history, result.best_epoch, f"{det.kind}_detector")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "sha256": sha,
        "features": ", ".join(det.columns),
        "best_epoch": result.best_epoch + 1,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "val_macro_f1": float(best["val_macro_f1"]),
        "val_loss": float(best["val_loss"]),
        "train_seconds": round(float(result.seconds), 1),
        "training": dg.MetadataValue.md(figure_to_markdown(fig, "training")),
    })


def _train_sequence(context, config: DetectorConfig, storage: ProjectStorage, kind: str,
                    features: pd.DataFrame, labels: pd.DataFrame, selected: dict) -> dg.MaterializeResult:
    columns = selected[kind]["selected"]
    settings = detectors.settings_for(kind, config.profile)
    det, result = detectors.train_sequence_detector(kind, features, labels, columns, settings, log=context.log)
    return _store_detector(storage, det, result)


@dg.asset(
    group_name=GROUP,
    ins={"vol_features": dg.AssetIn(partition_mapping=ALL), "regime_labels": dg.AssetIn(partition_mapping=TRAIN_VAL)},
    kinds={"pytorch"},
    op_tags=step_tags("vol_detector"),
)
def vol_detector(
    context: dg.AssetExecutionContext, config: DetectorConfig, storage: ProjectStorage,
    vol_features: pd.DataFrame, regime_labels: pd.DataFrame, selected_features: dict,
) -> dg.MaterializeResult:
    """The vol regime detector: LSTM(64) -> scaled dot-product attention with a learnable
    query -> LSTM(32) -> dense head, on 30-day windows of the selected vol features, pooled
    across assets; fitted on train, early-stopped on val macro-F1."""
    return _train_sequence(context, config, storage, "vol", vol_features, regime_labels, selected_features)


@dg.asset(
    group_name=GROUP,
    ins={"trend_features": dg.AssetIn(partition_mapping=ALL), "regime_labels": dg.AssetIn(partition_mapping=TRAIN_VAL)},
    kinds={"pytorch"},
    op_tags=step_tags("trend_detector"),
)
def trend_detector(
    context: dg.AssetExecutionContext, config: DetectorConfig, storage: ProjectStorage,
    trend_features: pd.DataFrame, regime_labels: pd.DataFrame, selected_features: dict,
) -> dg.MaterializeResult:
    """The trend regime detector: the vol detector's architecture on the selected trend features."""
    return _train_sequence(context, config, storage, "trend", trend_features, regime_labels, selected_features)


@dg.asset(
    group_name=GROUP,
    ins={
        "vol_features": dg.AssetIn(partition_mapping=ALL),
        "trend_features": dg.AssetIn(partition_mapping=ALL),
        "daily_bars": dg.AssetIn(partition_mapping=ALL),
        "regime_labels": dg.AssetIn(partition_mapping=TRAIN_VAL),
        "selected_features": dg.AssetIn(),
        "universe": dg.AssetIn(partition_mapping=ALL),
    },
    kinds={"pytorch"},
    op_tags=step_tags("cross_detector"),
)
def cross_detector(
    context: dg.AssetExecutionContext, config: DetectorConfig, storage: ProjectStorage,
    vol_features: pd.DataFrame, trend_features: pd.DataFrame, daily_bars: pd.DataFrame,
    regime_labels: pd.DataFrame, selected_features: dict, universe: pd.DataFrame,
) -> dg.MaterializeResult:
    """The cross-sectional regime detector: a GraphSAGE-style network (mean neighbour
    aggregation as batched dense matrix products) over the universe's members of each date;
    nodes carry the selected vol and trend features, edges the 30-day return correlation; other
    candidates are masked out. Fitted on train, early-stopped on val macro-F1."""
    columns = selected_features["vol"]["selected"] + selected_features["trend"]["selected"]
    settings = detectors.settings_for("cross", config.profile)
    nodes = pit.only_members(detectors.node_features(vol_features, trend_features, columns), pit.members_by_day(universe))
    det, result = detectors.train_cross_detector(nodes, daily_bars, regime_labels, columns, settings, log=context.log)
    return _store_detector(storage, det, result)


DETECTORS = [vol_detector, trend_detector, cross_detector]


@dg.asset(
    group_name=GROUP,
    partitions_def=SPLIT,
    deps=DETECTORS,
    ins={
        "vol_features": dg.AssetIn(partition_mapping=ALL),
        "trend_features": dg.AssetIn(partition_mapping=ALL),
        "daily_bars": dg.AssetIn(partition_mapping=ALL),
        "regime_labels": dg.AssetIn(),
        "universe": dg.AssetIn(partition_mapping=ALL),
    },
    metadata={"partition_expr": "split"},
    pool="warehouse",
)
def detector_reports(
    context: dg.AssetExecutionContext, storage: ProjectStorage, vol_features: pd.DataFrame,
    trend_features: pd.DataFrame, daily_bars: pd.DataFrame, regime_labels: pd.DataFrame, universe: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Each detector scored on the split: accuracy, balanced accuracy, macro-F1, per-class
    precision / recall / support, confusion matrices, and the LSTMs' attention by lag; also
    written as markdown to data/reports/<detector>_<split>.md."""
    split = splits()[context.partition_key]
    rows, summary, metadata, attention = [], [], {}, {}
    for kind in detectors.KINDS:
        det = detectors.Detector.load(_model_path(storage, kind))
        if kind == "cross":
            features = pit.only_members(detectors.node_features(vol_features, trend_features, det.columns),
                                        pit.members_by_day(universe))
        else:
            features = vol_features if kind == "vol" else trend_features
        report = detectors.evaluate(det, split, regime_labels, features, daily_bars)
        name = f"{kind}_detector"
        summary.append({"detector": name, "n": report["n"], "accuracy": report["accuracy"],
                        "balanced_accuracy": report["balanced_accuracy"], "macro_f1": report["macro_f1"]})
        per_class = pd.DataFrame([{"class": c, **v} for c, v in report["per_class"].items()])
        rows.append(per_class.assign(split=split.name, detector=name))
        fig = plot_confusion(report["confusion_matrix"], det.classes, f"{name}, {split.name}")
        metadata[f"confusion_{kind}"] = dg.MetadataValue.md(figure_to_markdown(fig, f"{name} confusion"))
        if "attention_by_lag" in report:
            attention[name] = report["attention_by_lag"]
        write_report(storage, name, split.name, report, per_class)
    table = pd.DataFrame(summary)
    context.log.info(f"{split.name}:\n{table.to_string(index=False)}")
    metadata["summary"] = dg.MetadataValue.md(table.to_markdown(index=False, floatfmt=".4f"))
    metadata["attention_by_lag"] = dg.MetadataValue.md(figure_to_markdown(plot_attention(attention), "attention"))
    out = pd.concat(rows, ignore_index=True)[["split", "detector", "class", "precision", "recall", "f1", "support", "note"]]
    return dg.Output(out, metadata=metadata)


def write_report(storage: ProjectStorage, name: str, split: str, report: dict, per_class: pd.DataFrame) -> None:
    path = storage.reports_dir / f"{name}_{split}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    cm = pd.DataFrame(report["confusion_matrix"], index=report["class_names"], columns=report["class_names"])
    lines = [
        f"# {name} on {split}", "",
        f"accuracy {report['accuracy']:.4f} · balanced accuracy {report['balanced_accuracy']:.4f} · "
        f"macro-F1 {report['macro_f1']:.4f} · n = {report['n']}", "",
        per_class.to_markdown(index=False, floatfmt=".4f"), "",
        "Confusion matrix (rows: true, columns: predicted)", "", cm.to_markdown(), "",
    ]
    if "attention_by_lag" in report:
        lags = pd.DataFrame({"lag": range(len(report["attention_by_lag"])), "weight": report["attention_by_lag"]})
        lines += ["Mean attention weight by lag (0 = the predicted day)", "", lags.to_markdown(index=False, floatfmt=".4f"), ""]
    path.write_text("\n".join(lines))
    (path.with_suffix(".json")).write_text(json.dumps(report, indent=1, default=str))


# A day's window holds `window` days of features ending on it; a graph's correlations need
# `window` returns, so one more close.
LSTM_LOOKBACK = dg.TimeWindowPartitionMapping(
    start_offset=-(detectors.settings_for("vol")["window"] - 1), allow_nonexistent_upstream_partitions=True)
GRAPH_LOOKBACK = dg.TimeWindowPartitionMapping(
    start_offset=-(detectors.settings_for("cross")["window"] + 1), allow_nonexistent_upstream_partitions=True)


@dg.asset(
    group_name=GROUP,
    partitions_def=DAILY,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=DETECTORS,
    ins={
        "vol_features": dg.AssetIn(partition_mapping=LSTM_LOOKBACK),
        "trend_features": dg.AssetIn(partition_mapping=LSTM_LOOKBACK),
        "daily_bars": dg.AssetIn(partition_mapping=GRAPH_LOOKBACK),
        "universe": dg.AssetIn(),
    },
    metadata={"partition_expr": "date"},
    pool="warehouse",
)
def regime_probabilities(
    context: dg.AssetExecutionContext, storage: ProjectStorage, vol_features: pd.DataFrame,
    trend_features: pd.DataFrame, daily_bars: pd.DataFrame, universe: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Each day's class probabilities from the three detectors, per (date, symbol) of the
    universe's members that day, from inputs that end on that day (causal: what the policy may
    act on at that day's close)."""
    start, end = window_days(context)
    dets = {kind: detectors.Detector.load(_model_path(storage, kind)) for kind in detectors.KINDS}
    frame = detectors.probabilities(dets, vol_features, trend_features, daily_bars, start, end,
                                    members=pit.members_by_day(universe))
    context.log.info(f"regime_probabilities {start}..{end - dt.timedelta(days=1)}: {len(frame)} rows")
    add_run_metadata(context, {"rows": len(frame), "days": int(frame["date"].nunique()) if len(frame) else 0})
    return dg.Output(frame)
