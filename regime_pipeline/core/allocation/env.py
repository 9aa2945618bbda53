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

With ``slots`` (a point-in-time universe, :mod:`regime_pipeline.core.data.universe`), N above is
the number of slots S, not of assets: decision k's slot s holds asset ``slots[k, s]`` (-1: empty),
the probability block is that asset's ``asset_prob_width`` columns per slot then the market-wide
ones, the weights, mask and action coordinates are per slot, and the shape stays fixed however
the members change. The accounting stays per asset: an asset that leaves the members is sold at
the next rebalance (target 0), whatever slot it held.

Assets whose data end or that have a close but no full bar are accounted as
:mod:`regime_pipeline.core.allocation.exits` says (sold at the last close; valued, not traded, on a
close-only day), by the same :func:`portfolio.trade` as ``simulate``.

Action (``Box(-1, 1, (N + 1,))``, assets then cash) -> target weights by a Euclidean projection
onto the simplex (sparsemax) of ``scale · action`` restricted to the tradable coordinates (the
assets eligible at close ``d``: members, or listed without a universe, with a full bar at the next
open; plus cash); the others get exactly 0. Unlike a softmax over a
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
from regime_pipeline.core.allocation import exits
from regime_pipeline.core.allocation.portfolio import Costs, trade

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

    :param open_: (T, N) daily open prices in USDT, NaN where the asset has no full bar (not
        listed, a close-only day, past its last bar).
    :param close: (T, N) daily close prices in USDT, NaN where the asset has no price. Between an
        asset's first and last close every day has a close (no holes); a last close before T - 1
        is where its data end.
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
    :param members: (T, N) True where the asset is in the universe that day; None: every asset
        with a close. A decision weighs only members with a full bar at the next open.
    :param slots: (K, S) asset index in each slot at each decision, -1 for an empty slot; None:
        slot i is asset i at every decision (S = N).
    :param asset_prob_width: with `slots`, the number of columns per asset at the start of
        `probs` (laid out asset by asset, N · width, then the market-wide columns).
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
        members: np.ndarray | None = None,
        slots: np.ndarray | None = None,
        asset_prob_width: int | None = None,
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
        self.rate = costs.rate if isinstance(costs, Costs) else float(costs)
        # Refuses a hole in an asset's closes once here instead of checking every step.
        self._marks = exits.marks(open_, close, self.rate)
        listed_close = np.isfinite(close)
        if members is not None:
            members = np.asarray(members, dtype=bool)
            if members.shape != close.shape:
                raise ValueError(f"members must be {close.shape}, got {members.shape}")
            listed_close = listed_close & members
        eligible = listed_close[days] & self._marks.tradable[days + 1]  # (K, N)
        if slots is None:
            slot_assets = np.broadcast_to(np.arange(n), (days.size, n))
            width, n_market = probs.shape[1], 0
            self._slotted = False
        else:
            slot_assets = np.asarray(slots, dtype="int64")
            if slot_assets.ndim != 2 or slot_assets.shape[0] != days.size or (slot_assets >= n).any():
                raise ValueError(f"slots must be ({days.size}, S) asset indices < {n} or -1, got {slot_assets.shape}")
            if asset_prob_width is None or probs.shape[1] < n * asset_prob_width:
                raise ValueError(f"slots need asset_prob_width with probs of at least N · width columns, got {probs.shape}")
            width, n_market = int(asset_prob_width), probs.shape[1] - n * int(asset_prob_width)
            self._slotted = True
            placed = np.zeros((days.size, n), dtype=bool)
            rows = np.nonzero(slot_assets >= 0)
            placed[rows[0], slot_assets[rows]] = True
            if (eligible & ~placed).any():
                k, i = np.argwhere(eligible & ~placed)[0]
                raise ValueError(f"asset {i} may be weighed at decision {k} but holds no slot")
        s = slot_assets.shape[1]

        self.n_assets = n
        self.n_slots = s
        self.reward_config = RewardConfig.from_config() if reward is None else reward
        self.episode_weeks = episode_weeks
        self.random_start = random_start
        self.action_scale = float(action_scale)
        self.no_trade_band = float(no_trade_band)
        self.rebalance_rate = float(rebalance_rate)
        self.decision_days = days
        # Step k trades at the open of days[k] + 1 and ends at the close of ends[k].
        self.ends = np.append(days[1:], t_days - 1)
        self._probs = np.nan_to_num(probs, nan=0.0).astype(np.float32)
        self._slot_assets = slot_assets
        self._filled = slot_assets >= 0  # (K, S)
        self._safe_slots = np.where(self._filled, slot_assets, 0)
        self._width, self._n_market = width, n_market
        self.n_probs = s * width + n_market if self._slotted else probs.shape[1]
        self._has_close = np.isfinite(close)  # (T, N) a close, member or not: a held book's start
        self._listed_days = listed_close.astype(np.float64)  # (T, N) listed (a member) at each close
        self._listed = eligible
        self._all_listed = eligible.all(axis=1)
        # Equal-weight reference log growth per step, close d -> close of the week's end (an asset
        # whose data end inside the week at its exit value).
        n_listed = self._listed.sum(axis=1)
        start_close = np.where(self._listed, np.nan_to_num(close[days]), 1.0)
        ratio = np.where(self._listed, self._marks.close_value[self.ends] / start_close, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            self._ref_growth = np.where(n_listed > 0, np.log(ratio.sum(axis=1) / np.maximum(n_listed, 1)), 0.0)

        p_low = min(0.0, float(self._probs.min()))
        p_high = max(1.0, float(self._probs.max()))
        big = np.float32(1e6)  # returns and volatility are unbounded in principle
        low = np.concatenate([np.full(self.n_probs, p_low), np.zeros(s + 1), [-1.0, -1.0, 0.0], np.zeros(s)])
        high = np.concatenate([np.full(self.n_probs, p_high), np.ones(s + 1), [big, 0.0, big], np.ones(s)])
        self.observation_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(s + 1,), dtype=np.float32)

        # Per-step constants, so that step() is a handful of array operations (no pandas, no
        # per-step allocation of index arrays).
        slot_ok = self._filled & np.take_along_axis(eligible, self._safe_slots, axis=1)
        self._keep = np.hstack([slot_ok, np.ones((days.size, 1), dtype=bool)])  # (K, S + 1) tradable slots
        self._keep_all = self._keep.all(axis=1)
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
        projection of ``scale · clip(action, -1, 1)`` over the listed assets and cash (slot i =
        asset i), before the no-trade band."""
        return self._to_assets(action, np.append(listed, True), np.arange(self.n_assets))

    def _project(self, action: np.ndarray, k: int) -> np.ndarray:
        return self._to_assets(action, self._keep[k], self._slot_assets[k])

    def _to_assets(self, action: np.ndarray, keep: np.ndarray, slot_assets: np.ndarray) -> np.ndarray:
        """Project the slots' action over the kept slots and cash, then place each slot's weight on
        its asset: (N + 1,) asset weights, cash last."""
        a = np.asarray(action, dtype="float64").reshape(-1)[keep]
        per_slot = np.zeros(keep.size)
        per_slot[keep] = project_simplex(np.minimum(np.maximum(a, -1.0), 1.0) * self.action_scale)
        if not self._slotted:  # slot i is asset i
            return per_slot
        w = np.zeros(self.n_assets + 1)
        filled = slot_assets >= 0
        w[slot_assets[filled]] = per_slot[:-1][filled]
        w[self.n_assets] = per_slot[-1]
        return w

    # -- gymnasium API -------------------------------------------------------------------------

    def _observation(self, day: int, k: int) -> np.ndarray:
        """Observation at the close of `day` (the current state's day), with the slots of decision
        `k`; see the module docstring."""
        s, p = self.n_slots, self.n_probs
        obs = self._obs
        mark = self._marks
        held = mark.close_value[day] * self._units
        sold = mark.sold[day]
        cash = self._cash + float(np.add.reduce(held[sold])) if mark.any_sold[day] else self._cash
        if self._slotted:
            k = min(k, self._slot_assets.shape[0] - 1)
            filled, assets = self._filled[k], self._safe_slots[k]
            block = self._probs[day, : self.n_assets * self._width].reshape(self.n_assets, self._width)
            obs[: s * self._width] = np.where(filled[:, None], block[assets], 0.0).reshape(-1)
            obs[s * self._width : p] = self._probs[day, self.n_assets * self._width :]
            obs[p : p + s] = np.where(filled, np.where(sold, 0.0, held)[assets], 0.0) / self._value
            obs[p + s + 4 :] = np.where(filled, self._listed_days[day][assets], 0.0)
        else:
            obs[:p] = self._probs[day]
            obs[p : p + s] = np.where(sold, 0.0, held) / self._value
            obs[p + s + 4 :] = self._listed_days[day]
        obs[p + s] = cash / self._value
        count, total, squares = 0, 0.0, 0.0
        for c, sm, q in self._recent:
            count, total, squares = count + c, total + sm, squares + q
        if count >= 2:
            variance = max(squares - total * total / count, 0.0) / (count - 1)
            vol = math.sqrt(variance * PERIODS_PER_YEAR)
        else:
            vol = 0.0
        obs[p + s + 1] = self._last_return
        obs[p + s + 2] = self._value / self._peak - 1.0
        obs[p + s + 3] = vol
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
            listed = self._has_close[day]
            if (held.shape != (n + 1,) or not np.isfinite(held).all() or (held < -1e-9).any()
                    or abs(held.sum() - 1.0) > 1e-6 or (held[:n][~listed] > 0).any()):
                raise ValueError(f"start weights must be {n + 1} long-only weights summing to 1 with nothing on an "
                                 f"asset without a close on the start day, got {held}")
            held = np.clip(held, 0.0, None) / np.clip(held, 0.0, None).sum()
            self._units = np.where(listed, held[:n] / np.where(listed, self._marks.close_value[day], 1.0), 0.0)
            self._cash = float(held[n])
        self._value = 1.0
        self._peak = 1.0
        self._last_return = 0.0
        self._recent.clear()
        return self._observation(day, start), {"start": start, "day": day}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Trade to the target of `action` at the next open, hold to the next decision close.

        info: ``target`` (N + 1,) asset weights, ``turnover``, ``cost`` (in equity units, start =
        1.0), ``daily_returns`` (n,), ``equity`` (n,) closes of the week's days, ``first_day`` (the
        index of the trade day, the first of those n days),
        ``value`` (the week's final value), ``reference_growth``.
        """
        if self._k >= self._stop:
            raise RuntimeError("step() called after the episode ended; call reset()")
        return self.step_weights(self.pending_weights(action))

    def target_weights(self, action: np.ndarray) -> np.ndarray:
        """The target asset weights (N + 1,) `action` maps to at the current decision, before the
        no-trade band: what a policy wants (an ensemble averages these)."""
        return self._project(action, self._k)

    def target_weights_batch(self, actions: np.ndarray) -> np.ndarray:
        """:meth:`target_weights` of each row of `actions` (B, S + 1) at once: (B, N + 1)."""
        k = self._k
        keep = self._keep[k]
        actions = np.asarray(actions, dtype="float64")
        a = np.clip(actions if self._keep_all[k] else actions[:, keep], -1.0, 1.0)
        a *= self.action_scale
        if self._keep_all[k] and not self._slotted:  # every slot tradable, slot i is asset i
            return project_simplex_rows(a)
        per_slot = np.zeros((a.shape[0], keep.size))
        per_slot[:, keep] = project_simplex_rows(a)
        if not self._slotted:
            return per_slot
        w = np.zeros((a.shape[0], self.n_assets + 1))
        filled = self._filled[k]
        w[:, self._slot_assets[k][filled]] = per_slot[:, :-1][:, filled]
        w[:, self.n_assets] = per_slot[:, -1]
        return w

    def current_weights(self) -> np.ndarray:
        """The (drifted) asset weights (N + 1,) held at the current decision's close, cash last (a
        holding sold at its last close counted as cash)."""
        d = int(self.decision_days[self._k])
        held = self._marks.close_value[d] * self._units
        w = np.empty(self.n_assets + 1)
        if self._marks.any_sold[d]:
            sold = self._marks.sold[d]
            w[: self.n_assets] = np.where(sold, 0.0, held)
            w[self.n_assets] = self._cash + float(np.add.reduce(held[sold]))
        else:
            w[: self.n_assets] = held
            w[self.n_assets] = self._cash
        w /= self._value
        return w

    def trade_weights(self, target: np.ndarray) -> np.ndarray:
        """What is traded for `target` (N + 1,) at the current decision: the no-trade band,
        then the rebalance rate, against the weights held at its close (which every input of
        the decision knows); see the module docstring. An asset that may not be weighed at the
        decision (no longer a member, or no full bar at the next open) is not kept by the band:
        it is sold (its weight goes to cash), as the target says."""
        if self.no_trade_band <= 0.0 and self.rebalance_rate >= 1.0:
            return target
        out = apply_no_trade_band(target, self.current_weights(), self.no_trade_band, self.rebalance_rate)
        n = self.n_assets
        if self._all_listed[self._k]:
            return out
        off = ~self._listed[self._k] & (out[:n] > 0.0)
        if off.any():
            out = out.copy()
            out[n] += float(np.add.reduce(out[:n][off]))
            out[:n][off] = 0.0
        return out

    def pending_weights(self, action: np.ndarray) -> np.ndarray:
        """The asset weights (N + 1,) `action` trades to at the current decision (band applied)."""
        return self.trade_weights(self.target_weights(action))

    def book_at_next_open(self) -> tuple[np.ndarray, float]:
        """The portfolio at the open of the next trade day, before trading: asset weights (N + 1,),
        cash last (a holding sold at its last close counted as cash), and value (start = 1.0).
        What a risk check sees before the trade."""
        t = int(self.decision_days[self._k]) + 1
        held = self._units * self._marks.open_value[t]
        gone = self._marks.sold[t - 1]
        cash = self._cash + float(np.add.reduce(held[gone]))
        held = np.where(gone, 0.0, held)
        value = cash + float(np.add.reduce(held))
        return np.append(held, cash) / value, value

    def step_weights(self, target: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """:meth:`step` with explicit target asset weights (N + 1,), long-only, summing to 1, zero
        on the assets that may not be weighed at the decision (e.g. an action's weights after risk
        limits)."""
        if self._k >= self._stop:
            raise RuntimeError("step() called after the episode ended; call reset()")
        k = self._k
        d, e = int(self.decision_days[k]), int(self.ends[k])
        t = d + 1

        # The same trade as portfolio.simulate (equal equity to ~1e-15).
        self._units, self._cash, _, turnover, cost = trade(self._units, self._cash, target, t, self._marks, self.rate)
        equity = self._marks.close_value[t : e + 1] @ self._units + self._cash  # (n_days,)
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
        obs = self._observation(e, self._k)  # e is the next decision day, or the data's last day
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
