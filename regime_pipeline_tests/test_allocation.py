"""Allocation inputs, the deployable actor and the PPO training loop: layout of the arrays, the
actor equal to SB3's own prediction, backtests on the benchmarks' accounting, early stopping that
keeps the best evaluation, and seeded reproducibility."""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import cache

import numpy as np
import pandas as pd
import pytest
from stable_baselines3.common.vec_env import VecNormalize

from regime_pipeline.core.allocation import policy as allocation

from regime_pipeline.core.allocation import performance

from regime_pipeline.core.allocation import ppo
from regime_pipeline.core.allocation.policy import AllocationPolicy
from regime_pipeline.core.allocation.strategies import equal_weight, run_strategy
from regime_pipeline_tests.conftest import embedded_daily_bars, shocked_after, synthetic_probabilities

D = dt.date
TRAIN = (D(2019, 1, 1), D(2020, 12, 31))
VAL = (D(2021, 1, 1), D(2021, 6, 30))


@cache
def _probabilities() -> pd.DataFrame:
    return synthetic_probabilities()


@cache
def _data() -> allocation.AllocationData:
    return allocation.allocation_data(embedded_daily_bars(), _probabilities())


def _val_sortino(policy: AllocationPolicy) -> float:
    return performance.sortino(allocation.backtest_policy(policy, _data(), *VAL).period_returns)


def _train_env():
    fast = ppo.settings("fast")
    return allocation.make_env(_data(), *TRAIN, episode_weeks=26, random_start=True,
                               no_trade_band=fast.no_trade_band, rebalance_rate=fast.rebalance_rate)


def test_probabilities_are_laid_out_per_asset_then_market() -> None:
    data = _data()
    n = len(data.prices.symbols)
    assert data.probs.shape == (data.prices.dates.size, n * 4 + 3)
    assert data.prob_columns[:4] == ("BTCUSDT:vol_0", "BTCUSDT:vol_1", "BTCUSDT:trend_0", "BTCUSDT:trend_1")
    assert data.prob_columns[-3:] == ("cross_0", "cross_1", "cross_2")
    frame = _probabilities()
    row = frame.loc[(frame["symbol"] == "ETHUSDT") & (frame["date"] == D(2021, 3, 4))].iloc[0]
    t, j = data.index(D(2021, 3, 4)), data.prices.symbols.index("ETHUSDT")
    np.testing.assert_array_equal(data.probs[t, 4 * j : 4 * j + 4], row[["vol_0", "vol_1", "trend_0", "trend_1"]])
    np.testing.assert_array_equal(data.probs[t, -3:], row[["cross_0", "cross_1", "cross_2"]])
    # Before its listing an asset has no probabilities (NaN here, zeros in the observation).
    avax = data.prices.symbols.index("AVAXUSDT")
    assert np.isnan(data.probs[data.index(D(2019, 6, 1)), 4 * avax])


def test_an_env_sees_nothing_after_its_window() -> None:
    env = allocation.make_env(_data(), D(2021, 1, 1), D(2021, 3, 31))
    first = _data().index(D(2020, 12, 31))
    assert env.decision_days[0] == 0  # the close before the start
    assert env.ends[-1] == _data().index(D(2021, 3, 31)) - first  # the data stop at the end
    assert env.episode_weeks is None


def _equal_weight_policy(dim: int, n: int) -> AllocationPolicy:
    """A constant action: +1 on every asset, -1 on cash -> equal weights over the listed assets."""
    bias = np.append(np.ones(n), -1.0)
    return AllocationPolicy(
        layers=((np.zeros((n + 1, dim)), bias),), obs_mean=np.zeros(dim), obs_var=np.ones(dim),
        clip_obs=10.0, epsilon=1e-8,
    )


def test_a_policy_backtest_uses_the_benchmarks_accounting() -> None:
    data = _data()
    start, end = D(2021, 1, 1), D(2021, 12, 31)
    dim = allocation.make_env(data, start, end).observation_space.shape[0]
    policy = _equal_weight_policy(dim, len(data.prices.symbols))
    mine = allocation.backtest_policy(policy, data, start, end)
    benchmark = run_strategy(equal_weight, data.prices, start, end)
    np.testing.assert_allclose(mine.equity, benchmark.equity, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mine.turnover, benchmark.turnover, atol=1e-12)
    assert mine.dates[0] == D(2020, 12, 31) and mine.dates[-1] == end


def test_actor_round_trips_through_json() -> None:
    rng = np.random.default_rng(1)
    policy = AllocationPolicy(
        layers=((rng.normal(size=(4, 3)), rng.normal(size=4)), (rng.normal(size=(2, 4)), rng.normal(size=2))),
        obs_mean=rng.normal(size=3), obs_var=rng.random(3), clip_obs=5.0, epsilon=1e-8, action_scale=2.0,
    )
    again = AllocationPolicy.from_dict(policy.to_dict())
    obs = rng.normal(size=3)
    np.testing.assert_array_equal(again.action(obs), policy.action(obs))
    assert again.action_scale == 2.0


