"""RegimeHMM on synthetic regimes: state order, seeds, rare states, causality, storage, accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from regime_pipeline.core.regimes.hmm import RegimeHMM

NAMES = ("bear", "neutral", "bull")
# True means, already in increasing order of feature 0 (the `order_by` column), so true
# state j should come out as fitted state j.
MEANS = np.array([[-2.0, 1.0], [0.0, 0.0], [2.0, -1.0]])
SCALE = 0.6


def _markov_path(rng: np.random.Generator, transmat: np.ndarray, n: int) -> np.ndarray:
    k = len(transmat)
    path = np.empty(n, dtype=np.int64)
    path[0] = rng.integers(k)
    for t in range(1, n):
        path[t] = rng.choice(k, p=transmat[path[t - 1]])
    return path


def _sticky(k: int, stay: float) -> np.ndarray:
    return np.full((k, k), (1 - stay) / (k - 1)) + np.eye(k) * (stay - (1 - stay) / (k - 1))


def make_regimes(seed: int = 0, n_seq: int = 4, length: int = 600) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(X (n, 2), true states (n,), lengths)``: 3 sticky, well separated Gaussian regimes."""
    rng = np.random.default_rng(seed)
    paths = [_markov_path(rng, _sticky(3, 0.97), length) for _ in range(n_seq)]
    states = np.concatenate(paths)
    X = MEANS[states] + rng.normal(scale=SCALE, size=(len(states), 2))
    return X, states, [length] * n_seq


