"""Cross-regime graph detector: graph building (masking, edges, causality) and the GraphSAGE classifier.

The batched layer is checked against a plain Python loop (``sage_layer_naive``), correlation
edges against pandas' ``.corr()``, and learnability on a synthetic task with the project's
``fit_classifier``. Real data is the embedded Binance daily klines.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd
import pytest
import torch

from regime_pipeline.configs import splits, universe
from regime_pipeline.core.features.daily import TREND_COLUMNS, VOL_COLUMNS, fit_garch, trend_features, vol_features
from regime_pipeline.core.regimes.graphs import Graphs, build_graphs
from regime_pipeline.core.regimes.models.gnn import (
    GraphSAGEClassifier,
    graph_tensors,
    node_strength,
    normalized_adjacency,
    sage_layer,
    sage_layer_naive,
)
from regime_pipeline.core.regimes.models.training import fit_classifier, predict_proba, profile, set_seed
from regime_pipeline_tests.conftest import embedded_daily_bars

DAY = dt.timedelta(days=1)
COLUMNS = VOL_COLUMNS + TREND_COLUMNS
N = 13


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return embedded_daily_bars()


@pytest.fixture(scope="module")
def node_features(bars) -> pd.DataFrame:
    """Vol + trend features over the whole history, standardised on train rows."""
    train = splits()["train"]
    params = fit_garch(bars, train.start, train.end + DAY)
    first, end = dt.date(2017, 8, 17), dt.date(2026, 1, 1)
    frame = vol_features(bars, params, first, end).merge(trend_features(bars, first, end), on=["date", "symbol"])
    on_train = (frame["date"] >= train.start) & (frame["date"] <= train.end)
    mu, sd = frame.loc[on_train, COLUMNS].mean(), frame.loc[on_train, COLUMNS].std()
    frame[COLUMNS] = (frame[COLUMNS] - mu) / sd
    return frame


def random_graphs(seed: int, batch: int = 5, f: int = 6, dtype=torch.float64):
    """Random symmetric non-negative graphs with masked nodes (and an isolated active node)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, N, f, generator=g, dtype=dtype)
    A = torch.rand(batch, N, N, generator=g, dtype=dtype)
    A = (A + A.transpose(1, 2)) / 2
    A = A * (torch.rand(batch, N, N, generator=g, dtype=dtype) > 0.3)  # some missing edges
    A = torch.minimum(A, A.transpose(1, 2))
    mask = torch.rand(batch, N, generator=g) > 0.35
    mask[:, 0] = True
    mask[:, 1] = True
    A[:, 1, :] = 0.0  # node 1 active but without neighbours: zero neighbour mean
    A[:, :, 1] = 0.0
    return X, A, mask


def model(seed: int = 0, **hp) -> GraphSAGEClassifier:
    torch.manual_seed(seed)
    net = GraphSAGEClassifier({"n_features": 6, "n_classes": 3, "hidden": 8, **hp})
    return net.double().eval()


# --------------------------------------------------------------------------------------
# The layer and the classifier
# --------------------------------------------------------------------------------------


def test_batched_layer_equals_naive_loop():
    X, A, mask = random_graphs(0)
    g = torch.Generator().manual_seed(1)
    w_self = torch.randn(7, 6, generator=g, dtype=torch.float64)
    w_neigh = torch.randn(7, 6, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    # Masked rows of X hold garbage on purpose: the layer must ignore them.
    out = sage_layer(X, normalized_adjacency(A, mask), mask, w_self, w_neigh, b)
    for i in range(len(X)):
        ref = sage_layer_naive(X[i], A[i], mask[i], w_self, w_neigh, b)
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=0, atol=1e-6)
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize("strength", [False, True])
def test_model_layers_equal_naive_loop(strength):
    """The model's 2-layer node states equal the naive layer applied twice with its weights."""
    X, A, mask = random_graphs(2)
    net = model(layers=2, dropout=0.0, node_strength=strength)
    with torch.no_grad():
        got = net.node_embeddings(X, A, mask)
    for i in range(len(X)):
        h = (X[i] * mask[i, :, None]).numpy()
        if strength:
            h = np.concatenate([h, node_strength(A[i : i + 1], mask[i : i + 1])[0].numpy()], axis=1)
        for layer in net.sage:
            h = sage_layer_naive(
                h, A[i], mask[i], layer.self_linear.weight, layer.neigh_linear.weight, layer.self_linear.bias
            )
        np.testing.assert_allclose(got[i].numpy(), h, rtol=0, atol=1e-6)


