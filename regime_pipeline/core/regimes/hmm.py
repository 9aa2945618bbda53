"""Market-regime hidden Markov model: a seeded, state-ordered, pickle-free GaussianHMM wrapper.

:class:`RegimeHMM` wraps :class:`hmmlearn.hmm.GaussianHMM` and adds what the pipeline needs
and hmmlearn does not give:

* **stable state names.** EM finds states in an arbitrary order that changes with the seed.
  After every fit the states are sorted by the mean of one feature (``order_by``, e.g. the
  return), so state ``i`` is always ``state_names[i]``;
* **restarts with a data-driven start.** Each restart is initialised from a
  :class:`sklearn.mixture.GaussianMixture` with its own seed; the restart with the best
  train log-likelihood wins, preferring restarts where no state is (almost) empty. A model
  whose states all fall under the occupancy floor is kept and reported in
  ``collapsed_states_`` instead of raising, so a Dagster asset check can flag it;
* **a causal filter.** :meth:`RegimeHMM.filter_proba` returns P(state_t | x_1..x_t), usable as a
  feature at time t. :meth:`RegimeHMM.predict` (Viterbi) and :meth:`RegimeHMM.predict_proba`
  (smoother) look at the whole sequence: they are for training targets only;
* **JSON storage.** :meth:`RegimeHMM.to_dict` / :meth:`RegimeHMM.from_dict` round-trip the
  parameters as plain lists of floats.

Shapes: ``X`` is ``(n_samples, n_features)``; ``lengths`` splits its rows into independent
sequences (e.g. one per asset, each in time order) and sums to ``n_samples``; ``None`` means
one sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from hmmlearn.hmm import GaussianHMM
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

FORMAT = "regime_hmm/1"
COVARIANCE_TYPES = ("spherical", "diag", "full", "tied")
# Initial probability of staying in the same state: regimes last weeks, not days, so EM
# starts from persistent states rather than from a flat matrix it could get stuck near.
_STICKY = 0.9


class RegimeHMM:
    """Gaussian HMM with named, mean-ordered states, fitted with seeded GMM-initialised restarts.

    :param state_names: one name per state, in increasing order of the mean of feature
        `order_by` (e.g. ``("bear", "neutral", "bull")`` when ordering by returns)
    :param covariance_type: as in hmmlearn/scikit-learn: "full", "diag", "spherical", "tied"
    :param n_restarts: independent EM runs; the best one is kept
    :param n_iter: maximum EM iterations per restart
    :param tol: EM convergence threshold on the log-likelihood gain
    :param min_occupancy: a state is "collapsed" if it labels fewer than this fraction of the
        training samples under Viterbi decoding
    :param order_by: column of ``X`` whose state means define the state order
    :param random_state: restart ``r`` is seeded with ``random_state + r``

    Fitted attributes (trailing underscore, as in scikit-learn):

    * ``startprob_`` ``(n_states,)``, ``transmat_`` ``(n_states, n_states)``, ``means_``
      ``(n_states, n_features)``, ``covars_`` ``(n_states, n_features, n_features)`` (full
      matrices whatever the covariance type);
    * ``n_features_in_``; ``train_loglik_`` (total log-likelihood of the training data);
    * ``occupancy_`` ``(n_states,)``: fraction of training samples Viterbi assigns to each state;
    * ``collapsed_states_``: names of states with occupancy under ``min_occupancy`` (empty
      unless no restart had every state above the floor);
    * ``restart_logliks_``, ``restart_n_iter_``, ``restart_converged_``: one entry per restart
      (log-likelihood ``nan`` if that restart failed numerically); ``best_restart_``;
    * ``n_iter_``, ``converged_``: EM iterations and convergence of the kept restart.
    """

    def __init__(
        self,
        state_names: Sequence[str],
        *,
        covariance_type: str = "full",
        n_restarts: int = 5,
        n_iter: int = 200,
        tol: float = 1e-4,
        min_occupancy: float = 0.01,
        order_by: int = 0,
        random_state: int = 0,
    ) -> None:
        names = [str(n) for n in state_names]
        if not names:
            raise ValueError("state_names is empty: need at least one state")
        if len(set(names)) != len(names):
            raise ValueError(f"state_names must be unique, got {names}")
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
        if n_restarts < 1:
            raise ValueError(f"n_restarts must be >= 1, got {n_restarts}")
        if not 0.0 <= min_occupancy < 1.0:
            raise ValueError(f"min_occupancy must be in [0, 1), got {min_occupancy}")
        self.state_names = names
        self.covariance_type = covariance_type
        self.n_restarts = int(n_restarts)
        self.n_iter = int(n_iter)
        self.tol = float(tol)
        self.min_occupancy = float(min_occupancy)
        self.order_by = int(order_by)
        self.random_state = int(random_state)

    @property
    def n_states(self) -> int:
        return len(self.state_names)

    # ------------------------------------------------------------------ fitting

    def fit(self, X: np.ndarray, lengths: Sequence[int] | None = None) -> RegimeHMM:
        """Fit ``n_restarts`` EM runs on ``X`` ``(n_samples, n_features)`` and keep the best.

        Best = highest train log-likelihood among restarts whose every state has Viterbi
        occupancy >= ``min_occupancy``; if no restart qualifies, the highest log-likelihood
        overall, with the under-occupied states listed in ``collapsed_states_`` (not raised:
        an asset check reads it). A restart that fails numerically is skipped (its
        ``restart_logliks_`` entry is ``nan``); ValueError only if every restart fails.
        """
        X, lengths_arr = self._check_input(X, lengths, fitting=True)
        if not 0 <= self.order_by < X.shape[1]:
            raise ValueError(f"order_by={self.order_by} is not a column of X with {X.shape[1]} features")
        if X.shape[0] < self.n_states:
            raise ValueError(f"{X.shape[0]} samples cannot fit {self.n_states} states")

        logliks: list[float] = []
        n_iters: list[int] = []
        converged: list[bool] = []
        candidates: list[tuple[float, bool, int, GaussianHMM, np.ndarray]] = []
        for r in range(self.n_restarts):
            try:
                # One BLAS/OpenMP thread (here and in inference): the matrices are tiny
                # (n_states x n_features), so threads only add overhead, and spin-waiting
                # threads made the fit 5-20x slower on a busy 2-core machine.
                # Single-threaded reductions are also reproducible bit for bit.
                with threadpool_limits(limits=1):
                    hmm = self._fit_one(X, lengths_arr, self.random_state + r)
                    loglik = float(hmm.score(X, lengths_arr))
                    occupancy = _occupancy(hmm.predict(X, lengths_arr), self.n_states)
            except (ValueError, np.linalg.LinAlgError):
                # A restart can die on a singular covariance or a NaN step; the others may not.
                logliks.append(math.nan)
                n_iters.append(0)
                converged.append(False)
                continue
            if not np.isfinite(loglik):
                logliks.append(math.nan)
                n_iters.append(hmm.monitor_.iter)
                converged.append(False)
                continue
            history = list(hmm.monitor_.history)
            logliks.append(loglik)
            n_iters.append(int(hmm.monitor_.iter))
            # hmmlearn's own flag is also True when n_iter ran out; we want "gain < tol".
            converged.append(len(history) >= 2 and history[-1] - history[-2] < self.tol)
            full = bool((occupancy >= self.min_occupancy).all())
            candidates.append((loglik, full, r, hmm, occupancy))
        if not candidates:
            raise ValueError(f"all {self.n_restarts} HMM restarts failed numerically")

        # Prefer restarts with no collapsed state, then the higher log-likelihood; on a tie
        # the earlier restart wins, so the choice is deterministic.
        loglik, _, best, hmm, occupancy = max(candidates, key=lambda c: (c[1], c[0], -c[2]))
        self._hmm = hmm
        self.n_features_in_ = X.shape[1]
        self.train_loglik_ = loglik
        self.occupancy_ = occupancy
        self.collapsed_states_ = [
            name for name, occ in zip(self.state_names, occupancy) if occ < self.min_occupancy
        ]
        self.restart_logliks_ = logliks
        self.restart_n_iter_ = n_iters
        self.restart_converged_ = converged
        self.best_restart_ = best
        self.n_iter_ = n_iters[best]
        self.converged_ = converged[best]
        return self

    def _fit_one(self, X: np.ndarray, lengths: np.ndarray, seed: int) -> GaussianHMM:
        """One EM run from a GMM start, with states sorted by the mean of ``order_by``."""
        k = self.n_states
        gmm = GaussianMixture(
            n_components=k, covariance_type=self.covariance_type, random_state=seed, n_init=1
        ).fit(X)
        hmm = GaussianHMM(
            n_components=k,
            covariance_type=self.covariance_type,
            n_iter=self.n_iter,
            tol=self.tol,
            random_state=seed,
            init_params="",  # keep the GMM start below; hmmlearn would overwrite it otherwise
            params="stmc",
            implementation="log",
        )
        hmm.startprob_ = gmm.weights_ / gmm.weights_.sum()
        hmm.transmat_ = _sticky_transmat(k)
        hmm.means_ = gmm.means_
        hmm.covars_ = gmm.covariances_
        hmm.fit(X, lengths)
        _sort_states(hmm, self.order_by)
        return hmm

    # ------------------------------------------------------------------ inference

    def predict(self, X: np.ndarray, lengths: Sequence[int] | None = None) -> np.ndarray:
        """Viterbi state index per sample, ``(n_samples,)`` int, index into ``state_names``.

        HINDSIGHT: the path at t depends on samples after t. Use it for training targets
        and diagnostics only, never as a feature; use :meth:`filter_proba` for that.
        """
        X, lengths_arr = self._check_input(X, lengths)
        with threadpool_limits(limits=1):
            return self._hmm.predict(X, lengths_arr).astype(np.int64)

    def predict_proba(self, X: np.ndarray, lengths: Sequence[int] | None = None) -> np.ndarray:
        """Smoothed posteriors P(state_t | x_1..x_T), ``(n_samples, n_states)``.

        HINDSIGHT: uses the whole sequence (forward-backward). Training targets only.
        """
        X, lengths_arr = self._check_input(X, lengths)
        with threadpool_limits(limits=1):
            return self._hmm.predict_proba(X, lengths_arr)

    def filter_proba(self, X: np.ndarray, lengths: Sequence[int] | None = None) -> np.ndarray:
        """Causal filtered probabilities P(state_t | x_1..x_t), ``(n_samples, n_states)``.

        Forward algorithm in log space, restarted from ``startprob_`` at each sequence in
        `lengths`. Row t depends only on rows <= t of its own sequence, so it is safe to use
        as a feature at time t. Rows sum to 1.
        """
        X, lengths_arr = self._check_input(X, lengths)
        with np.errstate(divide="ignore"):  # a zero probability is a legitimate log(0) = -inf
            log_start = np.log(self._hmm.startprob_)
            log_trans = np.log(self._hmm.transmat_)
        with threadpool_limits(limits=1):
            log_emission = self._hmm._compute_log_likelihood(X)  # (n_samples, n_states)
        out = np.empty_like(log_emission)
        start = 0
        for length in lengths_arr:
            stop = start + int(length)
            log_alpha = log_start + log_emission[start]
            out[start] = _log_normalize(log_alpha)
            for t in range(start + 1, stop):
                # Normalising every step keeps alpha O(1) in log space; the filtered
                # distribution is unaffected, only the (unused) sequence likelihood is dropped.
                log_alpha = _logsumexp(out[t - 1][:, None] + log_trans, axis=0) + log_emission[t]
                out[t] = _log_normalize(log_alpha)
            start = stop
        return np.exp(out)

    def score(self, X: np.ndarray, lengths: Sequence[int] | None = None) -> float:
        """Total log-likelihood of ``X`` under the model (sum over sequences)."""
        X, lengths_arr = self._check_input(X, lengths)
        with threadpool_limits(limits=1):
            return float(self._hmm.score(X, lengths_arr))

    # ------------------------------------------------------------------ parameters

    @property
    def startprob_(self) -> np.ndarray:
        return self._fitted().startprob_.copy()

    @property
    def transmat_(self) -> np.ndarray:
        return self._fitted().transmat_.copy()

    @property
    def means_(self) -> np.ndarray:
        return self._fitted().means_.copy()

    @property
    def covars_(self) -> np.ndarray:
        return self._fitted().covars_.copy()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description: settings, parameters (nested lists of floats) and
        fit diagnostics. ``covars`` is in hmmlearn's compact form for ``covariance_type``."""
        hmm = self._fitted()
        return {
            "format": FORMAT,
            "state_names": list(self.state_names),
            "settings": {
                "covariance_type": self.covariance_type,
                "n_restarts": self.n_restarts,
                "n_iter": self.n_iter,
                "tol": self.tol,
                "min_occupancy": self.min_occupancy,
                "order_by": self.order_by,
                "random_state": self.random_state,
            },
            "params": {
                "n_features": int(self.n_features_in_),
                "startprob": hmm.startprob_.tolist(),
                "transmat": hmm.transmat_.tolist(),
                "means": hmm.means_.tolist(),
                "covars": np.asarray(hmm._covars_).tolist(),
            },
            "diagnostics": {
                "train_loglik": _json_float(self.train_loglik_),
                "occupancy": [float(v) for v in self.occupancy_],
                "collapsed_states": list(self.collapsed_states_),
                "restart_logliks": [_json_float(v) for v in self.restart_logliks_],
                "restart_n_iter": [int(v) for v in self.restart_n_iter_],
                "restart_converged": [bool(v) for v in self.restart_converged_],
                "best_restart": int(self.best_restart_),
                "n_iter": int(self.n_iter_),
                "converged": bool(self.converged_),
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RegimeHMM:
        """Rebuild a fitted model from :meth:`to_dict` output (also after a JSON round trip)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model description (format={d.get('format')!r})")
        settings, params, diag = d["settings"], d["params"], d["diagnostics"]
        model = cls(d["state_names"], **settings)
        hmm = GaussianHMM(
            n_components=model.n_states,
            covariance_type=model.covariance_type,
            n_iter=model.n_iter,
            tol=model.tol,
            init_params="",
            params="stmc",
            implementation="log",
        )
        hmm.n_features = int(params["n_features"])
        hmm.startprob_ = np.asarray(params["startprob"], dtype=np.float64)
        hmm.transmat_ = np.asarray(params["transmat"], dtype=np.float64)
        hmm.means_ = np.asarray(params["means"], dtype=np.float64)
        hmm.covars_ = np.asarray(params["covars"], dtype=np.float64)
        hmm._check()  # validates shapes and that probabilities sum to 1
        model._hmm = hmm
        model.n_features_in_ = int(params["n_features"])
        model.train_loglik_ = _from_json_float(diag["train_loglik"])
        model.occupancy_ = np.asarray(diag["occupancy"], dtype=np.float64)
        model.collapsed_states_ = list(diag["collapsed_states"])
        model.restart_logliks_ = [_from_json_float(v) for v in diag["restart_logliks"]]
        model.restart_n_iter_ = list(diag["restart_n_iter"])
        model.restart_converged_ = list(diag["restart_converged"])
        model.best_restart_ = int(diag["best_restart"])
        model.n_iter_ = int(diag["n_iter"])
        model.converged_ = bool(diag["converged"])
        return model

    # ------------------------------------------------------------------ helpers

    def _fitted(self) -> GaussianHMM:
        hmm = getattr(self, "_hmm", None)
        if hmm is None:
            raise RuntimeError("RegimeHMM is not fitted: call fit() or from_dict() first")
        return hmm

    def _check_input(
        self, X: np.ndarray, lengths: Sequence[int] | None, *, fitting: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``X`` as a finite float64 2-D array and `lengths` as an int array summing to its rows."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X has no rows")
        if not np.isfinite(X).all():
            row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise ValueError(f"X has a NaN or infinite value (row {row})")
        if not fitting:
            n_features = self._fitted().means_.shape[1]
            if X.shape[1] != n_features:
                raise ValueError(f"X has {X.shape[1]} features, the model was fitted on {n_features}")
        if lengths is None:
            lengths_arr = np.array([X.shape[0]], dtype=np.int64)
        else:
            lengths_arr = np.asarray(lengths, dtype=np.int64).reshape(-1)
            if (lengths_arr <= 0).any():
                raise ValueError(f"lengths must be positive, got {lengths_arr.tolist()}")
            if int(lengths_arr.sum()) != X.shape[0]:
                raise ValueError(f"lengths sum to {int(lengths_arr.sum())}, X has {X.shape[0]} rows")
        return X, lengths_arr

    def __repr__(self) -> str:
        return (
            f"RegimeHMM(state_names={self.state_names}, covariance_type={self.covariance_type!r}, "
            f"n_restarts={self.n_restarts}, random_state={self.random_state})"
        )


def _sticky_transmat(k: int) -> np.ndarray:
    """``(k, k)`` transition matrix with ``_STICKY`` on the diagonal, the rest spread evenly."""
    if k == 1:
        return np.ones((1, 1))
    off = (1.0 - _STICKY) / (k - 1)
    return np.full((k, k), off) + np.eye(k) * (_STICKY - off)


def _sort_states(hmm: GaussianHMM, order_by: int) -> None:
    """Permute `hmm`'s states in place so the means of feature `order_by` increase."""
    order = np.argsort(hmm.means_[:, order_by], kind="stable")
    if (order == np.arange(len(order))).all():
        return
    hmm.startprob_ = hmm.startprob_[order]
    hmm.transmat_ = hmm.transmat_[np.ix_(order, order)]
    hmm.means_ = hmm.means_[order]
    if hmm.covariance_type != "tied":  # one shared matrix: nothing to permute
        hmm.covars_ = np.asarray(hmm._covars_)[order]


def _occupancy(labels: np.ndarray, n_states: int) -> np.ndarray:
    """Fraction of samples per state, ``(n_states,)``."""
    return np.bincount(labels, minlength=n_states)[:n_states] / max(len(labels), 1)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(a))) along `axis`, exact for all -inf slices (gives -inf, not nan)."""
    peak = a.max(axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - peak).sum(axis=axis)) + np.squeeze(peak, axis=axis)


def _log_normalize(log_p: np.ndarray) -> np.ndarray:
    """Shift a log-probability vector so its probabilities sum to 1."""
    return log_p - _logsumexp(log_p, axis=0)


def _json_float(value: float) -> float | None:
    """JSON has no NaN: a failed restart's log-likelihood is stored as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def _from_json_float(value: float | None) -> float:
    return math.nan if value is None else float(value)
