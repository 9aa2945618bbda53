"""Training the PPO allocation policy (stable-baselines3): several seeds, in parallel, each
early-stopped on a smoothed validation curve, deployed together as an ensemble.

One seed (:func:`train_policy`):

* ``n_envs`` copies of the training environment (random one-year episodes) in a
  ``DummyVecEnv`` under ``VecNormalize`` (observations standardised with running statistics,
  rewards scaled during training only); the environment carries the policy's no-trade band
  and rebalance rate;
* every ``eval_every`` environment steps, :class:`ValidationCallback` freezes the current actor
  and its observation statistics into an ``AllocationPolicy`` and scores it with a caller's
  function (the whole selection window, deterministic actions);
* a checkpoint can be kept only after ``min_updates`` PPO updates (an evaluation before that
  is recorded, never kept), and is judged by the trailing mean of the last ``smoothing``
  evaluations, not by one evaluation: a single lucky score is noise on one year of weeks;
* training stops after ``patience`` eligible evaluations without a smoothed gain of at least
  ``min_improvement``; the best smoothed evaluation's actor, statistics and SB3 parameters are
  returned, with the learning curves (training reward per rollout, validation score per
  evaluation).

Several seeds (:func:`train_seeds`): one :class:`TrainingJob` per seed, each holding only the
data its training and selection windows may see, run in a process pool (one seed per core, one
torch thread each). A seeded run is bit-reproducible, in a worker or not. What is deployed is
decided before any score is seen: the ensemble of all seeds (:class:`~regime_pipeline.core.allocation.policy.EnsemblePolicy`),
never the best-scoring seed.

Settings: configs/ppo.yaml.
"""

from __future__ import annotations

import concurrent.futures
import copy
import datetime as dt
import io
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation import performance
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.env import AllocationEnv
from regime_pipeline.core.allocation.policy import AllocationData, AllocationPolicy, EnsemblePolicy

Scorer = Callable[[AllocationPolicy], float]
VAL_SCORES = ("reward", "sortino", "sharpe")


@dataclass(frozen=True)
class PPOSettings:
    """One profile of configs/ppo.yaml (see the comments there for units)."""

    seeds: tuple[int, ...]
    total_timesteps: int
    eval_every: int
    min_updates: int
    smoothing: int
    patience: int
    min_improvement: float
    val_score: str
    episode_weeks: int
    n_envs: int
    n_steps: int
    batch_size: int
    n_epochs: int
    learning_rate: float
    gamma: float
    gae_lambda: float
    clip_range: float
    ent_coef: float
    net_arch: tuple[int, ...]
    log_std_init: float
    action_scale: float
    no_trade_band: float
    rebalance_rate: float
    clip_obs: float
    norm_reward: bool
    threads: int
    workers: int

    @property
    def steps_per_update(self) -> int:
        return self.n_envs * self.n_steps

    @property
    def min_steps(self) -> int:
        """Environment steps before a checkpoint can be kept."""
        return self.min_updates * self.steps_per_update

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def settings(profile: str = "default") -> PPOSettings:
    """The `profile` of configs/ppo.yaml laid over its `default`."""
    raw = load_yaml("ppo")
    if profile not in raw:
        raise KeyError(f"no PPO profile {profile!r} in configs/ppo.yaml (have: {', '.join(raw)})")
    merged = {**raw["default"], **raw[profile]}
    merged["seeds"] = tuple(int(s) for s in merged["seeds"])
    merged["net_arch"] = tuple(int(u) for u in merged["net_arch"])
    config = PPOSettings(**merged)
    if config.val_score not in VAL_SCORES:
        raise ValueError(f"configs/ppo.yaml {profile}: val_score must be one of {VAL_SCORES}, got {config.val_score!r}")
    if config.total_timesteps < config.min_steps:
        raise ValueError(f"configs/ppo.yaml {profile}: total_timesteps {config.total_timesteps:,} is below "
                         f"min_updates x n_envs x n_steps = {config.min_steps:,}")
    if config.smoothing < 1 or config.patience < 1:
        raise ValueError(f"configs/ppo.yaml {profile}: smoothing and patience must be >= 1")
    return config


