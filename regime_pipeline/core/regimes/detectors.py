"""The three regime detectors end to end: training sets, training, evaluation and daily inference.

* ``vol`` and ``trend``: :class:`~regime_pipeline.core.regimes.models.lstm.AttentionLSTMClassifier` on
  30-day windows of the kind's selected features, pooled across assets;
* ``cross``: :class:`~regime_pipeline.core.regimes.models.gnn.GraphSAGEClassifier` on one graph per
  date over the 13 assets (nodes: selected vol + trend features; edges: rolling return
  correlation).

Inputs are standardised with train statistics; every model is fitted on the train split's
labels and early-stopped on val's. An input for day d holds data up to d only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from regime_pipeline.configs import Split, splits
from regime_pipeline.core.data.universe import only_members
from regime_pipeline.core.regimes.graphs import Graphs, build_graphs
from regime_pipeline.core.regimes.metrics import classification_report
from regime_pipeline.core.regimes.models.gnn import GraphSAGEClassifier
from regime_pipeline.core.regimes.models.lstm import AttentionLSTMClassifier
from regime_pipeline.core.regimes.models.training import (
    TrainResult,
    fit_classifier,
    load_model,
    predict_proba,
    profile,
    save_model,
    set_seed,
)
from regime_pipeline.core.regimes.windows import Standardizer, class_names_for, make_windows

KINDS = ("vol", "trend", "cross")
SEQUENCE_KINDS = ("vol", "trend")
TRAINING_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "seed")


@dataclass
class Detector:
    """A fitted detector and everything needed to feed it.

    :param kind: ``"vol"``, ``"trend"`` or ``"cross"``
    :param columns: input features, in the order the model reads them
    :param classes: class names in output order (configs/regimes.yaml)
    :param settings: the training profile it was built with (window, edges, ...)
    """

    kind: str
    model: nn.Module
    scaler: Standardizer
    columns: list[str]
    classes: list[str]
    settings: dict[str, Any]

    @property
    def window(self) -> int:
        return int(self.settings["window"])

    def save(self, path: Path, train: TrainResult | None = None) -> str:
        """Write the model with its scaler and columns; return the file's sha256."""
        extra = {
            "kind": self.kind, "columns": self.columns, "classes": self.classes,
            "scaler": self.scaler.to_dict(), "settings": self.settings,
            "train": _plain(train.to_dict()) if train is not None else None,
        }
        return save_model(path, self.model, extra)

    @classmethod
    def load(cls, path: Path) -> Detector:
        """Rebuild a detector saved by :meth:`save`; a file that does not fit its hparams raises."""
        def build(hparams: dict[str, Any]) -> nn.Module:
            return GraphSAGEClassifier(hparams) if "layers" in hparams else AttentionLSTMClassifier(hparams)

        model, extra = load_model(path, build)
        return cls(extra["kind"], model, Standardizer.from_dict(extra["scaler"]), list(extra["columns"]),
                   list(extra["classes"]), dict(extra["settings"]))


def _plain(value: Any) -> Any:
    """Nested dicts/lists of plain Python values (what a weights-only torch file can hold)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def settings_for(kind: str, profile_name: str = "default") -> dict[str, Any]:
    return profile("cross" if kind == "cross" else "lstm", profile_name)


def split_labels(labels: pd.DataFrame, split: str) -> pd.DataFrame:
    return labels.loc[labels["split"] == split]


def window_labels(labels: pd.DataFrame, window: Split) -> pd.DataFrame:
    """The rows of `labels` for `window`: its split's rows when `labels` has a ``split`` column
    (the fixed protocol), else the rows dated inside the window (walk-forward targets)."""
    if "split" in labels.columns:
        return split_labels(labels, window.name)
    dates = labels["date"]
    return labels.loc[(dates >= window.start) & (dates <= window.end)]


def fit_windows(windows: tuple[Split, Split] | None) -> tuple[Split, Split]:
    """The (fit, early-stopping) windows: `windows`, or the train and val splits by default."""
    return windows if windows is not None else (splits()["train"], splits()["val"])


def node_features(vol_features: pd.DataFrame, trend_features: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Per (date, symbol) rows with the cross detector's node columns (from both groups)."""
    merged = vol_features.merge(trend_features, on=["date", "symbol"], how="inner")
    return merged[["date", "symbol", *columns]]


