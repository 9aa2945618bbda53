"""Model-agnostic training of torch classifiers: seeding, class weights, early stopping, storage, prediction.

Shared by every neural detector. A model is any ``nn.Module`` that maps a batch -- one tensor,
or several given as positional arguments -- to logits ``(batch, n_classes)``, and exposes a
``hparams`` mapping of plain values from which the same architecture can be rebuilt.

Inputs are numpy arrays whose first axis is the sample axis (floats become float32 tensors,
integers int64); labels are ``(n,)`` class indices in ``[0, n_classes)``. Everything runs on
the CPU.
"""

from __future__ import annotations

import copy
import io
import logging
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.paths import open_for_reading, storage_path, write_bytes_atomic
from regime_pipeline.core.regimes.metrics import macro_f1

FORMAT = "regime_classifier/1"
MONITORS = ("val_macro_f1", "val_loss")
ArrayInputs = np.ndarray | Sequence[np.ndarray]


# --------------------------------------------------------------------------------------
# Configuration and seeding
# --------------------------------------------------------------------------------------


def profile(section: str, name: str = "default") -> dict[str, Any]:
    """A training profile from ``configs/models.yaml``: ``<section>.<name>`` laid over
    ``<section>.default`` (so a profile lists only what it changes)."""
    config = load_yaml("models")
    if section not in config or not isinstance(config[section], Mapping):
        raise KeyError(f"configs/models.yaml: no section {section!r}")
    profiles = config[section]
    if name not in profiles:
        raise KeyError(f"configs/models.yaml: no profile {section}.{name}; known {sorted(profiles)}")
    return {**profiles.get("default", {}), **profiles[name]}


def set_seed(seed: int, threads: int | None = None) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic kernels.

    ``torch.use_deterministic_algorithms(True, warn_only=True)``: an op with no deterministic
    implementation warns instead of failing (the CPU kernels used here are all deterministic).
    This and ``torch.set_num_threads`` are process-wide.

    :param threads: intra-op CPU threads for torch; None leaves torch's choice
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except Exception as exc:  # an exotic build without the switch: train anyway, say so
        warnings.warn(f"torch deterministic algorithms unavailable: {exc}", stacklevel=2)
    if threads is not None:
        torch.set_num_threads(int(threads))