def actor(
    model: PPO, normalizer: VecNormalize, action_scale: float, no_trade_band: float = 0.0, rebalance_rate: float = 1.0,
) -> AllocationPolicy:
    """Freeze `model`'s deterministic actor and `normalizer`'s observation statistics.

    Reads SB3's ``MlpPolicy`` layout: ``mlp_extractor.policy_net`` (Linear/activation pairs)
    then ``action_net`` (Linear, the Gaussian's mean).
    """
    policy = model.policy
    layers, activation = [], "tanh"
    for module in [*policy.mlp_extractor.policy_net, policy.action_net]:
        if isinstance(module, torch.nn.Linear):
            layers.append((module.weight.detach().double().numpy().copy(), module.bias.detach().double().numpy().copy()))
        elif isinstance(module, torch.nn.ReLU):
            activation = "relu"
        elif not isinstance(module, torch.nn.Tanh):
            raise TypeError(f"unsupported layer {type(module).__name__} in the policy network")
    rms = normalizer.obs_rms
    return AllocationPolicy(
        layers=tuple(layers),
        obs_mean=np.asarray(rms.mean, dtype="float64").copy(),
        obs_var=np.asarray(rms.var, dtype="float64").copy(),
        clip_obs=float(normalizer.clip_obs),
        epsilon=float(normalizer.epsilon),
        activation=activation,
        action_scale=action_scale,
        no_trade_band=no_trade_band,
        rebalance_rate=rebalance_rate,
    )


@dataclass
class Evaluation:
    step: int  # environment steps trained when evaluated
    score: float  # the validation score of this checkpoint
    smoothed: float  # trailing mean of the last `smoothing` scores, this one included
    eligible: bool  # at least `min_updates` updates done: may be kept


class ValidationCallback(BaseCallback):
    """Score the current actor every `eval_every` environment steps; keep the checkpoint with
    the best smoothed score among those after `min_steps`; stop after `patience` such
    evaluations without a smoothed improvement of at least `min_improvement`. Records the
    training reward (before normalisation) per rollout.

    :param scorer: AllocationPolicy -> score (higher is better).
    :param freeze: () -> the current AllocationPolicy (see :func:`actor`).
    """

    def __init__(
        self, scorer: Scorer, freeze: Callable[[], AllocationPolicy], eval_every: int, patience: int,
        min_improvement: float = 0.0, log: logging.Logger | Any | None = None, min_steps: int = 0, smoothing: int = 1,
    ) -> None:
        super().__init__(verbose=0)
        self.scorer, self.freeze = scorer, freeze
        self.eval_every, self.patience, self.min_improvement = eval_every, patience, min_improvement
        self.min_steps, self.smoothing = min_steps, smoothing
        self.log = log
        self.history: list[Evaluation] = []
        self.train_curve: list[tuple[int, float]] = []  # (steps, mean reward per weekly step in the rollout)
        self.best: Evaluation | None = None
        self.best_policy: AllocationPolicy | None = None
        self.best_parameters: dict[str, Any] | None = None
        self.stopped_early = False
        self._next = eval_every
        self._stale = 0
        self._rollout_rewards: list[float] = []

    def evaluate(self, step: int) -> bool:
        """Score now; return False when training should stop."""
        policy = self.freeze()
        score = float(self.scorer(policy))
        recent = [e.score for e in self.history[-(self.smoothing - 1):]] if self.smoothing > 1 else []
        smoothed = float(np.mean([*recent, score]))
        evaluation = Evaluation(step, score, smoothed, eligible=step >= self.min_steps)
        self.history.append(evaluation)
        mark = ""
        if evaluation.eligible:
            if self.best is None or smoothed >= self.best.smoothed + self.min_improvement:
                self.best, self.best_policy, self._stale = evaluation, policy, 0
                self.best_parameters = copy.deepcopy(self.model.get_parameters()) if self.model is not None else None
                mark = " *"
            else:
                self._stale += 1
        if self.log is not None:
            best = f"best {self.best.smoothed:+.4f} at {self.best.step:,}" if self.best else f"none kept before {self.min_steps:,}"
            self.log.info(f"step {step:>7,}: val {score:+.4f}, smoothed {smoothed:+.4f} ({best}){mark}")
        if self._stale >= self.patience:
            self.stopped_early = True
            return False
        return True

    def _on_step(self) -> bool:
        original = self.training_env.get_original_reward() if hasattr(self.training_env, "get_original_reward") else None
        if original is not None:
            self._rollout_rewards.append(float(np.mean(original)))
        if self.num_timesteps < self._next:
            return True
        self._next += self.eval_every
        return self.evaluate(self.num_timesteps)

    def _on_rollout_end(self) -> None:
        if self._rollout_rewards:
            self.train_curve.append((int(self.num_timesteps), float(np.mean(self._rollout_rewards))))
            self._rollout_rewards = []

    def _on_training_end(self) -> None:
        self._on_rollout_end()  # a rollout cut short by the stop has no rollout end of its own


