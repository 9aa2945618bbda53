"""Statistical jump model labeler: the walk-forward's second regime labeler beside the HMM.

Wraps :class:`jumpmodels.jump.JumpModel` (discrete; Shu, Yu and Mulvey 2024) with what the
pipeline needs: several sequences (one per asset) pooled in one fit, states ordered by the mean
of the first observation (as :class:`~regime_pipeline.core.regimes.hmm.RegimeHMM` orders them, so
state i has the HMM's name i), observations standardised with the fit rows' statistics (the
model's loss is a squared distance), and JSON storage.

* :meth:`JumpLabeler.predict` solves the jump model over each whole sequence (hindsight, like
  Viterbi): training targets only.
* :meth:`JumpLabeler.predict_online` gives the state of row t from rows <= t of its sequence
  only: causal, usable on day t.

Shapes: ``X`` is ``(n_samples, n_features)``; ``lengths`` splits its rows into sequences in time
order and sums to ``n_samples``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jumpmodels.jump import JumpModel

FORMAT = "jump_labeler/1"


class JumpLabeler:
    """A discrete statistical jump model with named states ordered by their first feature's centre.

    :param state_names: one per state, in increasing order of the centre of feature 0
    :param jump_penalty: lambda, the loss a change of state costs (in units of squared
        standardised distance)
    """

    def __init__(self, state_names: Sequence[str], *, jump_penalty: float, n_init: int = 10,
                 max_iter: int = 1000, random_state: int = 0) -> None:
        self.state_names = [str(n) for n in state_names]
        self.jump_penalty = float(jump_penalty)
        self.n_init = int(n_init)
        self.max_iter = int(max_iter)
        self.random_state = int(random_state)

    @property
    def n_states(self) -> int:
        return len(self.state_names)

    def _model(self) -> JumpModel:
        return JumpModel(n_components=self.n_states, jump_penalty=self.jump_penalty, cont=False,
                         n_init=self.n_init, max_iter=self.max_iter, random_state=self.random_state)

    def fit(self, X: np.ndarray, lengths: Sequence[int]) -> JumpLabeler:
        """Fit on the pooled sequences: standardise, fit one model on the concatenation (a
        boundary between two assets costs at most one jump penalty), order the states."""
        X = np.asarray(X, dtype=np.float64)
        _check(X, lengths)
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.std_ = np.where(std > 0, std, 1.0)
        model = self._model().fit((X - self.mean_) / self.std_, sort_by=None)
        order = np.argsort(model.centers_[:, 0], kind="stable")
        self.centers_ = np.asarray(model.centers_)[order]
        self._jm = self._with_centers()
        return self

    def _with_centers(self) -> JumpModel:
        """A JumpModel that predicts with the stored centres (no refit)."""
        jm = self._model()
        jm.check_jump_penalty_mx()
        jm.centers_ = self.centers_
        jm.feat_weights = None
        return jm

    def _per_sequence(self, X: np.ndarray, lengths: Sequence[int], online: bool) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        _check(X, lengths)
        Z = (X - self.mean_) / self.std_
        out = np.empty(len(Z), dtype=np.int64)
        start = 0
        for length in lengths:
            stop = start + int(length)
            part = Z[start:stop]
            labels = self._jm.predict_online(part) if online else self._jm.predict(part)
            out[start:stop] = np.asarray(labels, dtype=np.int64)
            start = stop
        return out

    def predict(self, X: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
        """State index per row, each sequence solved as a whole. HINDSIGHT: targets only."""
        return self._per_sequence(X, lengths, online=False)

    def predict_online(self, X: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
        """State index per row from rows <= t of its sequence only (causal)."""
        return self._per_sequence(X, lengths, online=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "state_names": self.state_names, "jump_penalty": self.jump_penalty,
            "n_init": self.n_init, "max_iter": self.max_iter, "random_state": self.random_state,
            "mean": self.mean_.tolist(), "std": self.std_.tolist(), "centers": self.centers_.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JumpLabeler:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document: format {data.get('format')!r}")
        model = cls(data["state_names"], jump_penalty=data["jump_penalty"], n_init=data["n_init"],
                    max_iter=data["max_iter"], random_state=data["random_state"])
        model.mean_ = np.asarray(data["mean"], float)
        model.std_ = np.asarray(data["std"], float)
        model.centers_ = np.asarray(data["centers"], float)
        model._jm = model._with_centers()
        return model


def _check(X: np.ndarray, lengths: Sequence[int]) -> None:
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError(f"JumpLabeler: X must be a finite 2-d array, got shape {X.shape}")
    if int(np.sum(lengths)) != len(X):
        raise ValueError(f"JumpLabeler: lengths sum to {int(np.sum(lengths))}, X has {len(X)} rows")


def mean_duration(labels: np.ndarray, lengths: Sequence[int]) -> float:
    """Mean length in rows (days) of the runs of one state, runs cut at sequence boundaries."""
    labels = np.asarray(labels)
    runs = 0
    start = 0
    for length in lengths:
        part = labels[start : start + int(length)]
        if len(part):
            runs += 1 + int(np.count_nonzero(part[1:] != part[:-1]))
        start += int(length)
    return float(len(labels) / runs) if runs else float("nan")
