"""Training the PPO allocation policy (stable-baselines3) with early stopping on a validation
score, and turning the result into a deployable :class:`~regime_pipeline.core.allocation.policy.AllocationPolicy`.

One call of :func:`train_policy` trains one seed:

* ``n_envs`` copies of the training environment (random one-year episodes) in a
  ``DummyVecEnv`` under ``VecNormalize`` (observations standardised with running statistics,
  rewards scaled during training only);
* every ``eval_every`` environment steps, :class:`ValidationCallback` freezes the current actor
  and its observation statistics into an ``AllocationPolicy`` and scores it with a caller's
  function (the whole val window, deterministic actions, Sortino of the daily net returns);
* training stops after ``patience`` evaluations without an improvement of at least
  ``min_improvement``; the best evaluation's actor, statistics and SB3 parameters are returned,
  not the last ones.

Settings: configs/ppo.yaml. A seeded CPU run is bit-reproducible for a fixed thread count.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation.policy import AllocationPolicy
from regime_pipeline.core.allocation.env import AllocationEnv

Scorer = Callable[[AllocationPolicy], float]


@dataclass(frozen=True)
class PPOSettings:
    """One profile of configs/ppo.yaml (see the comments there for units)."""

    seeds: tuple[int, ...]
    total_timesteps: int
    eval_every: int
    patience: int
    min_improvement: float
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
    clip_obs: float
    norm_reward: bool
    threads: int

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
    return PPOSettings(**merged)


def actor(model: PPO, normalizer: VecNormalize, action_scale: float) -> AllocationPolicy:
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
    )


@dataclass
class Evaluation:
    step: int  # environment steps trained when evaluated
    score: float  # val Sortino (or whatever the scorer returns)


class ValidationCallback(BaseCallback):
    """Score the current actor every `eval_every` environment steps; keep the best; stop after
    `patience` evaluations without an improvement of at least `min_improvement`.

    :param scorer: AllocationPolicy -> score (higher is better).
    :param freeze: () -> the current AllocationPolicy (see :func:`actor`).
    """

    def __init__(
        self, scorer: Scorer, freeze: Callable[[], AllocationPolicy], eval_every: int, patience: int,
        min_improvement: float = 0.0, log: logging.Logger | Any | None = None,
    ) -> None:
        super().__init__(verbose=0)
        self.scorer, self.freeze = scorer, freeze
        self.eval_every, self.patience, self.min_improvement = eval_every, patience, min_improvement
        self.log = log
        self.history: list[Evaluation] = []
        self.best: Evaluation | None = None
        self.best_policy: AllocationPolicy | None = None
        self.best_parameters: dict[str, Any] | None = None
        self.stopped_early = False
        self._next = eval_every
        self._stale = 0

    def evaluate(self, step: int) -> bool:
        """Score now; return False when training should stop."""
        policy = self.freeze()
        score = float(self.scorer(policy))
        self.history.append(Evaluation(step, score))
        if self.best is None or score >= self.best.score + self.min_improvement:
            self.best, self.best_policy, self._stale = Evaluation(step, score), policy, 0
            self.best_parameters = copy.deepcopy(self.model.get_parameters()) if self.model is not None else None
            mark = " *"
        else:
            self._stale += 1
            mark = ""
        if self.log is not None:
            self.log.info(f"step {step:>7,}: val score {score:+.4f} (best {self.best.score:+.4f} at {self.best.step:,}){mark}")
        if self._stale >= self.patience:
            self.stopped_early = True
            return False
        return True

    def _on_step(self) -> bool:
        if self.num_timesteps < self._next:
            return True
        self._next += self.eval_every
        return self.evaluate(self.num_timesteps)


@dataclass
class TrainedPolicy:
    """The outcome of one seed: the best actor and where it came from."""

    seed: int
    policy: AllocationPolicy
    best: Evaluation
    history: list[Evaluation]
    steps_run: int
    stopped_early: bool
    seconds: float
    model: PPO = field(repr=False)  # the SB3 model with the best evaluation's parameters loaded


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
        scorer, lambda: actor(model, normalizer, config.action_scale), config.eval_every, config.patience,
        config.min_improvement, log,
    )
    began = time.perf_counter()
    model.learn(total_timesteps=config.total_timesteps, callback=callback)
    if not callback.history or callback.history[-1].step != model.num_timesteps:
        callback.evaluate(model.num_timesteps)  # the final weights are a candidate too
    seconds = time.perf_counter() - began
    assert callback.best is not None and callback.best_policy is not None and callback.best_parameters is not None
    model.set_parameters(callback.best_parameters, exact_match=True)
    return TrainedPolicy(
        seed=seed, policy=callback.best_policy, best=callback.best, history=list(callback.history),
        steps_run=int(model.num_timesteps), stopped_early=callback.stopped_early, seconds=seconds, model=model,
    )
