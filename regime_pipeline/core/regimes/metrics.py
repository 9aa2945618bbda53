"""Classification metrics of the regime detectors (numpy only) and their confusion-matrix figure.

Definitions, for K classes, ``cm[i, j]`` = number of samples of true class i predicted as j:

* ``accuracy`` = trace(cm) / n.
* ``support_i`` = row sum (true samples of class i); ``predicted_i`` = column sum.
* ``recall_i`` = cm[i, i] / support_i -- None when support_i = 0 ("no support").
* ``precision_i`` = cm[i, i] / predicted_i -- None when the class is never predicted.
* ``f1_i`` = 2 cm[i, i] / (support_i + predicted_i) (= 2PR / (P + R) where both exist, and
  0 when the class has support but is never predicted) -- None when both are 0.
* ``balanced_accuracy`` = mean recall over the classes WITH support > 0 (as scikit-learn's
  ``balanced_accuracy_score``): a regime absent from a split neither helps nor hurts.
* ``macro_f1`` = mean f1 over the classes with support > 0 (scikit-learn's ``f1_score(...,
  labels=<classes with support>, average="macro")``); wrong predictions OF an absent class
  still count, through the recall of the true classes they were taken from.

Report values are plain Python floats/ints/lists, ready for JSON or Dagster metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in workers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts, rows true class, columns predicted class, every class present.

    :param y_true, y_pred: ``(n,)`` integer class indices in ``[0, K)``
    """
    y_true = _as_codes(y_true, n_classes, "y_true")
    y_pred = _as_codes(y_pred, n_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean per-class F1 over the classes with support > 0 (see the module docstring); 0.0 if n = 0."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    if not support.any():
        return 0.0
    f1 = 2.0 * np.diag(cm) / (support + cm.sum(axis=0))
    return float(f1[support > 0].mean())


def classification_report(
    y_true: np.ndarray | Sequence[Any], y_pred: np.ndarray | Sequence[Any], class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class scores and the confusion matrix.

    :param y_true, y_pred: ``(n,)`` class indices in ``[0, K)`` or class names
    :param class_names: the K class names, in index order
    :return: ``{"n", "accuracy", "balanced_accuracy", "macro_f1", "class_names",
        "confusion_matrix" (K x K list, rows true), "per_class": {name: {"precision",
        "recall", "f1", "support", "predicted", "note"}}, "notes": [...]}``; a class with no
        support has recall and f1 None (f1 0.0 if it was predicted) and note "no support"
    :raises ValueError: empty input, unknown class, or shapes that differ
    """
    names = list(class_names)
    k = len(names)
    codes_true = _to_codes(y_true, names, "y_true")
    codes_pred = _to_codes(y_pred, names, "y_pred")
    if len(codes_true) == 0:
        raise ValueError("classification_report: no samples")
    cm = confusion_matrix(codes_true, codes_pred, k)
    n = int(cm.sum())
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)

    per_class: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for i, name in enumerate(names):
        note = None
        if support[i] == 0:
            note = "no support" + (f": predicted {int(predicted[i])} times, all wrong" if predicted[i] else "")
            notes.append(f"{name}: {note}")
        elif predicted[i] == 0:
            note = "never predicted"
        denominator = support[i] + predicted[i]
        per_class[name] = {
            "precision": float(tp[i] / predicted[i]) if predicted[i] else None,
            "recall": float(tp[i] / support[i]) if support[i] else None,
            "f1": float(2 * tp[i] / denominator) if denominator else None,
            "support": int(support[i]),
            "predicted": int(predicted[i]),
            "note": note,
        }
    has_support = support > 0
    recall = tp[has_support] / support[has_support]
    f1 = 2.0 * tp[has_support] / (support[has_support] + predicted[has_support])
    return {
        "n": n,
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "class_names": names,
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
        "notes": notes,
    }


def plot_confusion(cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> plt.Figure:
    """Confusion matrix heat map coloured by row-normalised recall, each cell annotated with its
    count and its share of the true class (rows true, columns predicted). A row with no support
    is left blank-coloured."""
    counts = np.asarray(cm, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"plot_confusion: cm must be ({k}, {k}) for {list(class_names)}, got {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.full(counts.shape, np.nan), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.1 * k + 1.5), constrained_layout=True)
    image = ax.imshow(np.nan_to_num(share, nan=0.0), cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            text = f"{counts[i, j]}" + ("" if np.isnan(share[i, j]) else f"\n{share[i, j]:.0%}")
            dark = not np.isnan(share[i, j]) and share[i, j] > 0.5
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), [f"{name} (n={int(r)})" for name, r in zip(class_names, rows[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class (recall on diagonal)")
    return fig


def _as_codes(y: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    codes = np.asarray(y)
    if codes.ndim != 1 or not (np.issubdtype(codes.dtype, np.integer) or codes.size == 0):
        raise ValueError(f"{name} must be a 1-d array of class indices, got {codes.dtype} {codes.shape}")
    codes = codes.astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= n_classes):
        raise ValueError(f"{name} holds class indices outside [0, {n_classes}): {sorted(set(codes.tolist()))}")
    return codes


def _to_codes(y: np.ndarray | Sequence[Any], names: list[str], what: str) -> np.ndarray:
    """Class indices from indices or names."""
    values = np.asarray(y)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in values.tolist() if v not in index})
        if unknown:
            raise ValueError(f"{what}: unknown classes {unknown}; known {names}")
        values = np.fromiter((index[v] for v in values.tolist()), dtype=np.int64, count=values.size)
    return _as_codes(values, len(names), what)
