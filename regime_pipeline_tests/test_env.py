"""RL allocation environment: API checks, accounting equal to `simulate`, valid weights, reward
design (cash is not optimal in a bull year), causality and reproducibility."""

from __future__ import annotations

import dataclasses
import datetime as dt
import warnings
from functools import cache

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from regime_pipeline.core.allocation.env import AllocationEnv, RewardConfig, apply_no_trade_band
from regime_pipeline.core.allocation.portfolio import Costs, simulate, validate_weights
from regime_pipeline.core.allocation.strategies import Prices, decision_days, equal_weight, settings, wide_prices
from regime_pipeline_tests.conftest import embedded_daily_bars

P = 11  # e.g. 4 + 4 + 3 class probabilities of the three detectors


@cache
def _prices() -> Prices:
    return wide_prices(embedded_daily_bars())


@cache
def _probs() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.dirichlet(np.ones(P), size=_prices().close.shape[0])


def _days(start: str, end: str) -> np.ndarray:
    return decision_days(
        _prices().dates, dt.date.fromisoformat(start), dt.date.fromisoformat(end), settings().rebalance_weekday
    )


def _env(start: str = "2020-01-01", end: str = "2023-12-31", **kwargs) -> AllocationEnv:
    p = _prices()
    last = int(np.flatnonzero(p.dates == dt.date.fromisoformat(end))[0])
    kwargs.setdefault("episode_weeks", 52)
    kwargs.setdefault("random_start", True)
    return AllocationEnv(
        p.open[: last + 1], p.close[: last + 1], _probs()[: last + 1], _days(start, end), settings().costs, **kwargs
    )


def _action_for(weights: np.ndarray) -> np.ndarray:
    """+1 on the coordinates to fill equally, -1 elsewhere (sparsemax -> equal weights there)."""
    return np.where(weights > 0, 1.0, -1.0).astype(np.float32)


def test_gymnasium_and_sb3_env_checkers_pass() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning is a failure
        gym_check_env(_env(), skip_render_check=True)
        sb3_check_env(_env(), warn=True)


def test_fixed_actions_match_simulate_and_costs_are_charged_as_documented() -> None:
    env = _env("2020-01-01", "2021-12-31", episode_weeks=None, random_start=False)
    p, n = _prices(), len(_prices().symbols)
    days = env.decision_days
    k_total = days.size
    obs, info = env.reset(seed=0)
    assert info["start"] == 0
    btc = np.zeros(n + 1)
    btc[0] = 1.0
    cash = np.zeros(n + 1)
    cash[n] = 1.0
    targets, turnovers, costs, equity = [], [], [], {}
    terminated = truncated = False
    for k in range(k_total):
        d = int(days[k])
        wanted = btc if k < k_total // 3 else equal_weight(p.close[: d + 1]) if k < 2 * k_total // 3 else cash
        obs, reward, terminated, truncated, info = env.step(_action_for(wanted))
        np.testing.assert_allclose(info["target"], wanted, atol=1e-12)
        targets.append(info["target"])
        turnovers.append(info["turnover"])
        costs.append(info["cost"])
        week = range(info["first_day"], info["first_day"] + info["equity"].size)
        equity.update(zip(week, info["equity"].tolist()))
        assert not truncated
        assert terminated == (k == k_total - 1)
    t_days = env.ends[-1] + 1
    result = simulate(p.open[:t_days], p.close[:t_days], np.array(targets), days, settings().costs)
    covered = np.arange(days[0] + 1, t_days)
    np.testing.assert_allclose([equity[t] for t in covered], result.equity[covered], rtol=0, atol=1e-10)
    np.testing.assert_allclose(turnovers, result.turnover, atol=1e-12)
    np.testing.assert_allclose(costs, result.costs, atol=1e-12)
    # Cash -> 100% BTC is one buy: turnover 1.0, cost = (10 + 5) bps of the start value 1.0.
    assert turnovers[0] == pytest.approx(1.0)
    assert costs[0] == pytest.approx(Costs(10, 5).rate * 1.0)
    # Re-targeting 100% BTC is free; leaving it for equal weight and then cash is charged.
    assert turnovers[1] == pytest.approx(0.0, abs=1e-12)
    k_ew, k_cash = k_total // 3, 2 * k_total // 3
    v_open = result.equity_open[days[k_ew] + 1] + costs[k_ew]  # equity_open is after the cost
    assert turnovers[k_ew] > 0.5
    assert costs[k_ew] == pytest.approx(settings().costs.rate * turnovers[k_ew] * v_open, rel=1e-12)
    assert turnovers[k_cash] == pytest.approx(1.0)