@cache
def _trained(seed: int):
    return ppo.train_policy(_train_env, _val_sortino, ppo.settings("fast"), seed)


def test_the_numpy_actor_equals_sb3_prediction() -> None:
    result = _trained(0)
    model, normalizer = result.model, result.model.get_env()
    assert isinstance(normalizer, VecNormalize)
    frozen = ppo.actor(model, normalizer, 1.0)
    env = _train_env()
    obs, _ = env.reset(seed=3)
    for _ in range(10):
        expected, _ = model.predict(normalizer.normalize_obs(obs[None, :]), deterministic=True)
        np.testing.assert_allclose(frozen.action(obs), expected[0], atol=1e-5)
        obs, *_ = env.step(env.action_space.sample())


def test_training_is_reproducible_with_a_seed() -> None:
    a, b = _trained(0), ppo.train_policy(_train_env, _val_sortino, ppo.settings("fast"), 0)
    assert [e.score for e in a.history] == [e.score for e in b.history]
    for (wa, ba), (wb, bb) in zip(a.policy.layers, b.policy.layers):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
    other = _trained(1)
    assert not np.array_equal(other.policy.layers[0][0], a.policy.layers[0][0])


def test_early_stopping_keeps_the_best_evaluation_not_the_last() -> None:
    seen: list[AllocationPolicy] = []
    scores = iter([0.5, 2.0, 1.0, 1.5, 1.8])  # best at the 2nd evaluation, then 2 without progress

    def scorer(policy: AllocationPolicy) -> float:
        seen.append(policy)
        return next(scores)

    config = dataclasses.replace(ppo.settings("fast"), total_timesteps=8 * ppo.settings("fast").eval_every)
    result = ppo.train_policy(_train_env, scorer, config, 0)
    assert [e.score for e in result.history] == [0.5, 2.0, 1.0, 1.5]
    assert result.stopped_early and result.steps_run == 4 * config.eval_every
    assert result.best.step == 2 * config.eval_every and result.best.score == 2.0
    assert result.policy is seen[1]
    # The returned SB3 model carries the best evaluation's weights, not the last ones.
    restored = ppo.actor(result.model, result.model.get_env(), config.action_scale)
    np.testing.assert_allclose(restored.layers[0][0], seen[1].layers[0][0])
    assert not np.allclose(seen[1].layers[0][0], seen[-1].layers[0][0])


def test_val_score_of_the_kept_policy_is_the_recorded_best() -> None:
    result = _trained(0)
    assert _val_sortino(result.policy) == pytest.approx(result.best.score, abs=1e-12)
    assert result.best.score == max(e.score for e in result.history)


def test_policy_decisions_do_not_see_the_future() -> None:
    """Shocking every price and probability after day `cut` leaves every target decided at or
    before `cut`'s close unchanged (and changes later ones)."""
    data = _data()
    start, end, cut = D(2021, 1, 1), D(2021, 12, 31), D(2021, 7, 4)  # a Sunday: a decision day
    rng = np.random.default_rng(5)
    dim = allocation.make_env(data, start, end).observation_space.shape[0]
    sizes = [dim, 16, len(data.prices.symbols) + 1]
    policy = AllocationPolicy(
        layers=tuple((rng.normal(0, 0.5, size=(o, i)), rng.normal(0, 0.1, size=o)) for i, o in zip(sizes[:-1], sizes[1:])),
        obs_mean=np.zeros(dim), obs_var=np.ones(dim), clip_obs=10.0, epsilon=1e-8,
    )
    t = data.index(cut)
    altered = shocked_after(data, t, rng)
    a = allocation.backtest_policy(policy, data, start, end)
    b = allocation.backtest_policy(policy, altered, start, end)
    decided = a.rebalance_days - 1  # decision rows (row 0 = the day before start)
    known = a.dates[decided] <= cut
    assert known.sum() > 20
    np.testing.assert_array_equal(a.targets[known], b.targets[known])
    assert not np.allclose(a.targets[~known], b.targets[~known])


def test_no_checkpoint_is_kept_before_the_minimum_updates_and_the_smoothed_curve_decides() -> None:
    """A lucky first evaluation (before the minimum number of updates) is never kept, and a lone
    spike loses to a plateau once the curve is smoothed over 3 evaluations."""
    fast = ppo.settings("fast")
    every = fast.eval_every
    config = dataclasses.replace(fast, total_timesteps=12 * every, min_updates=2 * every // fast.steps_per_update,
                                 smoothing=3, patience=3)
    scores = iter([9.0, 1.0, 4.0, 1.0, 1.0, 2.0, 2.2, 2.1, 0.0, 0.0, 0.0, 0.0])

    def scorer(policy: AllocationPolicy) -> float:
        return next(scores)

    result = ppo.train_policy(_train_env, scorer, config, 0)
    history = result.history
    assert not history[0].eligible and all(e.eligible for e in history[1:])
    np.testing.assert_allclose([e.smoothed for e in history[:4]], [9.0, 5.0, 14 / 3, 2.0])
    # Eligible smoothed scores: 5.0 (step 2), 4.67, 2.0, 2.0, 1.33, 1.73, 2.1, ... -> best at step 2,
    # which the 9.0 before the minimum props up; then 3 evaluations without a gain stop training.
    assert result.best.step == 2 * every
    assert result.stopped_early and len(history) == 5
    # The training reward is recorded per rollout (before VecNormalize's scaling).
    assert len(result.train_curve) == result.steps_run // fast.steps_per_update
    assert all(np.isfinite(r) for _, r in result.train_curve)


