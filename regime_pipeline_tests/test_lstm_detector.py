"""The LSTM regime detectors: windows, attention-LSTM model, training loop, storage and metrics."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from regime_pipeline.core.regimes.metrics import classification_report, confusion_matrix, macro_f1, plot_confusion
from regime_pipeline.core.regimes.models import (
    AttentionLSTMClassifier,
    class_weights,
    fit_classifier,
    load_model,
    predict_proba,
    profile,
    save_model,
    set_seed,
)
from regime_pipeline.core.regimes.windows import Standardizer, make_windows, window_for_day

FAST = profile("lstm", "fast")
WINDOW = FAST["window"]
START = dt.date(2021, 1, 1)


def hparams(n_features: int = 2, n_classes: int = 3, **overrides) -> dict:
    hp = {k: FAST[k] for k in ("hidden", "hidden2", "dropout", "window")}
    return {"n_features": n_features, "n_classes": n_classes, **hp, **overrides}


def build(hp: dict) -> AttentionLSTMClassifier:
    return AttentionLSTMClassifier(hp)


def fit(model, data, **overrides):
    (Xtr, ytr), (Xva, yva) = data
    kwargs = {k: FAST[k] for k in ("epochs", "batch_size", "lr", "weight_decay", "patience", "seed")}
    kwargs.update(overrides)
    return fit_classifier(model, Xtr, Xva, y_train=ytr, y_val=yva, n_classes=3, **kwargs)


def synthetic(n: int, seed: int, random_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, 30, 2) float32, y (n,))``: feature 0's level over the LAST 10 days is -1, 0 or
    +1 by class, with noise; the first 20 days and feature 1 are pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, WINDOW, 2))
    X[:, -10:, 0] = (y - 1.0)[:, None] + rng.normal(scale=0.5, size=(n, 10))
    if random_labels:
        y = rng.integers(0, 3, n)
    return X.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module", autouse=True)
def _torch_settings():
    """The fast profile's thread count for this module; torch's process-wide settings restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    set_seed(0, FAST["threads"])
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.fixture(scope="module")
def data():
    return synthetic(1200, seed=1), synthetic(400, seed=2)


@pytest.fixture(scope="module")
def trained(data):
    set_seed(FAST["seed"])
    model = build(hparams())
    result = fit(model, data)
    return model, result


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------