def test_weights_are_valid_and_extremes_are_reachable() -> None:
    env = _env("2018-01-01", "2021-12-31", episode_weeks=40)
    p, n = _prices(), len(_prices().symbols)
    rng = np.random.default_rng(1)
    zeros = 0
    for episode in range(5):
        env.reset(seed=episode)
        env.action_space.seed(episode)
        done = False
        while not done:
            k = env._k
            action = env.action_space.sample()
            if rng.random() < 0.2:
                action = action * 5  # out of the box: clipped
            _, _, terminated, truncated, info = env.step(action)
            w = info["target"]
            validate_weights(w, p.close[env.decision_days[k]])
            validate_weights(w, p.open[env.decision_days[k] + 1])
            zeros += int((w == 0).sum())
            done = terminated or truncated
    assert zeros > 0
    # Deliberate extremes through the public mapping: one coordinate at +1, the rest at -1.
    listed = np.ones(n, dtype=bool)
    for i in range(n + 1):
        a = -np.ones(n + 1)
        a[i] = 1.0
        w = env.action_to_weights(a, listed)
        assert w[i] >= 0.99 and w[i] == 1.0
        assert (np.delete(w, i) == 0.0).all()
    # An unlisted asset gets exactly 0 even with the largest action; the rest is renormalised.
    listed[3] = False
    w = env.action_to_weights(np.ones(n + 1), listed)
    assert w[3] == 0.0 and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w[np.append(listed, True)], 1.0 / n)


def _total_reward(env: AllocationEnv, policy) -> float:
    env.reset(seed=0, options={"start": 0})
    total, done = 0.0, False
    while not done:
        d = int(env.decision_days[env._k])
        _, reward, terminated, truncated, _ = env.step(policy(d))
        total += reward
        done = terminated or truncated
    return total


def test_doing_nothing_is_not_optimal_in_a_bull_year() -> None:
    env = _env("2024-01-01", "2024-12-31", episode_weeks=None, random_start=False, reward=RewardConfig.from_config())
    n, close = env.n_assets, _prices().close
    cash = np.append(-np.ones(n), 1.0).astype(np.float32)
    cash_reward = _total_reward(env, lambda d: cash)
    ew_reward = _total_reward(env, lambda d: _action_for(equal_weight(close[: d + 1])))
    print(f"2024 total reward: all cash {cash_reward:.4f}, equal weight {ew_reward:.4f}")
    assert cash_reward < 0.0  # cash pays the shortfall against the rally
    assert cash_reward < ew_reward


def test_observation_is_causal() -> None:
    p = _prices()
    env = _env("2021-01-01", "2022-12-31", episode_weeks=None, random_start=False)
    k_check = 30
    cut = int(env.decision_days[k_check])
    rng = np.random.default_rng(2)
    open_, close, probs = p.open.copy(), p.close.copy(), _probs().copy()
    t_days = env.ends[-1] + 1
    shock = rng.uniform(0.5, 2.0, size=close[cut + 1 :].shape)
    open_[cut + 1 :] *= shock
    close[cut + 1 :] *= shock[::-1]
    probs[cut + 1 :] = rng.dirichlet(np.ones(P), size=probs.shape[0] - cut - 1)
    altered = AllocationEnv(
        open_[:t_days], close[:t_days], probs[:t_days], env.decision_days, settings().costs,
        episode_weeks=None, random_start=False,
    )
    actions = np.random.default_rng(3).uniform(-1, 1, size=(k_check, env.n_assets + 1))
    obs_a, _ = env.reset(seed=0)
    obs_b, _ = altered.reset(seed=0)
    np.testing.assert_array_equal(obs_a, obs_b)
    for a in actions:
        obs_a, *_ = env.step(a)
        obs_b, *_ = altered.step(a)
        np.testing.assert_array_equal(obs_a, obs_b)
    assert env._k == k_check  # the last compared observation is at the close of `cut`
    assert not np.array_equal(env.step(actions[0])[0], altered.step(actions[0])[0])


def test_same_seed_same_episode() -> None:
    def rollout(seed: int) -> tuple[int, np.ndarray]:
        env = _env()
        obs, info = env.reset(seed=seed)
        env.action_space.seed(seed)
        trace = [obs]
        for _ in range(10):
            trace.append(env.step(env.action_space.sample())[0])
        return info["start"], np.stack(trace)

    start_a, trace_a = rollout(7)
    start_b, trace_b = rollout(7)
    assert start_a == start_b
    np.testing.assert_array_equal(trace_a, trace_b)
    starts = {rollout(s)[0] for s in range(5)}
    assert len(starts) > 1  # random_start does draw different starts