def class_weights(y_train: np.ndarray, n_classes: int, log: logging.Logger | Any | None = None) -> torch.Tensor:
    """Inverse-frequency class weights from the TRAIN labels.

    ``w_c = n / (K_present * count_c)`` for a class present in train (scikit-learn's
    "balanced" over the present classes), so the mean weight per train sample is 1 and the
    present classes contribute equally to the loss. A class absent from train gets weight 0
    (it cannot be learned; it is reported by a warning and ``log.warning``).

    :param y_train: ``(n,)`` class indices in ``[0, n_classes)``
    :return: ``(n_classes,)`` float32
    """
    y = np.asarray(y_train)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"class_weights: y_train must be a non-empty 1-d array, got shape {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"class_weights: labels outside [0, {n_classes}): {sorted(set(y.tolist()))}")
    counts = np.bincount(y.astype(np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = y.size / (present.sum() * counts[present])
    absent = np.flatnonzero(~present).tolist()
    if absent:
        message = f"class_weights: classes {absent} have no train samples; their weight is 0"
        warnings.warn(message, stacklevel=2)
        if log is not None:
            log.warning(message)
    return torch.tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`fit_classifier` did.

    :param best_epoch: index into `history` (0-based) of the epoch whose weights were restored
    :param history: one dict per epoch run: ``epoch`` (0-based), ``train_loss`` and ``val_loss``
        (class-weighted cross-entropy, nats per unit of sample weight), ``val_macro_f1``,
        ``seconds`` (wall time of the epoch, validation included)
    :param stopped_early: True if training stopped after `patience` epochs without improvement
        before reaching `epochs`
    :param monitor: the metric that chose `best_epoch`
    :param class_weights: the ``(n_classes,)`` loss weights used, as a list
    :param seconds: total wall time
    """

    best_epoch: int
    history: list[dict[str, float]]
    stopped_early: bool
    monitor: str = "val_macro_f1"
    class_weights: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best(self) -> dict[str, float]:
        """The history entry of the restored epoch."""
        return self.history[self.best_epoch]

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "history": [dict(h) for h in self.history],
            "stopped_early": self.stopped_early,
            "monitor": self.monitor,
            "class_weights": list(self.class_weights),
            "seconds": self.seconds,
        }


def fit_classifier(
    model: nn.Module,
    train: ArrayInputs,
    val: ArrayInputs,
    *,
    y_train: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    seed: int,
    log: logging.Logger | Any | None = None,
    monitor: str = "val_macro_f1",
    clip_grad_norm: float | None = 1.0,
    eval_batch_size: int = 4096,
) -> TrainResult:
    """Train `model` in place with Adam on class-weighted cross-entropy, early-stopped on val.

    Each epoch shuffles the train samples with a generator seeded by `seed` (and seeds torch's
    global RNG with `seed` once at the start, which drives dropout), so two calls on models
    with the same initial weights give identical weights on the CPU.

    Model selection: after every epoch the model is scored on val (eval mode). With
    ``monitor="val_macro_f1"`` (default) an epoch is an improvement when its val macro-F1
    (over the classes present in val, :func:`regime_pipeline.core.regimes.metrics.macro_f1`) is higher
    than the best so far, or equal with a lower val loss; with ``monitor="val_loss"`` when its
    val loss is lower (ties: higher macro-F1). Training stops after `patience` epochs without
    improvement, and the best epoch's weights are restored before returning.

    :param model: maps ``*batch`` (each ``(b, ...)``) to logits ``(b, n_classes)``
    :param train, val: input array(s), sample axis first, aligned with `y_train` / `y_val`
    :param y_train, y_val: ``(n,)`` class indices
    :param epochs: maximum number of passes over `train`
    :param batch_size: train samples per Adam step
    :param lr: Adam learning rate
    :param weight_decay: Adam L2 penalty
    :param patience: epochs without improvement before stopping (>= 1)
    :param log: anything with ``.info``/``.warning`` (a logger, Dagster's context.log); one line per epoch
    :param clip_grad_norm: max global L2 norm of the gradients (None: no clipping); keeps an
        LSTM's rare exploding steps from undoing an epoch
    :param eval_batch_size: samples per forward pass when scoring val (memory only)
    """
    if monitor not in MONITORS:
        raise ValueError(f"fit_classifier: monitor must be one of {MONITORS}, got {monitor!r}")
    if epochs < 1 or patience < 1 or batch_size < 1:
        raise ValueError(
            f"fit_classifier: epochs, patience and batch_size must be >= 1, got {epochs}, {patience}, {batch_size}"
        )
    train_x = _tensors(train, "train")
    val_x = _tensors(val, "val")
    ytr = _labels(y_train, train_x, n_classes, "train")
    yva = _labels(y_val, val_x, n_classes, "val")

    weights = class_weights(ytr.numpy(), n_classes, log)
    criterion = nn.CrossEntropyLoss(weight=weights, reduction="sum")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sample_weight_tr = weights[ytr]
    n = len(ytr)

    history: list[dict[str, float]] = []
    best_epoch, best_state, best_key = -1, None, None
    since_best = 0
    stopped_early = False
    started = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator)
        total_loss, total_weight = 0.0, 0.0
        for first in range(0, n, batch_size):
            idx = order[first : first + batch_size]
            batch_weight = float(sample_weight_tr[idx].sum())
            if batch_weight == 0.0:  # only zero-weight samples: nothing to learn from
                continue
            optimizer.zero_grad(set_to_none=True)
            loss_sum = criterion(model(*(t[idx] for t in train_x)), ytr[idx])
            (loss_sum / batch_weight).backward()
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            total_loss += float(loss_sum.detach())
            total_weight += batch_weight

        logits = _logits(model, val_x, eval_batch_size)
        val_weight = float(weights[yva].sum())
        val_loss = float(criterion(logits, yva)) / val_weight if val_weight > 0 else float("nan")
        val_f1 = macro_f1(yva.numpy(), logits.argmax(dim=1).numpy(), n_classes)
        entry = {
            "epoch": epoch,
            "train_loss": total_loss / total_weight if total_weight else float("nan"),
            "val_loss": val_loss,
            "val_macro_f1": val_f1,
            "seconds": time.perf_counter() - t0,
        }
        history.append(entry)

        key = _score_key(entry, monitor)
        improved = best_key is None or key > best_key
        if improved:
            best_epoch, best_key, since_best = epoch, key, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        if log is not None:
            log.info(
                f"epoch {epoch + 1}/{epochs}: train_loss {entry['train_loss']:.4f} val_loss {val_loss:.4f} "
                f"val_macro_f1 {val_f1:.4f} ({entry['seconds']:.1f}s)"
                + (" best" if improved else f" (best {best_epoch + 1}, {since_best}/{patience} without improvement)")
            )
        if since_best >= patience:
            stopped_early = epoch + 1 < epochs
            break

    assert best_state is not None  # at least one epoch ran
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        history=history,
        stopped_early=stopped_early,
        monitor=monitor,
        class_weights=weights.tolist(),
        seconds=time.perf_counter() - started,
    )


def _score_key(entry: Mapping[str, float], monitor: str) -> tuple[float, float]:
    """A key where larger is better: (macro-F1, -loss) or (-loss, macro-F1); NaN ranks lowest."""
    f1 = entry["val_macro_f1"]
    loss = entry["val_loss"]
    neg_loss = -loss if np.isfinite(loss) else -np.inf
    return (f1, neg_loss) if monitor == "val_macro_f1" else (neg_loss, f1)


# --------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------


def predict_proba(model: nn.Module, X: ArrayInputs, batch_size: int = 4096) -> np.ndarray:
    """Class probabilities (softmax of the logits), in eval mode and without gradients.

    :param X: input array(s), sample axis first
    :return: ``(n, n_classes)`` float64, rows summing to 1
    """
    logits = _logits(model, _tensors(X, "X"), batch_size)
    return torch.softmax(logits.double(), dim=1).numpy()


def _logits(model: nn.Module, inputs: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """``(n, n_classes)`` logits in eval mode; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            n = len(inputs[0])
            parts = [model(*(t[i : i + batch_size] for t in inputs)) for i in range(0, n, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, 0)


def _tensors(inputs: ArrayInputs | torch.Tensor, name: str) -> list[torch.Tensor]:
    """One tensor per input array (floats -> float32, bool kept, other integers -> int64), all
    with the same first axis."""
    arrays = [inputs] if isinstance(inputs, (np.ndarray, torch.Tensor)) else list(inputs)
    if not arrays:
        raise ValueError(f"{name}: no input arrays")
    out = []
    for a in arrays:
        t = torch.as_tensor(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else torch.as_tensor(a)
        out.append(t.float() if t.is_floating_point() else t if t.dtype == torch.bool else t.long())
    sizes = {len(t) for t in out}
    if len(sizes) != 1:
        raise ValueError(f"{name}: input arrays differ in length {sorted(sizes)}")
    return out


def _labels(y: np.ndarray, inputs: list[torch.Tensor], n_classes: int, name: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if labels.dim() != 1 or len(labels) != len(inputs[0]):
        raise ValueError(f"y_{name} has shape {tuple(labels.shape)}, expected ({len(inputs[0])},)")
    if len(labels) == 0:
        raise ValueError(f"{name}: no samples")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"y_{name}: labels outside [0, {n_classes})")
    return labels


# --------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------


def save_model(path: str | Path, model: nn.Module, extra: Mapping[str, Any] | None = None) -> str:
    """Write ``{"format", "state_dict", "hparams", "extra"}`` with ``torch.save`` (atomically).

    :param model: must expose ``hparams`` (a mapping of plain values)
    :param extra: anything the loader needs besides the weights (class names, feature columns,
        scaler, metrics): nested dicts/lists of str/int/float/bool/None or tensors, the types
        ``torch.load(weights_only=True)`` accepts; anything else raises TypeError here rather
        than at load time
    :return: sha256 hex digest of the written file
    """
    hparams = getattr(model, "hparams", None)
    if not isinstance(hparams, Mapping):
        raise TypeError(f"save_model: {type(model).__name__} has no `hparams` mapping to rebuild it from")
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "hparams": dict(hparams),
        "extra": dict(extra or {}),
    }
    _check_plain(payload["hparams"], "hparams")
    _check_plain(payload["extra"], "extra")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    # A local file through a temporary file and a rename; on object storage one upload.
    return write_bytes_atomic(storage_path(path), buffer.getvalue())


def load_model(path: str | Path, build: Callable[[dict[str, Any]], nn.Module]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model`: ``build(hparams)``, then its weights (eval mode).

    Loads with ``torch.load(weights_only=True)`` (no arbitrary pickles).

    :return: ``(model, extra)``
    :raises ValueError: the file is not a saved model, or its state_dict does not fit the model
        built from its hparams (naming the first mismatched key, the shapes, and the hparams)
    """
    path = storage_path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_model: no model file at {path}")
    try:
        with open_for_reading(path) as handle:
            payload = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"load_model: {path} is not a readable torch model file: {exc}") from exc
    if not isinstance(payload, dict) or not {"state_dict", "hparams"} <= set(payload):
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"load_model: {path} is not a saved model (expected state_dict and hparams, got {keys})")
    hparams = dict(payload["hparams"])
    model = build(hparams)
    expected = model.state_dict()
    saved = payload["state_dict"]
    # Shape mismatches first: the usual cause (other hparams) and the most telling message.
    problems = [
        f"key {k!r} has shape {tuple(saved[k].shape)} in the file but {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    problems += [f"key {k!r} of the model is missing from the file" for k in expected if k not in saved]
    problems += [f"key {k!r} is in the file but not in the model" for k in saved if k not in expected]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(
            f"load_model: the state_dict in {path} does not match the model built from the file's hparams "
            f"{hparams}: {'; '.join(problems[:3])}{more}"
        )
    model.load_state_dict(saved)
    model.eval()
    return model, dict(payload.get("extra", {}))


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the first value ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor):
        if isinstance(value, np.generic):  # np.float64 subclasses float but does not load
            raise TypeError(f"save_model: {where} is a numpy {type(value).__name__}; use a Python number")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"save_model: {where} has a key of type {type(k).__name__}: {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"save_model: {where} is a {type(value).__name__}; only dicts, lists, str, int, float, bool, None and "
        "tensors can be loaded with weights_only=True"
    )