def cross_targets(labels: pd.DataFrame) -> pd.DataFrame:
    """One ``date, cross_regime`` row per labelled date."""
    return labels.drop_duplicates("date")[["date", "cross_regime"]].dropna().reset_index(drop=True)


# ---------------------------------------------------------------------------------- inputs


def _sequence_inputs(det: Detector, features: pd.DataFrame, labels: pd.DataFrame | None, window: tuple[dt.date, dt.date]):
    scaled = det.scaler.transform(features[["date", "symbol", *det.columns]])
    kwargs = {"labels": labels, "label_column": f"{det.kind}_regime"} if labels is not None else {}
    w = make_windows(scaled, det.columns, det.window, dates=window, classes=det.classes, **kwargs)
    return w.X, w.y, w.keys


MIN_NODES = 2  # a graph with fewer active assets has no edges to learn from


def _graph_inputs(det: Detector, nodes: pd.DataFrame, bars: pd.DataFrame, dates: Sequence[dt.date]) -> Graphs:
    """Graphs of `dates` that have at least MIN_NODES active assets (early 2018 may not)."""
    scaled = det.scaler.transform(nodes[["date", "symbol", *det.columns]])
    graphs = build_graphs(scaled, bars, det.columns, list(dates), window=det.window, edges=det.settings["edges"])
    return graphs.select(graphs.mask.sum(axis=1) >= MIN_NODES)


def _labelled_graphs(det: Detector, nodes: pd.DataFrame, bars: pd.DataFrame, labels: pd.DataFrame) -> tuple[Graphs, np.ndarray]:
    """The graphs of the labelled dates in `labels` and their cross-regime class indices."""
    targets = cross_targets(labels)
    graphs = _graph_inputs(det, nodes, bars, targets["date"])
    by_date = dict(zip(targets["date"], targets["cross_regime"]))
    return graphs, _codes(pd.Series([by_date[d] for d in graphs.dates]), det.classes)