def test_the_reward_charges_exactly_the_accountings_cost() -> None:
    """Flat prices, no downside or shortfall term: a trade's reward is log(1 - cost), the cost
    `simulate` charges for the same trade, and nothing more."""
    t_days, n = 30, 3
    flat = np.full((t_days, n), 100.0)
    days = np.array([0, 7, 14, 21])
    assert RewardConfig.from_config().turnover == 0.0
    reward = dataclasses.replace(RewardConfig.from_config(), downside=0.0, shortfall=0.0)
    env = AllocationEnv(flat, flat, np.zeros((t_days, 1)), days, settings().costs, episode_weeks=None,
                        random_start=False, reward=reward)
    env.reset()
    targets = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.2, 0.7, 0.1], [0.0, 0.2, 0.7, 0.1], [0.0, 0.0, 0.0, 1.0]])
    rewards, costs = [], []
    for w in targets:
        _, r, *_, info = env.step_weights(w)
        rewards.append(r)
        costs.append(info["cost"])
    sim = simulate(flat, flat, targets, days, settings().costs)
    np.testing.assert_allclose(costs, sim.costs, rtol=1e-12, atol=1e-18)
    growth = np.log(sim.equity[np.append(days[1:], t_days - 1)] / sim.equity[days])
    np.testing.assert_allclose(rewards, growth, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rewards[0], np.log(1 - settings().costs.rate * 1.0), rtol=1e-12)
    assert abs(rewards[2]) < 1e-15  # no trade, no cost


def test_no_trade_band_keeps_small_moves_and_trades_large_ones_in_full() -> None:
    current = np.array([0.30, 0.20, 0.10, 0.00, 0.40])
    target = np.array([0.31, 0.05, 0.14, 0.00, 0.50])
    out = apply_no_trade_band(target, current, 0.02)
    np.testing.assert_allclose(out, [0.30, 0.05, 0.14, 0.00, 0.51])  # asset 0 within the band, cash the rest
    # Risk-off: every asset beyond the band is sold in full.
    np.testing.assert_allclose(apply_no_trade_band(np.array([0, 0, 0, 0, 1.0]), current, 0.05), [0, 0, 0, 0, 1])
    # The freed cash is kept in an asset within the band: the buy is scaled down, cash is 0.
    out = apply_no_trade_band(np.array([0.29, 0.71, 0.0]), np.array([0.30, 0.0, 0.70]), 0.02)
    np.testing.assert_allclose(out, [0.30, 0.70, 0.0])
    assert apply_no_trade_band(target, current, 0.0) is target
    # A fully invested book whose drifted weights sum to a hair above 1 (float dust), no buy.
    dusty = np.array([0.1, 0.2, 0.3, 0.4 + 3e-16, 0.0])
    out = apply_no_trade_band(np.array([0.1, 0.2, 0.3, 0.3, 0.1]), dusty, 0.2)
    assert out.sum() == pytest.approx(1.0, abs=1e-15) and (out >= 0).all()


def test_the_book_moves_the_rebalance_rate_of_the_way_to_the_banded_target() -> None:
    env = _env("2021-01-01", "2021-12-31", episode_weeks=None, random_start=False, no_trade_band=0.05, rebalance_rate=0.25)
    env.reset()
    n = env.n_assets
    ew = np.append(np.full(n, 1.0 / n), 0.0)
    _, _, _, _, info = env.step_weights(env.trade_weights(ew))  # from cash: a quarter of the way
    np.testing.assert_allclose(info["target"], np.append(np.full(n, 0.25 / n), 0.75), atol=1e-15)
    # Next: assets within 5 points of equal weight keep their weight; the move is a quarter of the rest.
    current = env.current_weights()
    target = ew.copy()
    target[0], target[1], target[n] = 0.5, 0.0, 0.0
    target[2:n] = (1 - 0.5) / (n - 2)
    expected = current + 0.25 * (apply_no_trade_band(target, current, 0.05) - current)
    np.testing.assert_allclose(env.trade_weights(target), expected, atol=1e-15)
    assert env.trade_weights(target)[1] == current[1]  # 1/13 * 0.25 away from 0: inside the band
    with pytest.raises(ValueError, match="rebalance_rate"):
        _env(rebalance_rate=0.0)


def test_the_band_and_the_rate_lower_turnover_and_stay_inside_the_simplex() -> None:
    p = _prices()
    rng = np.random.default_rng(4)
    turnover = {}
    for band, rate in ((0.0, 1.0), (0.03, 1.0), (0.0, 0.33)):
        env = _env("2021-01-01", "2022-12-31", episode_weeks=None, random_start=False, no_trade_band=band,
                   rebalance_rate=rate)
        env.reset()
        base = np.concatenate([np.ones(env.n_assets), [-1.0]])
        total, done, k = 0.0, False, 0
        while not done:
            jitter = rng.normal(0, 0.02, size=env.n_assets + 1)  # a noisy equal-weight policy
            _, _, terminated, truncated, info = env.step(base + jitter)
            validate_weights(info["target"], p.open[env.decision_days[k] + 1])
            total += info["turnover"]
            done, k = terminated or truncated, k + 1
        turnover[band, rate] = total
    assert turnover[0.03, 1.0] < 0.5 * turnover[0.0, 1.0]
    assert turnover[0.0, 0.33] < 0.5 * turnover[0.0, 1.0]