@dataclass
class TrainedPolicy:
    """The outcome of one seed: the kept actor, where it came from, and the learning curves."""

    seed: int
    policy: AllocationPolicy
    best: Evaluation
    history: list[Evaluation]
    train_curve: list[tuple[int, float]]
    steps_run: int
    stopped_early: bool
    seconds: float
    model: PPO | None = field(default=None, repr=False)  # SB3 model with the kept parameters (in-process runs)
    sb3_zip: bytes = field(default=b"", repr=False)  # the same model saved by SB3 (from a worker)


def seed_record(run: TrainedPolicy) -> dict[str, Any]:
    """One seed's outcome as JSON: its kept actor, the kept checkpoint, both learning curves and
    its training time (:func:`from_seed_record` reads it back)."""
    return {
        "seed": run.seed, "policy": run.policy.to_dict(), "kept_step": run.best.step, "val_score": run.best.score,
        "val_smoothed": run.best.smoothed, "steps_run": run.steps_run, "stopped_early": run.stopped_early,
        "seconds": round(run.seconds, 1), "history": [[e.step, e.score, e.smoothed, e.eligible] for e in run.history],
        "train_curve": [list(p) for p in run.train_curve],
    }


def from_seed_record(raw: dict[str, Any]) -> TrainedPolicy:
    """The :class:`TrainedPolicy` of a :func:`seed_record` (without the SB3 model)."""
    history = [Evaluation(int(step), float(score), float(smoothed), bool(eligible))
               for step, score, smoothed, eligible in raw["history"]]
    return TrainedPolicy(
        seed=int(raw["seed"]), policy=AllocationPolicy.from_dict(raw["policy"]),
        best=Evaluation(int(raw["kept_step"]), float(raw["val_score"]), float(raw["val_smoothed"]), True),
        history=history, train_curve=[(int(step), float(r)) for step, r in raw["train_curve"]],
        steps_run=int(raw["steps_run"]), stopped_early=bool(raw["stopped_early"]), seconds=float(raw["seconds"]),
    )


def train_policy(
    make_env: Callable[[], AllocationEnv], scorer: Scorer, config: PPOSettings, seed: int,
    log: logging.Logger | Any | None = None,
) -> TrainedPolicy:
    """Train one PPO seed on environments from `make_env` (training episodes), early-stopped on
    `scorer` (see the module docstring)."""
    torch.set_num_threads(config.threads)
    venv = DummyVecEnv([make_env for _ in range(config.n_envs)])
    venv.seed(seed)
    normalizer = VecNormalize(venv, norm_obs=True, norm_reward=config.norm_reward, clip_obs=config.clip_obs, gamma=config.gamma)
    model = PPO(
        "MlpPolicy", normalizer, n_steps=config.n_steps, batch_size=config.batch_size, n_epochs=config.n_epochs,
        learning_rate=config.learning_rate, gamma=config.gamma, gae_lambda=config.gae_lambda,
        clip_range=config.clip_range, ent_coef=config.ent_coef, seed=seed, device="cpu", verbose=0,
        policy_kwargs={
            "net_arch": {"pi": list(config.net_arch), "vf": list(config.net_arch)},
            "log_std_init": config.log_std_init,
            "activation_fn": torch.nn.Tanh,
        },
    )
    callback = ValidationCallback(
        scorer, lambda: actor(model, normalizer, config.action_scale, config.no_trade_band, config.rebalance_rate),
        config.eval_every,
        config.patience, config.min_improvement, log, min_steps=config.min_steps, smoothing=config.smoothing,
    )
    began = time.perf_counter()
    model.learn(total_timesteps=config.total_timesteps, callback=callback)
    if not callback.history or callback.history[-1].step != model.num_timesteps:
        callback.evaluate(model.num_timesteps)  # the final weights are a candidate too
    seconds = time.perf_counter() - began
    if callback.best is None or callback.best_policy is None or callback.best_parameters is None:
        raise RuntimeError(f"seed {seed}: no evaluation after {config.min_steps:,} steps; raise total_timesteps")
    model.set_parameters(callback.best_parameters, exact_match=True)
    return TrainedPolicy(
        seed=seed, policy=callback.best_policy, best=callback.best, history=list(callback.history),
        train_curve=list(callback.train_curve), steps_run=int(model.num_timesteps),
        stopped_early=callback.stopped_early, seconds=seconds, model=model,
    )