@pytest.mark.parametrize("readout", ["mean", "mean_max"])
def test_masked_nodes_do_not_influence_logits(readout):
    X, A, mask = random_graphs(3)
    net = model(readout=readout, node_strength=True)
    with torch.no_grad():
        before = net(X, A, mask)
        X2, A2 = X.clone(), A.clone()
        off = ~mask
        X2[off] = 100.0 * torch.randn_like(X2[off])
        noise = torch.rand_like(A2) * 5.0
        touches_masked = off[:, :, None] | off[:, None, :]
        A2 = torch.where(touches_masked, noise, A2)
        after = net(X2, A2, mask)
    assert torch.equal(before, after)


def test_output_shapes_and_probabilities():
    X, A, mask = random_graphs(4, batch=7)
    for readout in ("mean", "mean_max"):
        net = model(readout=readout, layers=3)
        with torch.no_grad():
            logits = net(X, A, mask)
        assert logits.shape == (7, 3)
        prob = torch.softmax(logits, dim=1)
        torch.testing.assert_close(prob.sum(dim=1), torch.ones(7, dtype=torch.float64))
    # A graph with no active node still gives finite logits (not NaN from 0/0).
    empty = torch.zeros_like(mask)
    with torch.no_grad():
        assert torch.isfinite(model()(X, A, empty)).all()
    # float32 inputs and an integer mask (what fit_classifier hands over) work too.
    net = GraphSAGEClassifier({"n_features": 6, "n_classes": 4}).eval()
    with torch.no_grad():
        assert net(X.float(), A.float(), mask.long()).shape == (7, 4)


