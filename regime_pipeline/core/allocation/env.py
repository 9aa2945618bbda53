"""Gymnasium environment for the weekly allocation agent: one step = one weekly rebalance.

The accounting is exactly :func:`regime_pipeline.core.allocation.portfolio.simulate` (see its module
docstring): the action chosen at the close of decision day ``d`` is traded at the open of
``d + 1``; the cost ``rate · turnover · V_open`` (turnover = Σ_assets |target - drifted|, cash
excluded, not halved) is taken pro rata from the whole portfolio; units are then held constant
until the next trade. A step covers the days ``d + 1 .. d'`` where ``d'`` is the next decision
day (the last step of the data runs to the last day of the data). The decision days are the
benchmarks' (:func:`regime_pipeline.core.allocation.strategies.decision_days`), given by the caller.

Observation (float32, shape ``(P + 2N + 4,)``) at the close of decision day ``d``; only data up
to and including that close enter it (causal):

* ``[0, P)``            regime probabilities ``probs[d]`` (opaque feature block, NaN -> 0)
* ``[P, P+N+1)``        current (drifted) weights at close ``d``, N assets then cash
* ``[P+N+1]``           last week's simple portfolio return (0 on the first step)
* ``[P+N+2]``           drawdown from the running peak of the daily closes, start value
  included, in [-1, 0]
* ``[P+N+3]``           realised volatility: std (ddof=1) of the portfolio's daily returns of the
  last 4 steps (weeks), × sqrt(365); 0 with fewer than 2 returns
* ``[P+N+4, P+2N+4)``   listed mask: 1.0 where the asset has a close on day ``d``

Action (``Box(-1, 1, (N + 1,))``, assets then cash) -> target weights by a Euclidean projection
onto the simplex (sparsemax) of ``scale · action`` restricted to the tradable coordinates (the
assets listed at close ``d``, plus cash); unlisted assets get exactly 0. Unlike a softmax over a
bounded box, every point of the simplex is reachable: with ``scale · 2 >= 1`` an action of +1 on
one coordinate and -1 elsewhere gives a weight of exactly 1 there, and any coordinate whose
value is at least ``1 / scale`` below the top one gets exactly 0. Equal actions give equal
weights. Out-of-box actions are clipped first.

Execution (:meth:`AllocationEnv.trade_weights`): the projected target is not traded as it is.
An asset whose target differs from its current (drifted) weight at close ``d`` by at most the
no-trade band b keeps its weight (:func:`apply_no_trade_band`); the book then moves the
fraction ``rebalance_rate`` (κ) of the way from its current weights to that banded target
(partial rebalancing: an exponential smoothing of the targets, half-life ln 2 / -ln(1 - κ)
weeks). Under trading costs, small and short-lived adjustments cost more than they are
worth, and a policy whose output jitters from week to week would otherwise pay for the
jitter. b = 0 and κ = 1 trade to the target exactly.

Reward per step (coefficients in configs/backtest.yaml ``reward:``), with ``r_d`` the week's
daily net returns (the cost is inside the trade day's return), ``n`` their number, ``TO`` the
rebalance's turnover and ``g_ref`` the log growth of the equal-weight portfolio of the assets
listed at close ``d`` from close ``d`` to the week's last close (no cost)::

    g      = Σ_d log(1 + r_d)
    reward = g - λ_down · sqrt(mean(min(r_d, 0)²)) · sqrt(n) - λ_turn · TO - λ_short · max(0, g_ref - g)

The shortfall term makes doing nothing non-optimal by construction in rising markets: an
all-cash policy has ``g = 0`` and pays ``λ_short · g_ref`` every week the market rises, while
in falling weeks it pays nothing (cash is then rightly rewarded).

Costs: ``g`` is the log growth of the account net of the trade's cost, ``rate · TO · V_open``,
exactly what :func:`portfolio.simulate` charges. So the reward charges the real cost once;
``λ_turn`` (0 in configs/backtest.yaml) would charge turnover on top of it.

Episodes: ``episode_weeks`` steps from decision index 0 (``random_start=False``) or from a start
drawn uniformly with the env's seeded RNG so that a full episode fits (or ``options={"start":
k}`` in :meth:`AllocationEnv.reset`). ``terminated`` is True when the data end (no later state
exists); ``truncated`` is True when the episode length is reached before that (a time limit).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import cache
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from regime_pipeline.configs import load_yaml
from regime_pipeline.core.allocation.portfolio import Costs

PERIODS_PER_YEAR = 365  # annualisation of the volatility feature, as in performance.py
VOL_WINDOW_WEEKS = 4
_RANKS = np.arange(1.0, 257.0)  # 1, 2, ... for project_simplex (up to 256 coordinates)


@dataclass(frozen=True)
class RewardConfig:
    """Reward coefficients (see the module docstring)."""

    downside: float = 0.1  # λ_down, on the weekly downside deviation
    turnover: float = 0.0005  # λ_turn, per unit of turnover on top of the trading costs
    shortfall: float = 0.25  # λ_short, on the log-growth shortfall against equal weight

    @classmethod
    def from_config(cls) -> RewardConfig:
        return _configured_reward()


@cache
def _configured_reward() -> RewardConfig:
    raw = load_yaml("backtest")["reward"]
    return RewardConfig(
        downside=float(raw["downside"]), turnover=float(raw["turnover"]), shortfall=float(raw["shortfall"])
    )


def project_simplex(z: np.ndarray) -> np.ndarray:
    """Euclidean projection of `z` (m,) onto the probability simplex (sparsemax): the point
    ``max(z - τ, 0)`` with τ chosen so the entries sum to 1. Exact zeros are produced."""
    u = z.copy()
    u.sort()
    u = u[::-1]
    css = u.cumsum()
    # The support is a prefix of the sorted values: count where u_j > (css_j - 1) / j.
    rho = int(np.count_nonzero(u * _RANKS[: z.size] > css - 1.0))
    tau = (css[rho - 1] - 1.0) / rho
    return np.maximum(z - tau, 0.0)


def project_simplex_rows(z: np.ndarray) -> np.ndarray:
    """:func:`project_simplex` of each row of `z` (S, m) at once."""
    u = -np.sort(-z, axis=1)
    css = u.cumsum(axis=1)
    rho = np.count_nonzero(u * _RANKS[: z.shape[1]] > css - 1.0, axis=1)
    tau = (css[np.arange(z.shape[0]), rho - 1] - 1.0) / rho
    return np.maximum(z - tau[:, None], 0.0)


def apply_no_trade_band(target: np.ndarray, current: np.ndarray, band: float, rate: float = 1.0) -> np.ndarray:
    """Weights (N + 1,) to trade to: `target`'s weight for each asset whose weight it moves by
    more than `band` from `current` (both (N + 1,), cash last), `current`'s for the others, and
    cash the rest. When the kept and moved assets together exceed 1 (the cash the target frees is
    kept in an asset within the band), the buys are scaled down so cash is 0. Then the book moves
    the fraction `rate` of the way from `current` to that banded target. ``band = 0`` and
    ``rate = 1`` return `target` itself."""
    if band <= 0.0 and rate >= 1.0:
        return target
    n = target.shape[0] - 1
    move = target[:n] - current[:n]
    move[np.abs(move) <= band] = 0.0
    excess = float(np.add.reduce(current[:n])) + float(np.add.reduce(move)) - 1.0
    if excess > 0.0:
        # The excess is at most the buys (the kept weights sum to at most 1), up to float dust,
        # which a fully invested book with no buy can carry: then the weights are rescaled.
        buys = np.maximum(move, 0.0)
        bought = float(np.add.reduce(buys))
        if bought > 0.0:
            move -= buys * min(1.0, excess / bought)
        else:
            move -= current[:n] * (excess / (1.0 + excess))
    if rate < 1.0:
        move *= rate
    out = np.empty_like(target)
    np.add(current[:n], move, out=out[:n])
    out[n] = max(0.0, 1.0 - float(np.add.reduce(out[:n])))
    return out


class AllocationEnv(gymnasium.Env):
    """Weekly long-only allocation over N assets + cash; see the module docstring.

    :param open_: (T, N) daily open prices in USDT, NaN where not listed.
    :param close: (T, N) daily close prices in USDT, NaN where not listed. Once an asset has a
        close it must have an open and a close every later day (no gaps).
    :param probs: (T, P) features known at each day's close (regime probabilities).
    :param decision_days: (K,) strictly increasing day indices in [0, T - 2].
    :param costs: a :class:`Costs` or the rate per unit of turnover (fraction).
    :param episode_weeks: steps per episode; None = until the end of the data.
    :param random_start: draw the first decision of an episode with the seeded RNG.
    :param reward: reward coefficients; None = configs/backtest.yaml ``reward:``.
    :param action_scale: multiplier of the action before the simplex projection (>= 0.5 so
        that a weight of 1 is reachable).
    :param no_trade_band: per-asset weight change at or below which a target is not traded
        (:func:`apply_no_trade_band`); 0 trades every change.
    :param rebalance_rate: fraction of the way from the current weights to the (banded) target
        the book moves at a rebalance, in (0, 1]; 1 trades to it in full.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        open_: np.ndarray,
        close: np.ndarray,
        probs: np.ndarray,
        decision_days: np.ndarray,
        costs: Costs | float,
        episode_weeks: int | None = 52,
        random_start: bool = True,
        reward: RewardConfig | None = None,
        action_scale: float = 1.0,
        no_trade_band: float = 0.0,
        rebalance_rate: float = 1.0,
    ) -> None:
        super().__init__()
        open_ = np.asarray(open_, dtype="float64")
        close = np.asarray(close, dtype="float64")
        probs = np.asarray(probs, dtype="float64")
        days = np.asarray(decision_days, dtype="int64").reshape(-1)
        if open_.ndim != 2 or open_.shape != close.shape:
            raise ValueError(f"open {open_.shape} and close {close.shape} must be the same (T, N)")
        t_days, n = close.shape
        if probs.ndim != 2 or probs.shape[0] != t_days:
            raise ValueError(f"probs must be ({t_days}, P), got {probs.shape}")
        if days.size == 0 or days[0] < 0 or days[-1] > t_days - 2 or (np.diff(days) <= 0).any():
            raise ValueError(f"decision days must be non-empty, strictly increasing in [0, {t_days - 2}]")
        if action_scale < 0.5:
            raise ValueError("action_scale must be >= 0.5 for a weight of 1 to be reachable")
        if not 0.0 <= no_trade_band < 1.0:
            raise ValueError(f"no_trade_band must be in [0, 1), got {no_trade_band}")
        if not 0.0 < rebalance_rate <= 1.0:
            raise ValueError(f"rebalance_rate must be in (0, 1], got {rebalance_rate}")
        if episode_weeks is not None and episode_weeks < 1:
            raise ValueError("episode_weeks must be >= 1 or None")
        # Holding an asset through a missing price has no defined value: refuse such data once
        # here instead of checking every step.
        listed_close = np.isfinite(close)
        ever = np.maximum.accumulate(listed_close, axis=0)
        if (ever & ~(listed_close & np.isfinite(open_))).any():
            t, i = np.argwhere(ever & ~(listed_close & np.isfinite(open_)))[0]
            raise ValueError(f"asset {i} has a missing price on day {t} after its listing")

        self.n_assets = n
        self.n_probs = probs.shape[1]
        self.rate = costs.rate if isinstance(costs, Costs) else float(costs)
        self.reward_config = RewardConfig.from_config() if reward is None else reward
        self.episode_weeks = episode_weeks
        self.random_start = random_start
        self.action_scale = float(action_scale)
        self.no_trade_band = float(no_trade_band)
        self.rebalance_rate = float(rebalance_rate)
        self.decision_days = days
        # Step k trades at the open of days[k] + 1 and ends at the close of ends[k].
        self.ends = np.append(days[1:], t_days - 1)
        self._open0 = np.nan_to_num(open_, nan=0.0)
        self._close0 = np.nan_to_num(close, nan=0.0)
        self._probs = np.nan_to_num(probs, nan=0.0).astype(np.float32)
        self._listed_days = listed_close.astype(np.float64)  # (T, N) listed at each close
        self._listed = listed_close[days]  # (K, N) tradable at each decision
        # Equal-weight reference log growth per step, close d -> close of the week's end.
        n_listed = self._listed.sum(axis=1)
        ratio = np.where(self._listed, self._close0[self.ends] / np.where(self._listed, close[days], 1.0), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            self._ref_growth = np.where(n_listed > 0, np.log(ratio.sum(axis=1) / n_listed), 0.0)

        p_low = min(0.0, float(self._probs.min()))
        p_high = max(1.0, float(self._probs.max()))
        big = np.float32(1e6)  # returns and volatility are unbounded in principle
        low = np.concatenate([np.full(self.n_probs, p_low), np.zeros(n + 1), [-1.0, -1.0, 0.0], np.zeros(n)])
        high = np.concatenate([np.full(self.n_probs, p_high), np.ones(n + 1), [big, 0.0, big], np.ones(n)])
        self.observation_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n + 1,), dtype=np.float32)

        # Per-step constants, so that step() is a handful of array operations (no pandas, no
        # per-step allocation of index arrays).
        self._open_safe = np.where(listed_close, self._open0, 1.0)
        self._keep = np.hstack([self._listed, np.ones((days.size, 1), dtype=bool)])  # (K, N + 1) tradable
        self._obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        self._obs_low, self._obs_high = self.observation_space.low, self.observation_space.high

        self._k = 0
        self._stop = 0
        self._units = np.zeros(n)
        self._cash = 1.0
        self._value = 1.0
        self._peak = 1.0
        self._last_return = 0.0
        # Daily returns of the last VOL_WINDOW_WEEKS steps as (count, sum, sum of squares) per
        # step: the volatility feature without concatenating arrays every step.
        self._recent: deque[tuple[int, float, float]] = deque(maxlen=VOL_WINDOW_WEEKS)

    # -- mapping -------------------------------------------------------------------------------

    def action_to_weights(self, action: np.ndarray, listed: np.ndarray) -> np.ndarray:
        """Target weights (N + 1,) for `action` (N + 1,) given the `listed` mask (N,): simplex
        projection of ``scale · clip(action, -1, 1)`` over the listed assets and cash (before
        the no-trade band)."""
        return self._project(action, np.append(listed, True))

    def _project(self, action: np.ndarray, keep: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype="float64").reshape(-1)[keep]
        w = np.zeros(self.n_assets + 1)
        w[keep] = project_simplex(np.minimum(np.maximum(a, -1.0), 1.0) * self.action_scale)
        return w

    # -- gymnasium API -------------------------------------------------------------------------

    def _observation(self, day: int) -> np.ndarray:
        """Observation at the close of `day` (the current state's day); see the module docstring."""
        n, p = self.n_assets, self.n_probs
        obs = self._obs
        obs[:p] = self._probs[day]
        obs[p : p + n] = self._close0[day] * self._units / self._value
        obs[p + n] = self._cash / self._value
        count, total, squares = 0, 0.0, 0.0
        for c, s, q in self._recent:
            count, total, squares = count + c, total + s, squares + q
        if count >= 2:
            variance = max(squares - total * total / count, 0.0) / (count - 1)
            vol = math.sqrt(variance * PERIODS_PER_YEAR)
        else:
            vol = 0.0
        obs[p + n + 1] = self._last_return
        obs[p + n + 2] = self._value / self._peak - 1.0
        obs[p + n + 3] = vol
        obs[p + n + 4 :] = self._listed_days[day]
        # Float32 rounding may step a hair outside the declared bounds (e.g. a weight 1 + 1e-16).
        return np.minimum(np.maximum(obs, self._obs_low), self._obs_high)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start all in cash with value 1.0 at the close of the episode's first decision day.
        ``options={"start": k}`` fixes the first decision index; ``options={"weights": w}``
        starts from the (N + 1,) weights `w` held at that close instead of cash (a book that
        continues from positions it holds; its return and volatility history start empty)."""
        super().reset(seed=seed)
        k_total = self.decision_days.size
        length = k_total if self.episode_weeks is None else min(self.episode_weeks, k_total)
        if options and "start" in options:
            start = int(options["start"])
            if not 0 <= start < k_total:
                raise ValueError(f"start must be in [0, {k_total})")
        elif self.random_start:
            start = int(self.np_random.integers(0, k_total - length + 1))
        else:
            start = 0
        self._k = start
        self._stop = min(start + length, k_total)
        self._units = np.zeros(self.n_assets)
        self._cash = 1.0
        day = int(self.decision_days[start])
        if options and options.get("weights") is not None:
            held = np.asarray(options["weights"], dtype="float64").reshape(-1)
            n = self.n_assets
            listed = self._listed_days[day] > 0
            if (held.shape != (n + 1,) or not np.isfinite(held).all() or (held < -1e-9).any()
                    or abs(held.sum() - 1.0) > 1e-6 or (held[:n][~listed] > 0).any()):
                raise ValueError(f"start weights must be {n + 1} long-only weights summing to 1 with nothing on an "
                                 f"asset without a close on the start day, got {held}")
            held = np.clip(held, 0.0, None) / np.clip(held, 0.0, None).sum()
            self._units = np.where(listed, held[:n] / np.where(listed, self._close0[day], 1.0), 0.0)
            self._cash = float(held[n])
        self._value = 1.0
        self._peak = 1.0
        self._last_return = 0.0
        self._recent.clear()
        return self._observation(day), {"start": start, "day": day}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Trade to the target of `action` at the next open, hold to the next decision close.

        info: ``target`` (N + 1,), ``turnover``, ``cost`` (in equity units, start = 1.0),
        ``daily_returns`` (n,), ``equity`` (n,) closes of the week's days, ``first_day`` (the index of
        the trade day, the first of those n days),
        ``value`` (the week's final value), ``reference_growth``.
        """
        if self._k >= self._stop:
            raise RuntimeError("step() called after the episode ended; call reset()")
        return self.step_weights(self.pending_weights(action))

    def target_weights(self, action: np.ndarray) -> np.ndarray:
        """The target (N + 1,) `action` maps to at the current decision, before the no-trade
        band: what a policy wants (an ensemble averages these)."""
        return self._project(action, self._keep[self._k])

    def target_weights_batch(self, actions: np.ndarray) -> np.ndarray:
        """:meth:`target_weights` of each row of `actions` (S, N + 1) at once: (S, N + 1)."""
        keep = self._keep[self._k]
        a = np.clip(np.asarray(actions, dtype="float64")[:, keep], -1.0, 1.0)
        a *= self.action_scale
        w = np.zeros((a.shape[0], self.n_assets + 1))
        w[:, keep] = project_simplex_rows(a)
        return w

    def current_weights(self) -> np.ndarray:
        """The (drifted) weights (N + 1,) held at the current decision's close, cash last."""
        d = int(self.decision_days[self._k])
        w = np.empty(self.n_assets + 1)
        np.multiply(self._close0[d], self._units, out=w[: self.n_assets])
        w[self.n_assets] = self._cash
        w /= self._value
        return w

    def trade_weights(self, target: np.ndarray) -> np.ndarray:
        """What is traded for `target` (N + 1,) at the current decision: the no-trade band,
        then the rebalance rate, against the weights held at its close (which every input of
        the decision knows); see the module docstring."""
        if self.no_trade_band <= 0.0 and self.rebalance_rate >= 1.0:
            return target
        return apply_no_trade_band(target, self.current_weights(), self.no_trade_band, self.rebalance_rate)

    def pending_weights(self, action: np.ndarray) -> np.ndarray:
        """The weights (N + 1,) `action` trades to at the current decision (band applied)."""
        return self.trade_weights(self.target_weights(action))

    def book_at_next_open(self) -> tuple[np.ndarray, float]:
        """The portfolio at the open of the next trade day, before trading: weights (N + 1,),
        cash last, and value (start = 1.0). What a risk check sees before the trade."""
        t = int(self.decision_days[self._k]) + 1
        held = self._units * self._open0[t]
        value = self._cash + float(np.add.reduce(held))
        return np.append(held, self._cash) / value, value

    def step_weights(self, target: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """:meth:`step` with explicit target weights (N + 1,), long-only, summing to 1, zero on
        the assets not listed at the decision (e.g. an action's weights after risk limits)."""
        if self._k >= self._stop:
            raise RuntimeError("step() called after the episode ended; call reset()")
        n, k = self.n_assets, self._k
        d, e = int(self.decision_days[k]), int(self.ends[k])
        t = d + 1

        # The accounting of portfolio.simulate, one trade at a time (equity equal to ~1e-14 relative).
        open_t = self._open0[t]
        held_open = self._units * open_t
        v_open = self._cash + float(np.add.reduce(held_open))
        turnover = float(np.add.reduce(np.abs(target[:n] - held_open / v_open)))
        cost = self.rate * turnover * v_open
        v_after = v_open - cost
        # An unlisted asset has target 0 and a placeholder open of 1: 0 units, no division by 0.
        self._units = target[:n] * (v_after / self._open_safe[t])
        self._cash = float(target[n] * v_after)
        equity = self._close0[t : e + 1] @ self._units + self._cash  # (n_days,)
        previous = np.empty_like(equity)
        previous[0] = self._value
        previous[1:] = equity[:-1]
        daily = equity / previous - 1.0

        last = float(equity[-1])
        growth = math.log(last / self._value)
        losses = np.minimum(daily, 0.0)
        downside = math.sqrt(float(losses @ losses))  # = sqrt(mean(min(r, 0)²)) · sqrt(n)
        ref = float(self._ref_growth[k])
        c = self.reward_config
        reward = growth - c.downside * downside - c.turnover * turnover - c.shortfall * max(0.0, ref - growth)

        self._last_return = last / self._value - 1.0
        self._value = last
        self._peak = max(self._peak, float(np.maximum.reduce(equity)))
        self._recent.append((daily.size, float(np.add.reduce(daily)), float(daily @ daily)))
        self._k += 1
        terminated = self._k >= self.decision_days.size
        truncated = not terminated and self._k >= self._stop
        obs = self._observation(e)  # e is the next decision day, or the data's last day
        info = {
            "target": target,
            "turnover": turnover,
            "cost": cost,
            "daily_returns": daily,
            "equity": equity,
            "first_day": t,
            "value": self._value,
            "reference_growth": ref,
        }
        return obs, float(reward), terminated, truncated, info
