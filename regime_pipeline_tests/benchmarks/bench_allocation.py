"""Allocation: environment steps per second, PPO training steps per second, and one backtest of
every strategy (the PPO ensemble, the four benchmarks, the four regime rules) over the full
history.

On the embedded daily bars with synthetic regime probabilities of the real shape (4 vol + 4
trend classes per asset, 3 cross classes: 107 columns; speed does not depend on their values).

* env: 20,000 steps of 52-week episodes from random starts over 2018..2025 with pre-drawn
  random actions and the default profile's no-trade band and rebalance rate (best of 3). Baseline in the same
  process: `portfolio.simulate` on the same number of rebalances (the accounting the env
  reproduces step by step).
* PPO: `learn()` for 16,384 steps with the default profile's settings, no evaluation. Baseline:
  the same vectorised, normalised environments stepped with random actions.
* backtest: the PPO ensemble (one default-architecture actor per seed of the default profile),
  the four benchmarks and the four regime rules, 2018-01-01..2025-12-31 (best of 5); beside
  it, one actor alone (the ensemble's cost ratio).

Times are wall clock; on a shared machine the CPU time of this process is printed beside them
(what the same code would take with a core to itself, to within cache effects).

Goals: env >= 20,000 steps/s; PPO >= 3,000 steps/s; backtest <= 100 ms.
Run: ``python -m regime_pipeline_tests.benchmarks allocation``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from regime_pipeline.configs import splits
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation import ppo, rules
from regime_pipeline.core.allocation.portfolio import simulate
from regime_pipeline.core.allocation.strategies import benchmark_strategies, settings
from regime_pipeline_tests.benchmarks import peak_rss_mib, print_table
from regime_pipeline_tests.conftest import embedded_daily_bars, synthetic_probabilities

START, END = dt.date(2018, 1, 1), dt.date(2025, 12, 31)
GOAL_ENV, GOAL_PPO, GOAL_BACKTEST_MS = 20_000.0, 3_000.0, 100.0
ENV_STEPS, PPO_STEPS = 20_000, 16_384


def main(argv: list[str]) -> int:
    data = allocation.allocation_data(embedded_daily_bars(), synthetic_probabilities(classes=(4, 4, 3)))
    config = ppo.settings()
    torch.set_num_threads(config.threads)
    rows = [("observation", f"{allocation.make_env(data, START, END).observation_space.shape[0]} values")]

    # Environment alone.
    execution = {"no_trade_band": config.no_trade_band, "rebalance_rate": config.rebalance_rate}
    env = allocation.make_env(data, START, END, episode_weeks=config.episode_weeks, random_start=True, **execution)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(ENV_STEPS, env.action_space.shape[0])).astype(np.float32)
    env_s, env_cpu = (min(x) for x in zip(*(_env_loop(env, actions) for _ in range(3))))
    full = allocation.make_env(data, START, END)
    targets = allocation.policy_targets(_random_actor(full, config), full)
    first = data.index(START) - 1
    rows_ = slice(first, data.index(END) + 1)
    began = time.perf_counter()
    repeats = max(1, ENV_STEPS // targets.shape[0])
    for _ in range(repeats):
        simulate(data.prices.open[rows_], data.prices.close[rows_], targets, full.decision_days, settings().costs)
    sim_per_step = (time.perf_counter() - began) / (repeats * targets.shape[0])
    env_rate = ENV_STEPS / env_s
    rows.append(("env steps/s", f"{env_rate:,.0f} ({1e6 / env_rate:.1f} µs/step; CPU {ENV_STEPS / env_cpu:,.0f}/s; simulate: "
                 f"{1e6 * sim_per_step:.1f} µs per rebalance, {1 / env_rate / sim_per_step:.1f}x)  goal >= {GOAL_ENV:,.0f}: "
                 f"{'PASS' if env_rate >= GOAL_ENV else 'FAIL'}"))

    # PPO training throughput (no evaluation callback).
    train = splits()["train"]

    def make_env():
        return allocation.make_env(data, train.start, train.end, episode_weeks=config.episode_weeks, random_start=True,
                                   **execution)

    venv = VecNormalize(DummyVecEnv([make_env] * config.n_envs), clip_obs=config.clip_obs, gamma=config.gamma)
    venv.seed(0)
    venv.reset()
    began = time.perf_counter()
    for _ in range(PPO_STEPS // config.n_envs):
        venv.step(np.random.uniform(-1, 1, size=(config.n_envs, venv.action_space.shape[0])))
    vec_rate = PPO_STEPS / (time.perf_counter() - began)
    model = PPO("MlpPolicy", venv, n_steps=config.n_steps, batch_size=config.batch_size, n_epochs=config.n_epochs,
                gamma=config.gamma, seed=0, device="cpu",
                policy_kwargs={"net_arch": {"pi": list(config.net_arch), "vf": list(config.net_arch)}})
    began, cpu = time.perf_counter(), time.process_time()
    model.learn(PPO_STEPS)
    ppo_rate = PPO_STEPS / (time.perf_counter() - began)
    ppo_cpu = PPO_STEPS / (time.process_time() - cpu)
    rows.append(("PPO training steps/s", f"{ppo_rate:,.0f} (CPU {ppo_cpu:,.0f}/s; n_envs {config.n_envs}, {config.n_epochs} epochs per "
                 f"{config.n_envs * config.n_steps:,} steps; vectorised env alone {vec_rate:,.0f}/s: "
                 f"{vec_rate / ppo_rate:.1f}x)  goal >= {GOAL_PPO:,.0f}: {'PASS' if ppo_rate >= GOAL_PPO else 'FAIL'}"))

    # One backtest of every strategy over the full history: the ensemble, the benchmarks, the rules.
    actor = ppo.actor(model, venv, config.action_scale, config.no_trade_band, config.rebalance_rate)
    ensemble = allocation.EnsemblePolicy(tuple(_perturbed(actor, seed) for seed in config.seeds))
    strategies = benchmark_strategies(data.prices.symbols)
    strategies.update(rules.rule_strategies(data, rules.calibrate(data, train.start, train.end)))

    def every_strategy():
        return allocation.compare(data, {"ppo_ensemble": ensemble}, START, END, strategies)

    backtest_s, backtest_cpu, results = _best(every_strategy, 5)
    single_s, _, _ = _best(lambda: allocation.backtest_policy(actor, data, START, END), 5)
    ensemble_s, _, _ = _best(lambda: allocation.backtest_policy(ensemble, data, START, END), 5)
    backtest_ms = 1000 * backtest_s
    rows.append(("backtest, every strategy", f"{backtest_ms:.0f} ms (CPU {1000 * backtest_cpu:.0f} ms; {len(results)} strategies, "
                 f"{targets.shape[0]} weekly rebalances each; the ensemble of {len(config.seeds)} alone "
                 f"{1000 * ensemble_s:.0f} ms, {ensemble_s / single_s:.1f}x one actor's {1000 * single_s:.0f} ms)  "
                 f"goal <= {GOAL_BACKTEST_MS:.0f} ms: {'PASS' if backtest_ms <= GOAL_BACKTEST_MS else 'FAIL'}"))
    rows.append(("peak RSS", f"{peak_rss_mib():,.0f} MiB"))
    print_table(rows)
    met = env_rate >= GOAL_ENV and ppo_rate >= GOAL_PPO and backtest_ms <= GOAL_BACKTEST_MS
    return 0 if met else 1


def _env_loop(env, actions: np.ndarray) -> tuple[float, float]:
    """(wall, CPU) seconds of stepping `env` through `actions`."""
    env.reset(seed=0)
    began, cpu = time.perf_counter(), time.process_time()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - began, time.process_time() - cpu


def _best(fn, runs: int):
    """(best wall seconds, best CPU seconds, last result) of `runs` calls of `fn`."""
    walls, cpus, result = [], [], None
    for _ in range(runs):
        began, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def _perturbed(actor: allocation.AllocationPolicy, seed: int) -> allocation.AllocationPolicy:
    """Another member of the same architecture (the backtest's cost does not depend on the values)."""
    rng = np.random.default_rng(seed)
    layers = tuple((w + rng.normal(0, 0.05, w.shape), b) for w, b in actor.layers)
    return dataclasses.replace(actor, layers=layers)


def _random_actor(env, config: ppo.PPOSettings) -> allocation.AllocationPolicy:
    """An untrained actor of the default architecture (the backtest's cost does not depend on
    the weights' values)."""
    rng = np.random.default_rng(0)
    sizes = [env.observation_space.shape[0], *config.net_arch, env.action_space.shape[0]]
    layers = tuple((rng.normal(0, 0.3, size=(o, i)), np.zeros(o)) for i, o in zip(sizes[:-1], sizes[1:]))
    dim = sizes[0]
    return allocation.AllocationPolicy(layers, np.zeros(dim), np.ones(dim), config.clip_obs, 1e-8)