def test_the_ensemble_trades_the_mean_of_its_seeds_target_weights() -> None:
    a, b = _trained(0).policy, _trained(1).policy
    ensemble = ppo.ensemble([_trained(0), _trained(1)])
    banded = dataclasses.replace(a, no_trade_band=a.no_trade_band + 0.03)
    with pytest.raises(ValueError, match="differs"):
        allocation.EnsemblePolicy((banded, b))
    env = allocation.make_env(_data(), D(2021, 1, 1), D(2021, 12, 31))
    obs, _ = env.reset()
    for _ in range(20):
        targets = ensemble.member_targets(obs, env)
        np.testing.assert_allclose(targets[0], env.target_weights(a.action(obs)), atol=1e-12)
        np.testing.assert_allclose(targets[1], env.target_weights(b.action(obs)), atol=1e-12)
        weights = ensemble.target(obs, env)
        np.testing.assert_allclose(weights, (targets[0] + targets[1]) / 2, atol=1e-12)
        obs, *_ = env.step_weights(weights)
    # Stored and loaded as one policy; its backtest is the mean-of-targets run.
    again = allocation.load_policy(ensemble.to_dict())
    assert isinstance(again, allocation.EnsemblePolicy) and len(again.members) == 2
    run = allocation.backtest_policy(again, _data(), D(2021, 1, 1), D(2021, 12, 31))
    np.testing.assert_allclose(run.equity, allocation.backtest_policy(ensemble, _data(), D(2021, 1, 1), D(2021, 12, 31)).equity)


def test_a_training_job_sees_no_day_of_its_selection_window_or_after() -> None:
    fast = ppo.settings("fast")
    jobs = ppo.seed_jobs(_data(), TRAIN, VAL, fast, fast.seeds)
    assert [j.seed for j in jobs] == list(ppo.settings("fast").seeds)
    for job in jobs:
        assert job.train_data.prices.dates[-1] == TRAIN[1] < VAL[0]
        assert job.train_data.probs.shape[0] == job.train_data.prices.dates.size
        assert job.val_data.prices.dates[-1] == VAL[1]
        env = job.make_env()
        assert env.ends[-1] == env._marks.close_value.shape[0] - 1  # the env ends on the last training day
        assert env.no_trade_band == job.config.no_trade_band
    with pytest.raises(ValueError, match="must follow"):
        ppo.seed_jobs(_data(), TRAIN, (D(2020, 6, 1), D(2021, 6, 30)), fast, fast.seeds)


def test_seeds_trained_in_worker_processes_equal_seeds_trained_here() -> None:
    short = dataclasses.replace(ppo.settings("fast"), total_timesteps=ppo.settings("fast").eval_every)
    jobs = ppo.seed_jobs(_data(), TRAIN, VAL, short, short.seeds)
    here = ppo.train_seeds(jobs, workers=1)
    pooled = ppo.train_seeds(jobs, workers=2)
    for x, y in zip(here, pooled):
        assert x.seed == y.seed and [e.score for e in x.history] == [e.score for e in y.history]
        for (wx, bx), (wy, by) in zip(x.policy.layers, y.policy.layers):
            np.testing.assert_array_equal(wx, wy)
            np.testing.assert_array_equal(bx, by)
        assert y.sb3_zip[:2] == b"PK"  # the SB3 model, saved
    assert [r.seed for r in pooled] == [0, 1]


def test_an_ensembles_weekly_decision_is_unchanged_when_everything_after_its_sunday_is_shocked() -> None:
    """The deployed form (seed ensemble, no-trade band, risk limits on its model book): the
    target for a week depends on nothing after the Sunday close before it."""
    from regime_pipeline.core.trading.risk import RiskLimits

    ensemble = ppo.ensemble([_trained(0), _trained(1)])
    data, limits = _data(), RiskLimits.from_config()
    first, week = D(2021, 1, 4), D(2021, 6, 7)
    sunday = week - dt.timedelta(days=1)
    t = data.index(sunday)
    rng = np.random.default_rng(8)
    altered = shocked_after(data, t, rng)
    a = allocation.decide_week(ensemble, data, first, week, limits)
    b = allocation.decide_week(ensemble, altered, first, week, limits)
    assert a.data_through == b.data_through == sunday
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(a.observation, b.observation)
    # The next week's decision does see the shocked days.
    later = week + dt.timedelta(days=7)
    assert not np.array_equal(allocation.decide_week(ensemble, data, first, later, limits).observation,
                              allocation.decide_week(ensemble, altered, first, later, limits).observation)