def test_output_shapes_probabilities_and_attention():
    set_seed(0)
    model = build(hparams(n_features=5, n_classes=4)).eval()
    x = torch.randn(7, WINDOW, 5)
    logits, weights = model(x, return_attention=True)
    assert logits.shape == (7, 4)
    assert torch.equal(model(x), logits)
    assert torch.allclose(torch.softmax(logits, dim=1).sum(dim=1), torch.ones(7))
    assert weights.shape == (7, WINDOW)
    assert (weights >= 0).all()
    assert torch.allclose(weights.sum(dim=1), torch.ones(7))
    proba = predict_proba(model, x.numpy(), batch_size=3)
    assert proba.shape == (7, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert model.hparams == hparams(n_features=5, n_classes=4)
    with pytest.raises(ValueError, match=r"\(batch, 30, 5\)"):
        model(torch.randn(2, WINDOW - 1, 5))
    with pytest.raises(ValueError, match="unknown hparams"):
        AttentionLSTMClassifier({**hparams(), "hiden": 3})


def test_save_load_round_trip_gives_identical_outputs(tmp_path, trained):
    model, result = trained
    extra = {"class_names": ["a", "b", "c"], "best_epoch": result.best_epoch, "scaler": {"mean": [0.5, 1.0]}}
    path = tmp_path / "models" / "vol.pt"
    digest = save_model(path, model, extra)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded, loaded_extra = load_model(path, build)
    assert loaded_extra == extra
    assert not loaded.training
    x = torch.from_numpy(synthetic(50, seed=9)[0])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    with pytest.raises(TypeError, match=r"extra\['x'\] is a numpy float64"):
        save_model(tmp_path / "bad.pt", model, {"x": np.float64(1.0)})


def test_state_dict_saved_with_other_hparams_is_a_clear_error(tmp_path):
    set_seed(0)
    model = build(hparams(hidden=16))
    path = tmp_path / "m.pt"
    torch.save({"state_dict": model.state_dict(), "hparams": hparams(hidden=12), "extra": {}}, path)
    with pytest.raises(ValueError, match=r"lstm1\.weight_ih_l0' has shape \(64, 2\) in the file but \(48, 2\)") as err:
        load_model(path, build)
    assert "'hidden': 12" in str(err.value)  # the file's hparams are named
    # A builder that ignores the file's hparams: a key the file lacks.
    save_model(path, model, {})
    with pytest.raises(ValueError, match="missing from the file"):
        load_model(path, lambda hp: torch.nn.Sequential(torch.nn.Linear(2, 2)))


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def test_learns_a_recoverable_pattern_well_above_chance(trained, data):
    model, result = trained
    (_, _), (Xva, yva) = data
    report = classification_report(yva, predict_proba(model, Xva).argmax(axis=1), ["down", "flat", "up"])
    assert report["macro_f1"] > 0.8, result.history
    assert report["macro_f1"] == pytest.approx(result.best["val_macro_f1"])
    assert set(result.history[0]) == {"epoch", "train_loss", "val_loss", "val_macro_f1", "seconds"}


def test_early_stopping_restores_the_best_epoch_not_the_last(data, caplog):
    # No signal in the labels: val macro-F1 wanders, so training stops early.
    (Xtr, _), (Xva, _) = data
    noise = synthetic(len(Xtr), seed=1, random_labels=True)[1], synthetic(len(Xva), seed=2, random_labels=True)[1]
    set_seed(3)
    model = build(hparams())
    patience = 2
    with caplog.at_level(logging.INFO, logger="lstm-test"):
        result = fit(model, ((Xtr, noise[0]), (Xva, noise[1])), epochs=20, patience=patience,
                     log=logging.getLogger("lstm-test"))
    assert result.stopped_early
    assert result.best_epoch == len(result.history) - 1 - patience
    assert len([r for r in caplog.records if "val_macro_f1" in r.getMessage()]) == len(result.history)
    restored = macro_f1(noise[1], predict_proba(model, Xva).argmax(axis=1), 3)
    assert restored == result.history[result.best_epoch]["val_macro_f1"]
    later = [h["val_macro_f1"] for h in result.history[result.best_epoch + 1 :]]
    assert all(f <= restored for f in later)


def test_seeded_training_is_reproducible(data):
    (Xtr, ytr), (Xva, yva) = data
    small = ((Xtr[:400], ytr[:400]), (Xva[:100], yva[:100]))
    states = []
    for _ in range(2):
        set_seed(11)
        model = build(hparams())
        fit(model, small, epochs=2, seed=11)
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_class_weights_inverse_frequency_and_absent_class():
    w = class_weights(np.array([0, 0, 0, 1, 2, 2]), 3)
    # n / (K_present * count): 6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2); mean weight per sample 1.
    np.testing.assert_allclose(w.numpy(), [2 / 3, 2.0, 1.0], rtol=1e-6)
    with pytest.warns(UserWarning, match=r"classes \[2\] have no train samples"):
        w = class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(w.numpy(), [4 / 6, 2.0, 0.0], rtol=1e-6)


# --------------------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------------------


def feature_frame(days: dict[str, list[dt.date]]) -> pd.DataFrame:
    """Feature ``a`` = symbol code * 1e5 + days since START, ``b`` = -a: each row is identifiable."""
    rows = []
    for code, (symbol, dates) in enumerate(days.items()):
        for d in dates:
            a = code * 1e5 + (d - START).days
            rows.append((d, symbol, a, -a))
    frame = pd.DataFrame(rows, columns=["date", "symbol", "a", "b"])
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # order must not matter


def span(first: int, n: int) -> list[dt.date]:
    return [START + dt.timedelta(days=first + k) for k in range(n)]


def decode(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(symbol code, day) of every row of windows X."""
    a = X[..., 0].astype(np.int64)
    return a // 100_000, a % 100_000


def test_make_windows_skips_gaps_never_crosses_symbols_and_aligns_labels():
    gap_day = 50
    days = {
        "AAAUSDT": [d for d in span(0, 100) if d != START + dt.timedelta(days=gap_day)],
        "BBBUSDT": span(20, 40),  # 40 days: 11 windows
        "CCCUSDT": span(0, 29),  # too short for one window
    }
    features = feature_frame(days)
    w = make_windows(features, ["a", "b"], WINDOW)
    assert w.X.shape[1:] == (WINDOW, 2) and w.X.dtype == np.float32
    symbol_code, day = decode(w.X)
    # A's windows: ends 29..49 and 80..99 (none touches day 50); B's: ends 49..59.
    expected_a = list(range(29, 50)) + list(range(80, 100))
    by_symbol = w.keys.assign(day=[(d - START).days for d in w.keys["date"]]).groupby("symbol")["day"].apply(list)
    assert sorted(by_symbol["AAAUSDT"]) == expected_a
    assert sorted(by_symbol["BBBUSDT"]) == list(range(49, 60))
    assert "CCCUSDT" not in by_symbol
    assert len(w) == len(expected_a) + 11
    # Each window is one symbol's consecutive days, ending on its key.
    assert (symbol_code == symbol_code[:, :1]).all()
    assert (np.diff(day, axis=1) == 1).all()
    codes = {"AAAUSDT": 0, "BBBUSDT": 1}
    assert (symbol_code[:, -1] == w.keys["symbol"].map(codes).to_numpy()).all()
    assert (day[:, -1] == [(d - START).days for d in w.keys["date"]]).all()
    assert (day[symbol_code[:, 0] == 0] != gap_day).all()
    np.testing.assert_array_equal(w.X[..., 1], -w.X[..., 0])
    # Sorted by (date, symbol).
    assert w.keys.equals(w.keys.sort_values(["date", "symbol"]).reset_index(drop=True))

    # Labels join on the LAST day; windows without a label are dropped; `dates` is inclusive.
    names = ["low", "high"]
    labels = features[["date", "symbol"]].assign(regime=[names[(d - START).days % 2] for d in features["date"]])
    labels = labels.loc[labels["date"] != START + dt.timedelta(days=85)]
    ends = (START + dt.timedelta(days=49), START + dt.timedelta(days=90))
    lw = make_windows(features, ["a", "b"], WINDOW, labels, "regime", ends, classes=names)
    last_day = decode(lw.X)[1][:, -1]
    assert lw.y is not None and (lw.y == last_day % 2).all()
    assert last_day.min() == 49 and last_day.max() == 90 and 85 not in last_day
    with pytest.raises(ValueError, match="not among the classes"):
        make_windows(features, ["a"], WINDOW, labels, "regime", classes=["low"])


def test_window_for_day_matches_make_windows_and_names_missing_days():
    features = feature_frame({"AAAUSDT": [d for d in span(0, 60) if d not in span(40, 2)]})
    day = START + dt.timedelta(days=39)
    one = window_for_day(features, ["a", "b"], "AAAUSDT", day, WINDOW)
    w = make_windows(features, ["a", "b"], WINDOW)
    np.testing.assert_array_equal(one, w.X[(w.keys["date"] == day).to_numpy()][0])
    message = r"AAAUSDT has no features on 2 of the 30 days .*missing 2021-02-10, 2021-02-11"
    with pytest.raises(ValueError, match=message):
        window_for_day(features, ["a", "b"], "AAAUSDT", START + dt.timedelta(days=45), WINDOW)
    with pytest.raises(ValueError, match="no feature rows at all for symbol 'ZZZUSDT'"):
        window_for_day(features, ["a", "b"], "ZZZUSDT", day, WINDOW)


def test_standardizer_train_rows_only_and_constant_column():
    features = feature_frame({"AAAUSDT": span(0, 100)}).assign(c=3.0)
    train = (START, START + dt.timedelta(days=59))
    scaler = Standardizer.fit(features, ["a", "c"], train)
    rows = features.loc[features["date"] <= train[1], "a"]
    np.testing.assert_allclose(scaler.mean, [rows.mean(), 3.0])
    np.testing.assert_allclose(scaler.std, [rows.std(ddof=0), 1.0])
    scaled = scaler.transform(features)
    assert (scaled["c"] == 0.0).all() and scaled["b"].equals(features["b"])
    again = Standardizer.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.transform(features[["a", "c"]].to_numpy()), scaled[["a", "c"]].to_numpy())


def test_window_and_prediction_for_day_d_ignore_rows_after_d():
    rng = np.random.default_rng(0)
    dates = span(0, 120)
    features = pd.DataFrame({"date": dates, "symbol": "AAAUSDT", "a": rng.normal(size=120), "b": rng.normal(size=120)})
    day = dates[80]
    changed = features.copy()
    later = changed["date"] > day
    changed.loc[later, ["a", "b"]] = rng.normal(size=(int(later.sum()), 2)) * 100
    truncated = features.loc[~later]
    train = (dates[0], dates[59])  # the scaler sees train rows only, all before d
    set_seed(0)
    model = build(hparams()).eval()
    outputs = []
    for frame in (features, changed, truncated):
        scaled = Standardizer.fit(frame, ["a", "b"], train).transform(frame)
        x = window_for_day(scaled, ["a", "b"], "AAAUSDT", day, WINDOW)
        w = make_windows(scaled, ["a", "b"], WINDOW, dates=(day, day))
        np.testing.assert_array_equal(w.X[0], x)
        outputs.append((x, predict_proba(model, x[None])))
    for x, p in outputs[1:]:
        np.testing.assert_array_equal(x, outputs[0][0])
        np.testing.assert_array_equal(p, outputs[0][1])


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------


def test_classification_report_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 4, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 4, 500))
    names = ["low", "normal", "high", "spike"]
    report = classification_report(y_true, y_pred, names)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert report["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(4))
    for i, name in enumerate(names):
        c = report["per_class"][name]
        got = (c["precision"], c["recall"], c["f1"], c["support"])
        assert got == pytest.approx((precision[i], recall[i], f1[i], support[i]))
    # Names work as well as indices.
    assert classification_report([names[i] for i in y_true], [names[i] for i in y_pred], names) == report
    assert macro_f1(y_true, y_pred, 4) == pytest.approx(report["macro_f1"])
    fig = plot_confusion(report["confusion_matrix"], names, "random")
    assert len(fig.axes[0].texts) == 16
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_classification_report_zero_support_class():
    names = ["low", "normal", "high", "spike"]
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])  # no spike
    y_pred = np.array([0, 3, 1, 1, 2, 0, 3])  # spike predicted twice, wrongly
    report = classification_report(y_true, y_pred, names)
    spike = report["per_class"]["spike"]
    assert spike["support"] == 0 and spike["recall"] is None and spike["note"].startswith("no support")
    assert spike["precision"] == 0.0 and spike["predicted"] == 2
    assert any(n.startswith("spike: no support") for n in report["notes"])
    assert report["confusion_matrix"][3] == [0, 0, 0, 0]
    present = [0, 1, 2]
    with pytest.warns(UserWarning):  # sklearn: y_pred holds a class absent from y_true
        expected_bal = skm.balanced_accuracy_score(y_true, y_pred)
    assert report["balanced_accuracy"] == pytest.approx(expected_bal)
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=present, average="macro"))
    assert report["accuracy"] == pytest.approx(4 / 7)
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 4), report["confusion_matrix"])
    # A class neither present nor predicted.
    quiet = classification_report(np.array([0, 1]), np.array([0, 1]), names)["per_class"]["high"]
    assert quiet == {"precision": None, "recall": None, "f1": None, "support": 0, "predicted": 0, "note": "no support"}