@pytest.mark.parametrize("readout", ["mean", "mean_max"])
def test_permutation_invariance(readout):
    X, A, mask = random_graphs(5)
    net = model(readout=readout, node_strength=True)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        logits = net(X, A, mask)
        permuted = net(X[:, perm], A[:, perm][:, :, perm], mask[:, perm])
        # Node states are permuted along with the nodes (equivariance).
        h = net.node_embeddings(X, A, mask)
        h_perm = net.node_embeddings(X[:, perm], A[:, perm][:, :, perm], mask[:, perm])
    torch.testing.assert_close(permuted, logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(h_perm, h[:, perm], rtol=0, atol=1e-10)


def test_rebuild_from_hparams():
    net = GraphSAGEClassifier({"n_features": 6, "n_classes": 3, "hidden": 8, "layers": 3, "readout": "mean"})
    clone = GraphSAGEClassifier(net.hparams)
    clone.load_state_dict(net.state_dict())
    X, A, mask = random_graphs(6, dtype=torch.float32)
    net.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(net(X, A, mask), clone(X, A, mask))
    assert set(net.hparams) == {"n_features", "n_classes", "hidden", "layers", "dropout", "readout", "node_strength"}
    assert (net.hparams["hidden"], net.hparams["layers"], net.hparams["readout"]) == (8, 3, "mean")
    with pytest.raises(ValueError, match="n_classes"):
        GraphSAGEClassifier({"n_features": 6})


def test_edge_level_needs_node_strength():
    """Row normalisation is blind to the scale of A; the node-strength input is not."""
    X, A, mask = random_graphs(7)
    with torch.no_grad():
        blind = model(node_strength=False)
        torch.testing.assert_close(blind(X, 0.3 * A, mask), blind(X, A, mask), rtol=0, atol=1e-12)
        seeing = model(node_strength=True)
        assert not torch.allclose(seeing(X, 0.3 * A, mask), seeing(X, A, mask))


def test_training_profile_builds_the_model():
    for name in ("default", "fast"):
        settings = profile("cross", name)
        for key in ("window", "edges", "hidden", "layers", "dropout", "readout", "node_strength",
                    "epochs", "patience", "batch_size", "lr", "weight_decay", "seed"):
            assert key in settings, (name, key)
        assert settings["edges"] in ("correlation", "cosine")
        net = GraphSAGEClassifier({**settings, "n_features": 6, "n_classes": 3})
        assert net.hparams["hidden"] == settings["hidden"] and net.hparams["layers"] == settings["layers"]


# --------------------------------------------------------------------------------------
# build_graphs on real data
# --------------------------------------------------------------------------------------


def test_late_listed_assets_masked_before_listing(bars, node_features):
    dates = pd.date_range("2018-03-01", "2021-12-31", freq="D").date
    g = build_graphs(node_features, bars, COLUMNS, dates)
    assert g.X.shape == (len(dates), N, len(COLUMNS)) and g.X.dtype == np.float32
    assert g.A.shape == (len(dates), N, N) and g.A.dtype == np.float32
    assert g.mask.shape == (len(dates), N) and g.mask.dtype == bool
    assert g.symbols == tuple(universe().candidates)
    for symbol in ("SOLUSDT", "DOTUSDT", "AVAXUSDT"):
        i = g.symbols.index(symbol)
        before = g.dates < universe()[symbol].listed
        assert before.any() and not g.mask[before, i].any()
        assert (g.X[before, i] == 0).all() and (g.A[before, i] == 0).all() and (g.A[before, :, i] == 0).all()
        assert g.mask[-1, i]  # in by the end of 2021
    # Masked-out anywhere: zero rows and columns; active pairs mostly connected; symmetric, diagonal 0.
    off = ~g.mask
    assert (g.X[off] == 0).all() and (g.A.transpose(0, 2, 1)[off] == 0).all() and (g.A[off] == 0).all()
    np.testing.assert_array_equal(g.A, g.A.transpose(0, 2, 1))
    assert (np.diagonal(g.A, axis1=1, axis2=2) == 0).all()
    assert ((g.A >= 0) & (g.A <= 1)).all()
    # Node features are the caller's rows, unchanged (float32).
    day = dt.date(2021, 6, 15)
    t = list(g.dates).index(day)
    rows = node_features.loc[node_features["date"] == day].set_index("symbol").reindex(g.symbols)
    np.testing.assert_allclose(g.X[t][g.mask[t]], rows[COLUMNS].to_numpy()[g.mask[t]], rtol=1e-6, atol=1e-6)


def test_correlation_edges_equal_pandas(bars, node_features):
    day = dt.date(2021, 6, 15)
    g = build_graphs(node_features, bars, COLUMNS, [day], window=30)
    close = bars.pivot(index="date", columns="symbol", values="close")[list(g.symbols)]
    returns = np.log(close / close.shift(1))
    window = returns.loc[returns.index <= day].tail(30)
    assert window.index[-1] == day and len(window) == 30
    expected = window.corr().to_numpy().clip(0.0, 1.0)
    np.fill_diagonal(expected, 0.0)
    m = g.mask[0]
    assert m.sum() == 13
    expected = expected * np.outer(m, m)
    np.testing.assert_allclose(g.A[0], expected, rtol=0, atol=1e-6)
    assert (g.A[0][np.ix_(m, m)][~np.eye(13, dtype=bool)] > 0).mean() > 0.9  # a dense graph


def test_graphs_are_causal(bars, node_features):
    """Perturbing bars and features after d leaves graph d unchanged; perturbing day d does not."""
    d = dt.date(2022, 5, 10)
    dates = [d - 40 * DAY, d - DAY, d]
    rng = np.random.default_rng(0)
    later_bars = bars.copy()
    after = later_bars["date"] > d
    factor = np.exp(rng.normal(0, 0.2, after.sum()))
    for column in ("open", "high", "low", "close"):
        later_bars.loc[after, column] = later_bars.loc[after, column] * factor
    later_feats = node_features.copy()
    later_feats.loc[later_feats["date"] > d, COLUMNS] = rng.normal(0, 5, ((later_feats["date"] > d).sum(), len(COLUMNS)))
    # A late-listed asset's later history vanishing must not matter either.
    later_feats = later_feats.loc[~((later_feats["date"] > d) & (later_feats["symbol"] == "AVAXUSDT"))]
    for edges in ("correlation", "cosine"):
        base = build_graphs(node_features, bars, COLUMNS, dates, edges=edges)
        moved = build_graphs(later_feats, later_bars, COLUMNS, dates, edges=edges)
        np.testing.assert_array_equal(base.X, moved.X)
        np.testing.assert_array_equal(base.A, moved.A)
        np.testing.assert_array_equal(base.mask, moved.mask)
    # The test has teeth: moving day d's close changes graph d's correlations.
    on_d = bars.copy()
    on_d.loc[on_d["date"] == d, "close"] *= np.exp(rng.normal(0, 0.2, (on_d["date"] == d).sum()))
    base = build_graphs(node_features, bars, COLUMNS, dates)
    moved = build_graphs(node_features, on_d, COLUMNS, dates)
    np.testing.assert_array_equal(base.A[:2], moved.A[:2])
    assert not np.array_equal(base.A[2], moved.A[2])


def test_cosine_edges(bars, node_features):
    dates = [dt.date(2019, 3, 1), dt.date(2023, 9, 9)]
    g = build_graphs(node_features, None, COLUMNS, dates, edges="cosine")
    assert g.edges == "cosine"
    for t in range(len(dates)):
        m = g.mask[t]
        x = g.X[t].astype(np.float64)
        unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
        expected = (unit @ unit.T).clip(0.0, 1.0) * np.outer(m, m)
        np.fill_diagonal(expected, 0.0)
        np.testing.assert_allclose(g.A[t], expected, rtol=0, atol=1e-6)
    assert g.mask[0].sum() < 13 and g.mask[1].all()  # 2019: SOL, DOT, AVAX (and DOGE, LINK) not yet in
    with pytest.raises(ValueError, match="edges"):
        build_graphs(node_features, bars, COLUMNS, dates, edges="euclid")  # type: ignore[arg-type]


def test_full_history_is_fast(bars, node_features):
    dates = pd.date_range("2017-10-01", "2025-12-31", freq="D").date
    started = time.perf_counter()
    g = build_graphs(node_features, bars, COLUMNS, dates)
    assert time.perf_counter() - started < 2.0
    assert isinstance(g, Graphs) and len(g) == len(dates)
    train = g.between(splits()["train"].start, splits()["train"].end)
    assert train.dates[0] == splits()["train"].start and train.dates[-1] == splits()["train"].end


# --------------------------------------------------------------------------------------
# Learnability
# --------------------------------------------------------------------------------------


def synthetic_task(seed: int, n: int, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Graphs whose label is the tercile of a graph statistic over the ACTIVE nodes only.

    ``target="edges"``: the mean edge weight among active nodes (each graph has its own level);
    ``target="feature"``: the mean of node feature 0 among active nodes. Masked nodes carry
    large random features and edges, so a model that leaks them cannot score well.
    """
    rng = np.random.default_rng(seed)
    f = 4
    X = rng.normal(0.0, 1.0, (n, N, f))
    level = rng.uniform(0.05, 0.95, n)
    A = np.clip(level[:, None, None] + rng.normal(0.0, 0.08, (n, N, N)), 0.0, 1.0)
    A = (A + A.transpose(0, 2, 1)) / 2
    mask = np.zeros((n, N), dtype=bool)
    for i, k in enumerate(rng.integers(4, N + 1, n)):
        mask[i, rng.choice(N, k, replace=False)] = True
    X[~mask] = rng.normal(5.0, 3.0, ((~mask).sum(), f))
    pair = mask[:, :, None] & mask[:, None, :] & ~np.eye(N, dtype=bool)
    if target == "edges":
        stat = (A * pair).sum(axis=(1, 2)) / pair.sum(axis=(1, 2))
    else:
        stat = (X[..., 0] * mask).sum(axis=1) / mask.sum(axis=1)
    cuts = np.quantile(stat, [1 / 3, 2 / 3])
    y = np.digitize(stat, cuts)
    return X.astype(np.float32), A.astype(np.float32), mask, y


@pytest.fixture
def one_thread():
    """One intra-op thread: on 13-node graphs torch's thread hand-offs cost far more than they
    save (a training step is ~7x slower with 2 threads here). Process-wide, so restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("target", ["edges", "feature"])
def test_learns_a_graph_level_label(target, one_thread):
    set_seed(0)
    X, A, mask, y = synthetic_task(1, 1800, target)
    tr, va, te = slice(0, 1000), slice(1000, 1400), slice(1400, 1800)
    net = GraphSAGEClassifier({"n_features": 4, "n_classes": 3, "hidden": 32, "dropout": 0.0})
    result = fit_classifier(
        net,
        [X[tr], A[tr], mask[tr]],
        [X[va], A[va], mask[va]],
        y_train=y[tr],
        y_val=y[va],
        n_classes=3,
        epochs=60,
        batch_size=64,
        lr=3e-3,
        weight_decay=0.0,
        patience=15,
        seed=0,
    )
    prob = predict_proba(net, [X[te], A[te], mask[te]])
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, atol=1e-9)
    accuracy = float((prob.argmax(axis=1) == y[te]).mean())
    assert accuracy > 0.75, (accuracy, result.best)


def test_graph_tensors(bars, node_features):
    g = build_graphs(node_features, bars, COLUMNS, [dt.date(2020, 1, 1), dt.date(2021, 1, 1)])
    X, A, mask = graph_tensors(g)
    assert X.dtype == torch.float32 and A.dtype == torch.float32 and mask.dtype == torch.bool
    assert X.shape == (2, N, len(COLUMNS)) and mask.sum() == g.mask.sum()