def _codes(values: pd.Series, classes: Sequence[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(classes)}
    return values.map(lookup).to_numpy(dtype=np.int64)


# ---------------------------------------------------------------------------------- training


def train_sequence_detector(
    kind: str, features: pd.DataFrame, labels: pd.DataFrame, columns: Sequence[str],
    settings: Mapping[str, Any], log: Any | None = None, windows: tuple[Split, Split] | None = None,
) -> tuple[Detector, TrainResult]:
    """Fit the `kind` LSTM on train windows, early-stopped on val windows.

    :param features: the kind's feature table (date, symbol, ...), covering train and val
    :param labels: `regime_labels` rows of the train and val splits, or any frame
        ``date, symbol, <kind>_regime`` (rows outside `windows` are ignored)
    :param windows: (fit, early-stopping) target days; by default the train and val splits
    """
    train, val = fit_windows(windows)
    classes = class_names_for(f"{kind}_regime")
    scaler = Standardizer.fit(features, list(columns), (train.start, train.end))
    hparams = {"n_features": len(columns), "n_classes": len(classes), "hidden": settings["hidden"],
               "hidden2": settings["hidden2"], "dropout": settings["dropout"], "window": settings["window"]}
    set_seed(settings["seed"], settings.get("threads"))
    det = Detector(kind, AttentionLSTMClassifier(hparams), scaler, list(columns), classes, dict(settings))
    X_tr, y_tr, _ = _sequence_inputs(det, features, window_labels(labels, train), (train.start, train.end))
    X_va, y_va, _ = _sequence_inputs(det, features, window_labels(labels, val), (val.start, val.end))
    if log is not None:
        log.info(f"{kind}_detector: {len(X_tr)} train windows, {len(X_va)} val windows, {len(columns)} features")
    result = fit_classifier(det.model, X_tr, X_va, y_train=y_tr, y_val=y_va, n_classes=len(classes), log=log,
                            **{k: settings[k] for k in TRAINING_KEYS})
    return det, result


def train_cross_detector(
    nodes: pd.DataFrame, bars: pd.DataFrame, labels: pd.DataFrame, columns: Sequence[str],
    settings: Mapping[str, Any], log: Any | None = None, windows: tuple[Split, Split] | None = None,
) -> tuple[Detector, TrainResult]:
    """Fit the graph network on train dates' graphs, early-stopped on val's (or on `windows`)."""
    train, val = fit_windows(windows)
    classes = class_names_for("cross_regime")
    scaler = Standardizer.fit(nodes, list(columns), (train.start, train.end))
    hparams = {"n_features": len(columns), "n_classes": len(classes), "hidden": settings["hidden"],
               "layers": settings["layers"], "dropout": settings["dropout"], "readout": settings["readout"],
               "node_strength": settings.get("node_strength", True)}
    set_seed(settings["seed"], settings.get("threads"))
    det = Detector("cross", GraphSAGEClassifier(hparams), scaler, list(columns), classes, dict(settings))
    data = {}
    for role, split in (("train", train), ("val", val)):
        graphs, y = _labelled_graphs(det, nodes, bars, window_labels(labels, split))
        data[role] = ((graphs.X, graphs.A, graphs.mask), y)
    if log is not None:
        log.info(f"cross_detector: {len(data['train'][1])} train graphs, {len(data['val'][1])} val graphs")
    result = fit_classifier(det.model, data["train"][0], data["val"][0], y_train=data["train"][1],
                            y_val=data["val"][1], n_classes=len(classes), log=log,
                            **{k: settings[k] for k in TRAINING_KEYS})
    return det, result


# ---------------------------------------------------------------------------------- evaluation


def evaluate(
    det: Detector, split: Split, labels: pd.DataFrame, features: pd.DataFrame, bars: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Scores of `det` on one split: the classification report (per-class recall, confusion
    matrix) and, for the LSTMs, the mean attention weight by lag (lag 0 = the last day).

    :param features: the kind's features (LSTMs) or node features (cross), with look-back
    :param labels: that split's `regime_labels` rows
    """
    if det.kind == "cross":
        graphs, y = _labelled_graphs(det, features, bars, labels)
        proba = predict_proba(det.model, (graphs.X, graphs.A, graphs.mask))
        report = classification_report(y, proba.argmax(axis=1), det.classes)
    else:
        X, y, _ = _sequence_inputs(det, features, labels, (split.start, split.end))
        proba = predict_proba(det.model, X)
        report = classification_report(y, proba.argmax(axis=1), det.classes)
        report["attention_by_lag"] = attention_by_lag(det.model, X).tolist()
    report["split"] = split.name
    return report


def attention_by_lag(model: AttentionLSTMClassifier, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Mean attention weight per lag, ``(window,)``; index 0 is lag 0 (the window's last day)."""
    model.eval()
    total = np.zeros(X.shape[1])
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            _, weights = model(torch.as_tensor(X[i : i + batch_size]), return_attention=True)
            total += weights.sum(dim=0).numpy()
    return (total / max(len(X), 1))[::-1]


# ---------------------------------------------------------------------------------- inference


def probabilities(
    dets: Mapping[str, Detector], vol_features: pd.DataFrame, trend_features: pd.DataFrame,
    bars: pd.DataFrame, start: dt.date, end: dt.date, members: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Class probabilities of every (date, symbol) in ``[start, end)`` from all three detectors,
    each from inputs that end on that date.

    :param members: ``date, symbol`` of the universe's members: only their rows get
        probabilities, and a date's graph holds its members only (None: every asset with features).
        Windows still read the features of the days before an asset became a member.
    :return: ``date, symbol, vol_<class>..., trend_<class>..., cross_<class>...``; a row exists
        where the asset has full vol and trend windows and the date has a graph; the cross
        columns are the date's market-wide probabilities
    """
    last = end - dt.timedelta(days=1)
    parts = []
    for kind, features in (("vol", vol_features), ("trend", trend_features)):
        det = dets[kind]
        X, _, keys = _sequence_inputs(det, features, None, (start, last))
        proba = predict_proba(det.model, X) if len(X) else np.zeros((0, len(det.classes)))
        parts.append(keys.assign(**{f"{kind}_{c}": proba[:, i] for i, c in enumerate(det.classes)}))
    out = only_members(parts[0].merge(parts[1], on=["date", "symbol"], how="inner"), members)
    det = dets["cross"]
    nodes = only_members(node_features(vol_features, trend_features, det.columns), members)
    dates = sorted(set(out["date"]))
    if dates:
        graphs = _graph_inputs(det, nodes, bars, dates)
        proba = predict_proba(det.model, (graphs.X, graphs.A, graphs.mask))
        cross = pd.DataFrame({"date": list(graphs.dates), **{f"cross_{c}": proba[:, i] for i, c in enumerate(det.classes)}})
        out = out.merge(cross, on="date", how="left")
    else:
        out = out.assign(**{f"cross_{c}": pd.Series(dtype=float) for c in det.classes})
    return out.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)
