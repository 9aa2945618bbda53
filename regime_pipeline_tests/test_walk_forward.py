"""Walk-forward core: windows, the jump labeler, the ladder's metrics, and the perturbation test."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from regime_pipeline.core.features import daily as F
from regime_pipeline.core.regimes import ladder
from regime_pipeline.core.regimes import walk_forward as wf
from regime_pipeline.core.regimes.jump import JumpLabeler, mean_duration
from regime_pipeline_tests.conftest import embedded_daily_bars

DAY = dt.timedelta(days=1)


def test_origin_windows_purge_the_lookback_and_horizon_and_end_before_the_year():
    for origin in wf.settings()["origins"]:
        w = wf.origin_windows(origin)
        assert w.purge_days == 30 + 30 and w.horizon_days == 30
        assert w.fit_start == dt.date(2018, 1, 1)
        assert w.fit_end == dt.date(origin - 1, 1, 1) - DAY - dt.timedelta(days=w.purge_days)
        assert w.val_start == dt.date(origin - 1, 1, 1)
        # The val window's label horizon ends on the last day of Y - 1: nothing of Y is seen.
        assert w.seen_until == dt.date(origin - 1, 12, 31) < w.predict_start == dt.date(origin, 1, 1)
        assert wf.OriginWindows.from_record(w.record()) == w


def test_jump_labeler_orders_states_switches_rarely_and_is_causal_online():
    rng = np.random.default_rng(0)
    # Two regimes of 200 days each, means -1 / +1, noisy: a jump model should find 2 long runs.
    truth = np.repeat([1, 0, 1, 0], 200)
    X = (np.where(truth == 1, 1.0, -1.0) + rng.normal(0, 0.8, truth.size))[:, None]
    model = JumpLabeler(["low", "high"], jump_penalty=20.0, n_init=3, random_state=0).fit(X, [truth.size])
    labels = model.predict(X, [truth.size])
    assert (labels == truth).mean() > 0.95
    assert mean_duration(labels, [truth.size]) > 100
    online = model.predict_online(X, [truth.size])
    # Row t of the online path depends on rows <= t only.
    cut = 500
    np.testing.assert_array_equal(model.predict_online(X[:cut], [cut]), online[:cut])
    again = JumpLabeler.from_dict(model.to_dict())
    np.testing.assert_array_equal(again.predict(X, [truth.size]), labels)


def test_block_bootstrap_interval_covers_a_known_lift_and_is_seeded():
    rng = np.random.default_rng(1)
    days = np.repeat(np.arange(300), 5)
    y = rng.integers(0, 3, days.size)
    better = np.where(rng.random(days.size) < 0.8, y, (y + 1) % 3)  # ~80% right
    worse = np.where(rng.random(days.size) < 0.6, y, (y + 1) % 3)  # ~60% right
    low, high = ladder.block_bootstrap_lift(days, y, better, worse, 3, block_days=30, resamples=500, seed=7, level=0.9)
    assert 0.1 < low < 0.2 < high < 0.3
    assert (low, high) == ladder.block_bootstrap_lift(days, y, better, worse, 3, 30, 500, 7, 0.9)
    cm = np.array([[3, 1], [0, 0]])
    assert ladder.balanced_accuracy_from_counts(cm) == pytest.approx(0.75)  # an absent class is left out
    assert ladder.log_loss(np.array([0, 1]), np.array([[0.5, 0.5], [0.0, 1.0]])) == pytest.approx(np.log(2) / 2)


def _shock(bars: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    """Every bar after `day` moved by one path shared by all assets (so they move together):
    daily log moves of -5% +/- 15%, alternating, i.e. violent and falling."""
    out = bars.copy()
    later = out["date"] > day
    dates = np.array(sorted(set(out.loc[later, "date"])))
    moves = -0.05 + 0.15 * np.where(np.arange(dates.size) % 2 == 0, 1.0, -1.0)
    walk = pd.Series(np.exp(np.cumsum(moves)), index=dates)
    factor = out.loc[later, "date"].map(walk).to_numpy()
    for column in ("open", "high", "low", "close"):
        out.loc[later, column] = out.loc[later, column].to_numpy() * factor
    return out


def _walk(bars: pd.DataFrame, models_dir) -> dict:
    first, end = bars["date"].min(), dt.date(2026, 1, 1)
    trend, cross = F.trend_features(bars, first, end), F.cross_features(bars, first, end)
    labelers, _ = wf.fit_origins(bars, trend, cross, [2020], models_dir, "fast", workers=1)
    data = wf.origin_data(labelers[2020], bars, trend, cross)
    return {"labelers": labelers[2020], "data": data, "probs": wf.probabilities(data, models_dir)}


def test_shocking_every_bar_after_d_changes_nothing_up_to_d_but_the_forward_target_of_d(tmp_path):
    bars = embedded_daily_bars()
    day = dt.date(2020, 6, 30)
    base = _walk(bars, tmp_path / "base")
    shocked = _walk(_shock(bars, day), tmp_path / "shocked")

    def upto(frame: pd.DataFrame, last: dt.date = day) -> pd.DataFrame:
        return frame.loc[frame["date"] <= last].reset_index(drop=True)

    # Features (vol with the origin's GARCH), every fitted input of the targets, probabilities.
    for name in ("vol", "trend", "cross"):
        pd.testing.assert_frame_equal(upto(getattr(base["data"], name)), upto(getattr(shocked["data"], name)))
    assert base["labelers"].to_dict() == shocked["labelers"].to_dict()
    assert len(upto(base["probs"])) > 13 * 150
    pd.testing.assert_frame_equal(upto(base["probs"]), upto(shocked["probs"]))
    # Forward targets whose horizon ends by d are unchanged ...
    horizon = wf.horizons()["forward"]
    for kind in wf.KINDS:
        column = f"{kind}_regime"
        a = upto(base["data"].targets["forward"][["date", "symbol", column]], day - dt.timedelta(days=horizon[kind]))
        b = upto(shocked["data"].targets["forward"][["date", "symbol", column]], day - dt.timedelta(days=horizon[kind]))
        pd.testing.assert_frame_equal(a, b)
    # ... and the forward target of d itself changes, for every kind.
    before = base["data"].targets["forward"].set_index(["date", "symbol"]).loc[day]
    after = shocked["data"].targets["forward"].set_index(["date", "symbol"]).loc[day]
    for kind in wf.KINDS:
        assert (before[f"{kind}_regime"] != after[f"{kind}_regime"]).any(), kind
    assert (after["vol_regime"] == "spike").all() and (after["trend_regime"] == "strong_bear").all()
    assert (after["cross_regime"] == "convergent").all()


def test_persistence_uses_only_what_is_known_at_d():
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(10)]
    keys = pd.DataFrame({"date": days, "symbol": "BTCUSDT"})
    y = np.arange(10) % 4
    filt = np.eye(4)[(np.arange(10) + 1) % 4]  # the filter's state on each day
    inputs = ladder.KindInputs("vol", keys, np.zeros((10, 1)), filt, np.full(10, -1))
    names = ladder.regime_names("vol")
    # A forward target of horizon 3 is fully observed 3 days later: day i persists day i - 3.
    forward = ladder.persisted_codes("vol", "forward", 3, keys, y, inputs, names)
    np.testing.assert_array_equal(forward, np.r_[[-1, -1, -1], y[:-3]])
    # A Viterbi label is never known at d: the causal filter's state of d - 1 is carried.
    same_day = ladder.persisted_codes("vol", "same_day", 0, keys, y, inputs, names)
    np.testing.assert_array_equal(same_day, np.r_[-1, filt.argmax(axis=1)[:-1]])
    # The same-day cross label is a threshold on day d's own feature: known at d.
    cross_keys = keys[["date"]]
    cross_inputs = ladder.KindInputs("cross", cross_keys, np.zeros((10, 1)), filt[:, :3], np.full(10, -1))
    cross = ladder.persisted_codes("cross", "same_day", 0, cross_keys, y % 3, cross_inputs, ladder.regime_names("cross"))
    np.testing.assert_array_equal(cross, y % 3)


def test_a_workers_warnings_and_library_log_warnings_reach_the_callback_once_each():
    from regime_pipeline_tests.workers import warn_and_log

    said: list[str] = []
    pool = wf.worker_pool(2)
    try:
        results = wf.run_tasks(warn_and_log, [1, 2, 3], pool, warn=said.append)
    finally:
        pool.shutdown()
    assert results == [1, 4, 9]
    assert sorted(said) == sorted(["UserWarning: task 1 warns", "UserWarning: task 2 warns", "UserWarning: task 3 warns",
                                   "some.library: shared library message"])