def make_rare(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Two common regimes plus a "crash" regime on 1.5% of the samples (one 9-day episode per
    sequence), with the lowest feature-0 mean, so it should be state 0."""
    rng = np.random.default_rng(seed)
    means = np.array([[-6.0, 3.0], [0.0, 0.0], [1.5, -1.0]])
    n_seq, length, episode = 4, 600, 9
    paths = []
    for _ in range(n_seq):
        path = _markov_path(rng, _sticky(2, 0.97), length) + 1  # states 1, 2
        start = int(rng.integers(50, length - 50))
        path[start : start + episode] = 0
        paths.append(path)
    states = np.concatenate(paths)
    X = means[states] + rng.normal(scale=0.5, size=(len(states), 2))
    return X, states, [length] * n_seq


@pytest.fixture(scope="module")
def data():
    return make_regimes()


@pytest.fixture(scope="module")
def model(data):
    X, _, lengths = data
    return RegimeHMM(NAMES, random_state=0).fit(X, lengths)


def test_viterbi_recovers_known_states(model, data):
    X, states, lengths = data
    labels = model.predict(X, lengths)
    assert labels.dtype == np.int64 and labels.shape == states.shape
    assert (labels == states).mean() >= 0.95
    np.testing.assert_allclose(model.means_, MEANS, atol=0.1)
    assert model.collapsed_states_ == []
    assert model.occupancy_.shape == (3,) and model.occupancy_.sum() == pytest.approx(1.0)
    assert len(model.restart_logliks_) == model.n_restarts
    assert model.train_loglik_ == pytest.approx(model.score(X, lengths))
    assert model.train_loglik_ == max(model.restart_logliks_)


def test_state_order_is_stable_across_seeds(model, data):
    X, _, lengths = data
    other = RegimeHMM(NAMES, random_state=17).fit(X, lengths)
    assert (np.diff(other.means_[:, 0]) > 0).all()
    assert (np.argsort(other.means_[:, 0]) == np.argsort(model.means_[:, 0])).all()
    np.testing.assert_allclose(other.means_, model.means_, atol=1e-3)
    assert (other.predict(X, lengths) == model.predict(X, lengths)).mean() >= 0.99


def test_sorting_permutes_parameters_consistently(data):
    # Order by feature 1, whose means decrease with feature 0: the state order must reverse
    # and the model must describe the data exactly as well as before.
    X, states, lengths = data
    by0 = RegimeHMM(NAMES, n_restarts=1).fit(X, lengths)
    by1 = RegimeHMM(NAMES, n_restarts=1, order_by=1).fit(X, lengths)
    rev = [2, 1, 0]
    np.testing.assert_allclose(by1.means_, by0.means_[rev], atol=1e-6)
    np.testing.assert_allclose(by1.transmat_, by0.transmat_[np.ix_(rev, rev)], atol=1e-6)
    np.testing.assert_allclose(by1.covars_, by0.covars_[rev], atol=1e-6)
    assert by1.score(X, lengths) == pytest.approx(by0.score(X, lengths))
    assert (by1.predict(X, lengths) == 2 - states).mean() >= 0.95


def test_fixed_seed_is_bit_identical(model, data):
    X, _, lengths = data
    again = RegimeHMM(NAMES, random_state=0).fit(X, lengths)
    assert np.array_equal(again.predict(X, lengths), model.predict(X, lengths))
    assert np.array_equal(again.filter_proba(X, lengths), model.filter_proba(X, lengths))
    assert again.to_dict() == model.to_dict()


def test_rare_state_is_found_or_reported_never_renamed():
    X, states, lengths = make_rare()
    rare = states == 0
    assert 0.01 <= rare.mean() <= 0.02
    names = ("crash", "calm", "rally")
    model = RegimeHMM(names, min_occupancy=0.01, random_state=0).fit(X, lengths)
    labels = model.predict(X, lengths)
    if model.collapsed_states_:
        assert "crash" in model.collapsed_states_
    else:
        # Found: the crash samples are called "crash", and nothing else is.
        assert (labels[rare] == 0).mean() >= 0.95
        assert (labels[~rare] != 0).mean() >= 0.99
        assert model.means_[0, 0] < -4
        assert (labels == states).mean() >= 0.95


def test_collapsed_state_is_reported_not_raised():
    # A floor above the crash regime's 1.5% share cannot be met by a model that finds it:
    # the model is kept, and the thin state is named.
    X, states, lengths = make_rare()
    model = RegimeHMM(("crash", "calm", "rally"), min_occupancy=0.05, random_state=0).fit(X, lengths)
    assert model.collapsed_states_
    for name in model.collapsed_states_:
        assert model.occupancy_[model.state_names.index(name)] < 0.05
    assert model.train_loglik_ == max(model.restart_logliks_)


def test_impossible_floor_keeps_best_and_reports():
    X, _, lengths = make_regimes(length=200)
    model = RegimeHMM(NAMES, min_occupancy=0.5, n_restarts=2).fit(X, lengths)
    assert len(model.collapsed_states_) >= 2
    assert model.train_loglik_ == max(model.restart_logliks_)


def test_filter_proba_is_causal(model, data):
    X, _, lengths = data
    proba = model.filter_proba(X, lengths)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert (proba >= 0).all()

    rng = np.random.default_rng(1)
    t = 250  # inside the first sequence
    changed = X.copy()
    changed[t + 1 :] = rng.normal(scale=3.0, size=changed[t + 1 :].shape)
    perturbed = model.filter_proba(changed, lengths)
    assert np.array_equal(perturbed[: t + 1], proba[: t + 1])
    assert not np.allclose(perturbed[t + 1 :], proba[t + 1 :])
    # Truncating the data is another way of hiding the future.
    assert np.array_equal(model.filter_proba(X[: t + 1]), proba[: t + 1])


def test_filter_proba_restarts_at_each_sequence(model, data):
    X, _, lengths = data
    proba = model.filter_proba(X, lengths)
    second = slice(lengths[0], lengths[0] + lengths[1])
    assert np.array_equal(model.filter_proba(X[second]), proba[second])


def test_filter_equals_smoother_at_each_sequence_end(model, data):
    X, _, lengths = data
    filt = model.filter_proba(X, lengths)
    smooth = model.predict_proba(X, lengths)
    ends = np.cumsum(lengths) - 1
    np.testing.assert_allclose(filt[ends], smooth[ends], rtol=0, atol=1e-10)
    # Elsewhere the smoother has seen the future and differs.
    assert not np.allclose(filt, smooth)


def test_dict_round_trip_through_json(model, data):
    X, _, lengths = data
    d = json.loads(json.dumps(model.to_dict()))
    restored = RegimeHMM.from_dict(d)
    assert restored.state_names == list(NAMES)
    assert restored.to_dict() == model.to_dict()
    assert np.array_equal(restored.predict(X, lengths), model.predict(X, lengths))
    assert np.array_equal(restored.predict_proba(X, lengths), model.predict_proba(X, lengths))
    assert np.array_equal(restored.filter_proba(X, lengths), model.filter_proba(X, lengths))
    assert restored.score(X, lengths) == model.score(X, lengths)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical", "tied"])
def test_other_covariance_types_round_trip(covariance_type):
    X, states, lengths = make_regimes(length=300)
    model = RegimeHMM(NAMES, covariance_type=covariance_type, n_restarts=2).fit(X, lengths)
    assert (model.predict(X, lengths) == states).mean() >= 0.95
    restored = RegimeHMM.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.array_equal(restored.filter_proba(X, lengths), model.filter_proba(X, lengths))


def test_bad_input_is_refused(model, data):
    X, _, lengths = data
    with pytest.raises(ValueError, match="lengths sum"):
        model.predict(X, [10, 20])
    with pytest.raises(ValueError, match="features"):
        model.filter_proba(X[:, :1])
    bad = X.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="row 5"):
        RegimeHMM(NAMES).fit(bad)
    with pytest.raises(RuntimeError, match="not fitted"):
        RegimeHMM(NAMES).predict(X)
    with pytest.raises(ValueError, match="unique"):
        RegimeHMM(["a", "a"])