# -- validation scores -----------------------------------------------------------------------


def validation_score(policy: AllocationPolicy | EnsemblePolicy, data: AllocationData, start: dt.date, end: dt.date,
                     kind: str) -> float:
    """The policy's score on ``start..end`` (deterministic, from cash):

    * ``reward``: the mean weekly reward of the environment (configs/backtest.yaml), the
      objective the policy is trained for, on days it was not trained on;
    * ``sortino`` / ``sharpe``: of the daily net returns. Sortino (and Sharpe) rank a losing
      strategy better the more volatile it is, so neither suits a selection year that can
      be a falling market.
    """
    if kind == "reward":
        return allocation.mean_reward(policy, data, start, end)
    returns = allocation.backtest_policy(policy, data, start, end).period_returns
    return performance.sortino(returns) if kind == "sortino" else performance.sharpe(returns)


# -- several seeds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingJob:
    """One seed's training, with only the data it may see: `train_data` ends on the last
    training day and `val_data` on the last selection day, so nothing later can reach it.

    :ivar train: first and last day of the training episodes
    :ivar val: first and last day of the selection window
    :ivar label: what the log calls it (``seed 3``, ``origin 2024 seed 3``)
    """

    seed: int
    config: PPOSettings
    train_data: AllocationData
    train: tuple[dt.date, dt.date]
    val_data: AllocationData
    val: tuple[dt.date, dt.date]
    label: str = ""

    def make_env(self) -> AllocationEnv:
        c = self.config
        return allocation.make_env(self.train_data, *self.train, episode_weeks=c.episode_weeks, random_start=True,
                                   action_scale=c.action_scale, no_trade_band=c.no_trade_band,
                                   rebalance_rate=c.rebalance_rate)

    def score(self, policy: AllocationPolicy) -> float:
        return validation_score(policy, self.val_data, *self.val, self.config.val_score)


def seed_jobs(
    data: AllocationData, train: tuple[dt.date, dt.date], val: tuple[dt.date, dt.date], config: PPOSettings,
    seeds: Sequence[int], label: str = "",
) -> list[TrainingJob]:
    """One job per seed in `seeds`: training episodes in `train`, selection on `val` (which must
    come after `train`), each job cut to the days it may see and labelled ``<label> seed <s>``
    in the log."""
    if not train[0] <= train[1] < val[0] <= val[1]:
        raise ValueError(f"the selection window {val[0]}..{val[1]} must follow the training window {train[0]}..{train[1]}")
    train_data, val_data = data.through(train[1]), data.through(val[1])
    prefix = f"{label} " if label else ""
    return [TrainingJob(seed, config, train_data, train, val_data, val, f"{prefix}seed {seed}") for seed in seeds]


def run_job(job: TrainingJob) -> TrainedPolicy:
    """Train one job's seed; the SB3 model comes back saved (``sb3_zip``), so the result can
    cross a process boundary."""
    result = train_policy(job.make_env, job.score, job.config, job.seed)
    buffer = io.BytesIO()
    result.model.save(buffer)
    result.sb3_zip, result.model = buffer.getvalue(), None
    return result


def train_seeds(jobs: Sequence[TrainingJob], workers: int, log: logging.Logger | Any | None = None) -> list[TrainedPolicy]:
    """Run `jobs` on `workers` processes (1: in this process), logging each seed as it
    finishes; results in the jobs' order."""
    results: dict[int, TrainedPolicy] = {}
    began = time.perf_counter()

    def report(index: int, result: TrainedPolicy) -> None:
        results[index] = result
        if log is not None:
            log.info(f"{jobs[index].label or f'seed {result.seed}'}: kept step {result.best.step:,} (val "
                     f"{result.best.score:+.4f}, smoothed {result.best.smoothed:+.4f}) of {result.steps_run:,} in "
                     f"{result.seconds:.0f}s; {len(results)}/{len(jobs)} seeds done after {time.perf_counter() - began:.0f}s")

    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            report(i, run_job(job))
    else:
        # spawn, not fork: the parent may hold torch's thread pools and a Dagster run's state.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
            for future in concurrent.futures.as_completed(futures):
                report(futures[future], future.result())
    return [results[i] for i in range(len(jobs))]


def ensemble(results: Sequence[TrainedPolicy]) -> EnsemblePolicy:
    """The deployed policy: every seed's kept actor, their target weights averaged."""
    return EnsemblePolicy(tuple(r.policy for r in results))
