"""The allocation agent's inputs and its deployed form: prices and regime probabilities as
arrays, environments over a date range, and a trained actor as plain numpy that turns an
observation into target weights (for backtests and the weekly rebalance, without torch), alone
or as an ensemble of seeds (:class:`EnsemblePolicy`: the mean of the seeds' target weights).

Observation layout: see :mod:`regime_pipeline.core.allocation.env`. Its probability block (P columns)
is, for each universe asset in order, that asset's vol and trend class probabilities, then
the market-wide cross probabilities once: ``P = N · (n_vol + n_trend) + n_cross``. A day
without probabilities for an asset (not listed, or too short a history for the detectors'
windows) has zeros there, and the observation's listed mask tells the policy which is which.

On a point-in-time universe (more candidates than the universe's `size`), the observation and
the action are over `size` slots filled by each decision's members (:func:`slot_table`), so the
policy keeps one shape whoever the members are; with no more candidates than slots, slot i is
asset i (the fixed universe, as before).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from regime_pipeline.configs import universe
from regime_pipeline.core.allocation.env import AllocationEnv, RewardConfig
from regime_pipeline.core.allocation.portfolio import Result, simulate
from regime_pipeline.core.trading.risk import RiskLimits, StaleDataError, apply_limits, drawdown_state
from regime_pipeline.core.allocation.strategies import (
    Prices,
    Strategy,
    benchmark_results,
    decision_days,
    settings,
    wide_prices,
)

ASSET_PREFIXES = ("vol_", "trend_")
MARKET_PREFIX = "cross_"


@dataclass(frozen=True)
class AllocationData:
    """Everything the environment reads, on one gap-free daily calendar.

    :ivar prices: open/close (T, N) in USDT, NaN = not listed.
    :ivar probs: (T, P) regime probabilities known at each day's close, NaN = none that day.
    :ivar prob_columns: (P,) names, ``<symbol>:<column>`` per asset, then ``cross_<class>``.
    """

    prices: Prices
    probs: np.ndarray
    prob_columns: tuple[str, ...]

    def through(self, day: dt.date) -> AllocationData:
        """The same data cut after `day` (inclusive)."""
        keep = self.prices.dates <= day
        prices = self.prices.cut(keep)
        return AllocationData(prices, self.probs[keep], self.prob_columns)

    def padded(self, days: int) -> AllocationData:
        """The data with `days` placeholder days appended: opens and closes equal to the last
        close, no probabilities. For an environment whose last decision is the last real close."""
        dates = np.array([self.prices.dates[-1] + dt.timedelta(days=i) for i in range(1, days + 1)])
        last = np.repeat(self.prices.close[-1:], days, axis=0)
        members = self.prices.members
        prices = Prices(
            np.concatenate([self.prices.dates, dates]), self.prices.symbols,
            np.vstack([self.prices.open, last]), np.vstack([self.prices.close, last]),
            None if members is None else np.vstack([members, np.repeat(members[-1:], days, axis=0)]),
        )
        return AllocationData(prices, np.vstack([self.probs, np.full((days, self.probs.shape[1]), np.nan)]), self.prob_columns)

    def index(self, day: dt.date) -> int:
        """Row of `day` in the calendar."""
        hits = np.flatnonzero(self.prices.dates == day)
        if hits.size == 0:
            raise ValueError(f"{day} is outside the data ({self.prices.dates[0]}..{self.prices.dates[-1]})")
        return int(hits[0])


def allocation_data(
    bars: pd.DataFrame, probabilities: pd.DataFrame, closes: pd.DataFrame | None = None,
    universe_rows: pd.DataFrame | None = None,
) -> AllocationData:
    """Pivot `daily_bars` and `regime_probabilities` rows to arrays on the bars' calendar.

    :param bars: ``date, symbol, open, close, ...`` rows.
    :param probabilities: ``date, symbol, vol_<c>..., trend_<c>..., cross_<c>...`` rows (the
        cross columns repeat the date's market-wide values on every symbol's row).
    :param closes: `daily_closes` rows: close-only days (valued, not traded).
    :param universe_rows: the `universe` table: the members each decision may weigh; None: every
        asset with a full bar.
    """
    prices = wide_prices(bars, closes=closes, universe_rows=universe_rows)
    calendar = pd.DatetimeIndex(pd.to_datetime(prices.dates))
    asset_columns = [c for c in probabilities.columns if c.startswith(ASSET_PREFIXES)]
    market_columns = [c for c in probabilities.columns if c.startswith(MARKET_PREFIX)]
    frame = probabilities.assign(date=pd.to_datetime(probabilities["date"]))
    blocks, names = [], []
    for symbol in prices.symbols:
        rows = frame.loc[frame["symbol"] == symbol].set_index("date")[asset_columns]
        blocks.append(rows.reindex(calendar).to_numpy(dtype="float64"))
        names += [f"{symbol}:{c}" for c in asset_columns]
    market = frame.groupby("date")[market_columns].first().reindex(calendar)
    blocks.append(market.to_numpy(dtype="float64"))
    names += market_columns
    return AllocationData(prices, np.concatenate(blocks, axis=1), tuple(names))


def _window(data: AllocationData, start: dt.date, end: dt.date) -> tuple[int, int, np.ndarray]:
    """(first row, last row, decision rows relative to the first) of a run over start..end."""
    days = decision_days(data.prices.dates, start, end, settings().rebalance_weekday)
    first, last = int(days[0]), data.index(end)
    return first, last, days - first


def make_env(
    data: AllocationData,
    start: dt.date,
    end: dt.date,
    *,
    episode_weeks: int | None = None,
    random_start: bool = False,
    reward: RewardConfig | None = None,
    action_scale: float = 1.0,
    no_trade_band: float = 0.0,
    rebalance_rate: float = 1.0,
) -> AllocationEnv:
    """The environment over ``start..end`` (inclusive): the first decision is at the close of
    the day before `start`, the last step ends at the close of `end`. Nothing after `end` is
    given to it. Defaults give one deterministic episode over the whole window (evaluation)."""
    return _env(data, _window(data, start, end), episode_weeks=episode_weeks, random_start=random_start,
                reward=reward, action_scale=action_scale, no_trade_band=no_trade_band, rebalance_rate=rebalance_rate)


def slot_table(members: np.ndarray, size: int) -> np.ndarray:
    """(K, size) asset index in each slot at each decision, -1 where empty, from the (K, N)
    members of the decisions: a member keeps its slot while it stays a member (so a holding's
    weight, its probabilities and its action stay in one place), a new member takes the first free
    slot, in candidate order.

    :raises ValueError: a decision with more than `size` members
    """
    slots = np.full((members.shape[0], size), -1, dtype="int64")
    current = np.full(size, -1, dtype="int64")
    for k, row in enumerate(np.asarray(members, dtype=bool)):
        wanted = np.flatnonzero(row)
        if wanted.size > size:
            raise ValueError(f"decision {k}: {wanted.size} members for {size} slots")
        current = np.where(np.isin(current, wanted), current, -1)
        new = wanted[~np.isin(wanted, current)]
        free = np.flatnonzero(current < 0)[: new.size]
        current[free] = new
        slots[k] = current
    return slots


def _env(data: AllocationData, window: tuple[int, int, np.ndarray], **kwargs: Any) -> AllocationEnv:
    first, last, days = window
    rows = slice(first, last + 1)
    members = data.prices.members
    size = universe().size
    extra: dict[str, Any] = {}
    if members is None and len(data.prices.symbols) > size:
        raise ValueError(f"{len(data.prices.symbols)} candidate assets for {size} slots: the point-in-time universe "
                         "needs the `universe` table (allocation_data(..., universe_rows=...))")
    if members is not None:
        extra["members"] = members[rows]
        if len(data.prices.symbols) > size:
            width = sum(":" in c for c in data.prob_columns) // len(data.prices.symbols)
            extra.update(slots=slot_table(members[rows][days], size), asset_prob_width=width)
    return AllocationEnv(
        data.prices.open[rows], data.prices.close[rows], data.probs[rows], days, settings().costs, **kwargs, **extra,
    )


_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


@dataclass(frozen=True)
class AllocationPolicy:
    """A deterministic actor: standardise the observation with the training statistics, then
    an MLP to the action (the mean of the PPO policy's Gaussian).

    :ivar layers: ``[(W (out, in), b (out,)), ...]``, the last one linear (the action head).
    :ivar obs_mean, obs_var: (D,) observation statistics (VecNormalize's running mean/var).
    :ivar clip_obs: standardised observations are clipped to ±clip_obs.
    :ivar epsilon: added to the variance before the square root.
    :ivar activation: hidden-layer activation, ``tanh`` or ``relu``.
    :ivar action_scale: the environment's action multiplier it was trained with.
    :ivar no_trade_band: the environment's no-trade band it was trained with (a weight).
    :ivar rebalance_rate: the environment's rebalance rate it was trained with.
    """

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    obs_mean: np.ndarray
    obs_var: np.ndarray
    clip_obs: float
    epsilon: float
    activation: str = "tanh"
    action_scale: float = 1.0
    no_trade_band: float = 0.0
    rebalance_rate: float = 1.0

    def execution(self) -> dict[str, float]:
        """The environment settings the policy acts through (trained, backtested, traded with)."""
        return {"action_scale": self.action_scale, "no_trade_band": self.no_trade_band, "rebalance_rate": self.rebalance_rate}

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        z = (np.asarray(obs, dtype="float64") - self.obs_mean) / np.sqrt(self.obs_var + self.epsilon)
        return np.minimum(np.maximum(z, -self.clip_obs), self.clip_obs)

    def action(self, obs: np.ndarray) -> np.ndarray:
        """(D,) observation -> (N + 1,) action in [-1, 1]."""
        h = self.normalize(obs)
        act = _ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(self.layers):
            h = w @ h + b
            if i < len(self.layers) - 1:
                h = act(h)
        return np.minimum(np.maximum(h, -1.0), 1.0)

    def target(self, obs: np.ndarray, env: AllocationEnv) -> np.ndarray:
        """The weights (N + 1,) traded at `env`'s current decision for observation `obs`."""
        return env.trade_weights(env.target_weights(self.action(obs)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "actor",
            "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in self.layers],
            "obs_mean": self.obs_mean.tolist(),
            "obs_var": self.obs_var.tolist(),
            "clip_obs": self.clip_obs,
            "epsilon": self.epsilon,
            "activation": self.activation,
            "action_scale": self.action_scale,
            "no_trade_band": self.no_trade_band,
            "rebalance_rate": self.rebalance_rate,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AllocationPolicy:
        layers = tuple(
            (np.asarray(layer["weight"], dtype="float64"), np.asarray(layer["bias"], dtype="float64"))
            for layer in raw["layers"]
        )
        return cls(
            layers=layers,
            obs_mean=np.asarray(raw["obs_mean"], dtype="float64"),
            obs_var=np.asarray(raw["obs_var"], dtype="float64"),
            clip_obs=float(raw["clip_obs"]),
            epsilon=float(raw["epsilon"]),
            activation=str(raw["activation"]),
            action_scale=float(raw["action_scale"]),
            no_trade_band=float(raw.get("no_trade_band", 0.0)),
            rebalance_rate=float(raw.get("rebalance_rate", 1.0)),
        )


@dataclass(frozen=True)
class EnsemblePolicy:
    """Several actors (one per training seed) deployed as one: at each decision every member
    maps the same observation (the ensemble's own book) to its target weights, and the ensemble
    trades the mean of those targets, through the no-trade band once. Averaging weights, not
    actions: the simplex projection is not linear, and the mean of valid weights is valid.

    The members' forward passes run as one batched computation (stacked layers), so an
    ensemble of 10 costs about as much per decision as a single actor.

    :ivar members: actors with the same architecture, action scale and no-trade band.
    """

    members: tuple[AllocationPolicy, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        first = self.members[0]
        for i, m in enumerate(self.members[1:], start=1):
            same = (m.activation == first.activation and m.execution() == first.execution()
                    and m.clip_obs == first.clip_obs
                    and [w.shape for w, _ in m.layers] == [w.shape for w, _ in first.layers])
            if not same:
                raise ValueError(f"ensemble member {i} differs from member 0 in architecture, execution settings or clipping")
        # Stacked parameters: (S, in, out) weights (transposed: a row vector times a contiguous
        # matrix is the faster batched product), (S, 1, out) biases, (S, 1, D) statistics.
        layers = range(len(first.layers))
        object.__setattr__(self, "_weights", [np.ascontiguousarray(np.stack([m.layers[j][0].T for m in self.members]))
                                              for j in layers])
        object.__setattr__(self, "_biases", [np.stack([m.layers[j][1] for m in self.members])[:, None, :] for j in layers])
        object.__setattr__(self, "_mean", np.stack([m.obs_mean for m in self.members])[:, None, :])
        object.__setattr__(self, "_scale", np.sqrt(np.stack([m.obs_var + m.epsilon for m in self.members]))[:, None, :])

    def execution(self) -> dict[str, float]:
        return self.members[0].execution()

    def actions(self, obs: np.ndarray) -> np.ndarray:
        """(D,) observation -> (S, N + 1) the members' actions (each as :meth:`AllocationPolicy.action`)."""
        clip = self.members[0].clip_obs
        h = np.subtract(np.asarray(obs, dtype="float64"), self._mean)
        h /= self._scale
        np.clip(h, -clip, clip, out=h)
        act = _ACTIVATIONS[self.members[0].activation]
        last = len(self._weights) - 1
        for j, (w, b) in enumerate(zip(self._weights, self._biases)):
            h = np.matmul(h, w)
            h += b
            if j < last:
                h = act(h)
        return np.clip(h[:, 0, :], -1.0, 1.0)

    def member_targets(self, obs: np.ndarray, env: AllocationEnv) -> np.ndarray:
        """(S, N + 1) each member's target weights at `env`'s current decision (before the band)."""
        return env.target_weights_batch(self.actions(obs))

    def target(self, obs: np.ndarray, env: AllocationEnv) -> np.ndarray:
        """The mean of the members' targets, through the no-trade band: the weights traded."""
        targets = self.member_targets(obs, env)
        return env.trade_weights(np.add.reduce(targets, axis=0) / targets.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "ensemble", "members": [m.to_dict() for m in self.members]}


Policy = AllocationPolicy | EnsemblePolicy


def load_policy(raw: Mapping[str, Any]) -> Policy:
    """A policy from its ``to_dict()`` form: an ensemble or a single actor."""
    if raw.get("kind") == "ensemble":
        return EnsemblePolicy(tuple(AllocationPolicy.from_dict(m) for m in raw["members"]))
    return AllocationPolicy.from_dict(raw)


def policy_targets(policy: Policy, env: AllocationEnv, limits: RiskLimits | None = None) -> np.ndarray:
    """Run `policy` through one deterministic episode of `env` from its first decision to the
    end (through the risk `limits`, if given); return the (K, N + 1) target weights traded."""
    return _run(policy, env, limits, env.decision_days.size)[0]


def mean_reward(policy: Policy, data: AllocationData, start: dt.date, end: dt.date) -> float:
    """The policy's mean weekly reward (the environment's, configs/backtest.yaml) over one
    deterministic run of ``start..end`` from cash."""
    env = _env(data, _window(data, start, end), episode_weeks=None, **policy.execution())
    obs, _ = env.reset(options={"start": 0})
    total, steps, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step_weights(policy.target(obs, env))
        total, steps, done = total + reward, steps + 1, terminated or truncated
    return total / steps


@dataclass(frozen=True)
class BookStart:
    """What a model book starts from at the close before its first trade, when it does not
    start from cash: a book that continues an account's positions under a new policy.

    :ivar weights: (N + 1,) weights held at that close, cash last (value 1.0)
    :ivar marks: the drawdown stop's earlier weekly marks ``(equity before trading, stopped)``,
        oldest first, in units of the value at that close: the stop's state carries over
    """

    weights: np.ndarray
    marks: tuple[tuple[float, bool], ...] = ()


def backtest_policy(
    policy: Policy, data: AllocationData, start: dt.date, end: dt.date, limits: RiskLimits | None = None,
    book: BookStart | None = None,
) -> Result:
    """The policy's weekly run over ``start..end`` through :func:`portfolio.simulate`, the same
    accounting and costs as the benchmarks (:func:`strategies.run_strategy`): row 0 is the day
    before `start`, all cash at its close unless `book` says what is held there. With `limits`,
    every target goes through the risk limits first, as the weekly rebalance applies them
    (:func:`risk.apply_limits` against the book at the trade's open, the drawdown stop on the
    weekly marks before trading), and the policy observes the limited portfolio it actually
    holds."""
    first, last, days = window = _window(data, start, end)
    env = _env(data, window, episode_weeks=None, **policy.execution())
    targets = _run(policy, env, limits, env.decision_days.size, book)[0]
    rows = slice(first, last + 1)
    return simulate(
        data.prices.open[rows], data.prices.close[rows], targets, days, settings().costs,
        dates=data.prices.dates[rows], symbols=data.prices.symbols, initial=None if book is None else book.weights,
    )


def _run(
    policy: Policy, env: AllocationEnv, limits: RiskLimits | None, steps: int, book: BookStart | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Step `env` from its first decision for `steps` weekly decisions with `policy` (and the
    risk limits), from cash or from `book`; return the (steps, N + 1) targets traded and the
    observation after them."""
    obs, _ = env.reset(options={"start": 0, "weights": None if book is None else book.weights})
    marks: list[tuple[float, bool]] = [] if book is None else list(book.marks)
    targets = []
    for _ in range(steps):
        weights = policy.target(obs, env)
        if limits is not None:
            current, mark = env.book_at_next_open()
            stop = drawdown_state(marks, mark, limits)
            weights = apply_limits(weights, current, limits, drawdown=stop).weights
            marks.append((mark, stop.stop))
        obs, _, _, _, info = env.step_weights(weights)
        targets.append(info["target"])
    return (np.stack(targets) if targets else np.zeros((0, env.n_assets + 1))), obs


@dataclass(frozen=True)
class WeekDecision:
    """The policy's target for one Monday week, decided at the close of the Sunday before.

    :ivar week: the Monday the trade happens at
    :ivar data_through: the last day of prices and probabilities the decision used
    :ivar target: (N + 1,) weights, cash last, the policy's trade (its no-trade band applied),
        before the risk limits
    :ivar observation: the policy's input
    """

    week: dt.date
    data_through: dt.date
    target: np.ndarray
    observation: np.ndarray


def decide_week(
    policy: Policy, data: AllocationData, first_week: dt.date, week: dt.date, limits: RiskLimits,
    book: BookStart | None = None,
) -> WeekDecision:
    """The target for `week` of a book that started trading at `first_week` (both Mondays),
    from cash or from what `book` says it held at the Sunday close before `first_week`.

    The policy's portfolio state (weights, last return, drawdown, volatility) is that of its
    model book: the risk-limited run of the same policy from `first_week`
    (:func:`backtest_policy` with `limits` and `book`), which the paper ledger tracks up to
    execution details. Only data through ``week - 1`` (the Sunday close) enter; anything later
    in `data` is dropped first.
    """
    sunday = week - dt.timedelta(days=1)
    if first_week > week:
        raise ValueError(f"the book starts on {first_week}, after the week {week}")
    known = data.through(sunday)
    if known.prices.dates[-1] != sunday:
        raise StaleDataError(
            f"refusing to decide the week of {week}: prices end on {known.prices.dates[-1]}, "
            f"the decision needs the close of {sunday}"
        )
    market = [i for i, c in enumerate(known.prob_columns) if c.startswith(MARKET_PREFIX)]
    if not np.isfinite(known.probs[-1, market]).all():  # the probabilities were not computed for Sunday
        raise StaleDataError(f"refusing to decide the week of {week}: no regime probabilities for {sunday}")
    # One placeholder day after Sunday (its prices = Sunday's closes) so the Sunday close is a
    # decision of the environment; the placeholder is never observed: the decision is made at
    # Sunday's close and nothing is stepped past it.
    padded = known.padded(1)
    window = _window(padded, first_week, week)
    env = _env(padded, window, episode_weeks=None, **policy.execution())
    _, obs = _run(policy, env, limits, env.decision_days.size - 1, book)
    target = policy.target(obs, env)
    return WeekDecision(week, sunday, target, obs)


def compare(
    data: AllocationData, policies: Mapping[str, Policy], start: dt.date, end: dt.date,
    benchmarks: Mapping[str, Strategy] | None = None,
) -> dict[str, Result]:
    """Backtests of `policies` and of `benchmarks` (default: the four of
    :func:`strategies.benchmark_strategies`) over ``start..end``, all on the same prices,
    decision days, accounting and costs: ``{name: Result}``, policies first."""
    results = {name: backtest_policy(policy, data, start, end) for name, policy in policies.items()}
    results.update(benchmark_results(data.prices, start, end, None if benchmarks is None else dict(benchmarks)))
    return results


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, dtype="float64")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def regimes_on(data: AllocationData, day: dt.date) -> tuple[pd.DataFrame, str]:
    """The most probable vol and trend regime of each asset on `day`, and the market's cross
    regime: ``(frame[symbol, vol, trend], cross)``; assets without probabilities are left out."""
    t = data.index(day)
    probs = dict(zip(data.prob_columns, data.probs[t]))
    rows = []
    for symbol in data.prices.symbols:
        row = {"symbol": symbol}
        for kind in ("vol", "trend"):
            cols = {c.split(":", 1)[1]: p for c, p in probs.items() if c.startswith(f"{symbol}:{kind}_")}
            if not cols or not all(np.isfinite(list(cols.values()))):
                break
            best = max(cols, key=cols.get)
            row[kind] = f"{best.removeprefix(kind + '_')} ({cols[best]:.2f})"
        else:
            rows.append(row)
    market = {c: p for c, p in probs.items() if c.startswith(MARKET_PREFIX) and np.isfinite(p)}
    cross = max(market, key=market.get).removeprefix(MARKET_PREFIX) if market else "unknown"
    return pd.DataFrame(rows, columns=["symbol", "vol", "trend"]), cross
