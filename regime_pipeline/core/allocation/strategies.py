"""Benchmark allocation strategies and the weekly backtest that runs them through `simulate`.

A strategy is a function ``f(close) -> weights``: `close` is the (d + 1, N) array of daily
closes of the N universe assets from the first day of history UP TO AND INCLUDING the decision
day d (NaN where an asset is not listed yet), and `weights` is the (N + 1,) target, cash last.
The backtest hands each strategy a slice that ends at the decision day, so a strategy cannot
see the future: causal by construction.

Rebalance schedule (:func:`decision_days`): the first decision is at the close of the day
before `start` (so the portfolio is invested from `start`'s open); after that a decision is
taken at the close of the last day before each rebalance weekday (configs/backtest.yaml,
Monday: the decision is the Sunday close, 23:59:59 UTC) and traded at that Monday's open.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property, partial

import numpy as np
import pandas as pd

from regime_pipeline.configs import load_yaml, universe
from regime_pipeline.core.allocation import exits
from regime_pipeline.core.allocation.portfolio import Costs, Result, simulate

Strategy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BacktestSettings:
    costs: Costs
    periods_per_year: int  # daily returns per year (365)
    rebalance_weekday: int  # date.weekday() of the trade day (0 = Monday)
    momentum_lookback_days: int  # momentum = close[d] / close[d - lookback] - 1
    inverse_vol_window_days: int  # number of daily log returns in the volatility estimate


@cache
def settings() -> BacktestSettings:
    """configs/backtest.yaml, typed."""
    raw = load_yaml("backtest")
    return BacktestSettings(
        costs=Costs(float(raw["costs"]["fee_bps"]), float(raw["costs"]["slippage_bps"])),
        periods_per_year=int(raw["periods_per_year"]),
        rebalance_weekday=int(raw["rebalance_weekday"]),
        momentum_lookback_days=int(raw["momentum_lookback_days"]),
        inverse_vol_window_days=int(raw["inverse_vol_window_days"]),
    )


def _cash(n: int) -> np.ndarray:
    w = np.zeros(n + 1)
    w[n] = 1.0
    return w


def btc_buy_and_hold(close: np.ndarray, btc_column: int = 0) -> np.ndarray:
    """100% in the asset at `btc_column` (BTCUSDT is first in the universe). Re-targeting 100%
    of one asset each week is a no-op (zero turnover): the position is simply held."""
    n = close.shape[1]
    if np.isnan(close[-1, btc_column]):
        return _cash(n)
    w = np.zeros(n + 1)
    w[btc_column] = 1.0
    return w


def equal_weight(close: np.ndarray) -> np.ndarray:
    """1/m in each of the m assets with a close on the decision day; all cash if none."""
    n = close.shape[1]
    listed = np.isfinite(close[-1])
    if not listed.any():
        return _cash(n)
    w = np.zeros(n + 1)
    w[:n][listed] = 1.0 / listed.sum()
    return w


def trailing_volatility(close: np.ndarray, window: int) -> np.ndarray:
    """(N,) std (ddof=1) of the last `window` daily log returns ending at the decision day;
    NaN for an asset without `window` returns (listed fewer than window + 1 days) or with zero
    volatility."""
    n = close.shape[1]
    if close.shape[0] < window + 1:
        return np.full(n, np.nan)
    recent = close[-(window + 1) :]
    logret = np.log(recent[1:] / recent[:-1])  # (window, N)
    # The sample std written out (NaN propagates to the assets with a missing close):
    # ndarray.std's generic machinery costs more than the arithmetic on a (30, 13) block.
    dev = logret - np.add.reduce(logret, axis=0) / window
    sigma = np.sqrt(np.einsum("ij,ij->j", dev, dev) / (window - 1))
    sigma[sigma == 0] = np.nan  # a constant price cannot get an infinite weight
    return sigma


def _inverse_vol_weights(sigma: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    n = sigma.shape[0]
    eligible = eligible & np.isfinite(sigma)
    if not eligible.any():
        return _cash(n)
    w = np.zeros(n + 1)
    inv = 1.0 / sigma[eligible]
    w[:n][eligible] = inv / inv.sum()
    return w


def inverse_volatility(close: np.ndarray, window: int | None = None) -> np.ndarray:
    """Weights ∝ 1/σ over the assets with a full `window` of daily log returns (σ =
    :func:`trailing_volatility`); assets with less history get 0; all cash if none qualifies."""
    window = settings().inverse_vol_window_days if window is None else window
    sigma = trailing_volatility(close, window)
    return _inverse_vol_weights(sigma, np.ones(close.shape[1], dtype=bool))


def momentum_inverse_vol(
    close: np.ndarray, lookback: int | None = None, window: int | None = None
) -> np.ndarray:
    """Inverse-volatility weights over the assets whose trailing momentum
    ``close[d] / close[d - lookback] - 1`` is > 0 (an asset without a close `lookback` days ago
    is out); all cash if no asset qualifies."""
    lookback = settings().momentum_lookback_days if lookback is None else lookback
    window = settings().inverse_vol_window_days if window is None else window
    n = close.shape[1]
    if close.shape[0] < lookback + 1:
        return _cash(n)
    with np.errstate(invalid="ignore"):
        momentum = close[-1] / close[-1 - lookback] - 1.0
        positive = np.isfinite(momentum) & (momentum > 0)
    return _inverse_vol_weights(trailing_volatility(close, window), positive)


def _reading(history_days: int, strategy: Callable[..., np.ndarray], **kwargs) -> Strategy:
    """`strategy` with `kwargs`, marked as reading only the last `history_days` closes: the
    backtest then hands it those rows instead of the whole history (same weights, no copy of
    years of closes per decision)."""
    bound = partial(strategy, **kwargs)
    bound.history_days = history_days
    return bound


def benchmark_strategies(symbols: Sequence[str]) -> dict[str, Strategy]:
    """The benchmarks, with parameters from configs/backtest.yaml, for columns `symbols`."""
    s = settings()
    window, lookback = s.inverse_vol_window_days, s.momentum_lookback_days
    return {
        "btc_buy_and_hold": _reading(1, btc_buy_and_hold, btc_column=list(symbols).index("BTCUSDT")),
        "equal_weight": _reading(1, equal_weight),
        "inverse_volatility": _reading(window + 1, inverse_volatility, window=window),
        "momentum_inverse_vol": _reading(max(lookback, window) + 1, momentum_inverse_vol, lookback=lookback,
                                         window=window),
    }


@dataclass(frozen=True)
class Prices:
    """Daily prices on a gap-free calendar: dates (T,), open/close (T, N); open NaN where the
    asset has no full bar (not listed, a close-only day, past its last bar), close NaN where it
    has no price at all.

    :ivar members: (T, N) True where the asset is in the universe on that day (the decisions
        of that day's close may weigh it); None: every asset with a full bar that day
    """

    dates: np.ndarray  # (T,) datetime.date
    symbols: tuple[str, ...]
    open: np.ndarray
    close: np.ndarray
    members: np.ndarray | None = None

    def eligible_days(self) -> np.ndarray:
        """(T, N) per row, the assets a decision at its close may weigh: members that day (every
        asset with a full bar, without a universe) that can be traded at the next open."""
        return self._eligible.copy()

    @cached_property
    def _eligible(self) -> np.ndarray:
        chosen = self.members.copy() if self.members is not None else np.isfinite(self.close) & np.isfinite(self.open)
        chosen[:-1] &= np.isfinite(self.open[1:])
        return chosen

    def seen_at(self, day: int, history: int | None = None) -> np.ndarray:
        """The closes a strategy deciding at row `day` sees: rows 0..day (the last `history`
        of them, if given), with the decision day's close hidden (NaN) for the assets it may not
        weigh."""
        first = 0 if history is None else max(0, day + 1 - history)
        seen = self.close[first : day + 1].copy()
        seen[-1, ~self._eligible[day]] = np.nan
        return seen

    def cut(self, rows: np.ndarray | slice) -> Prices:
        """The same prices on the rows `rows` of the calendar."""
        members = None if self.members is None else self.members[rows]
        return Prices(self.dates[rows], self.symbols, self.open[rows], self.close[rows], members)


def wide_prices(
    bars: pd.DataFrame, end: dt.date | str | None = None, symbols: Sequence[str] | None = None,
    closes: pd.DataFrame | None = None, universe_rows: pd.DataFrame | None = None,
) -> Prices:
    """Pivot `daily_bars` rows to (T, N) arrays over every calendar day from the first bar to
    `end` (inclusive). Columns follow the universe's candidates; a day without a bar stays NaN.

    :param closes: `daily_closes` rows (``date, symbol, close``): close-only days, open NaN
    :param universe_rows: the `universe` table: who may be weighed on each day (Prices.members);
        None: every asset with a full bar that day
    An asset's prices after its configured last day (configs/universe.yaml) are never read,
    whatever the tables hold: a symbol can name another asset later (LUNAUSDT from 2022-05-31).
    """
    symbols = tuple(universe().candidates if symbols is None else symbols)
    frame = bars.loc[bars["symbol"].isin(symbols), ["date", "symbol", "open", "close"]]
    if closes is not None and len(closes):
        only = closes.loc[closes["symbol"].isin(symbols), ["date", "symbol", "close"]].assign(open=np.nan)
        frame = pd.concat([frame, only[["date", "symbol", "open", "close"]]], ignore_index=True)
    dates = pd.to_datetime(frame["date"])
    last = dates.max() if end is None else pd.Timestamp(end)
    calendar = pd.date_range(dates.min(), last, freq="D")
    frame = frame.assign(date=dates)
    out = {}
    for column in ("open", "close"):
        wide = frame.pivot(index="date", columns="symbol", values=column)
        out[column] = wide.reindex(index=calendar, columns=list(symbols)).to_numpy(dtype="float64")
    known = universe()
    final = np.array([np.datetime64(known[s].last_day, "D") if s in known and known[s].last_day else np.datetime64("NaT")
                      for s in symbols], dtype="datetime64[D]")
    after = ~np.isnat(final)[None, :] & (calendar.to_numpy().astype("datetime64[D]")[:, None] > final[None, :])
    out["open"][after] = np.nan
    out["close"][after] = np.nan
    members = None
    if universe_rows is not None:
        rows = universe_rows.loc[universe_rows["member"].astype(bool), ["date", "symbol"]]
        rows = rows.assign(date=pd.to_datetime(rows["date"]), member=1.0)
        grid = rows.pivot(index="date", columns="symbol", values="member").reindex(index=calendar, columns=list(symbols))
        members = grid.notna().to_numpy() & np.isfinite(out["close"])
    return Prices(np.array(calendar.date), symbols, out["open"], out["close"], members)


def decision_days(dates: np.ndarray, start: dt.date, end: dt.date, weekday: int) -> np.ndarray:
    """Indices into `dates` of the decisions for a run over ``start..end``: the day before
    `start`, then every day d < end whose next day is the rebalance `weekday`."""
    index = pd.DatetimeIndex(pd.to_datetime(dates))
    first = int(index.searchsorted(pd.Timestamp(start))) - 1
    last = int(index.searchsorted(pd.Timestamp(end)))  # index of `end`
    if first < 0 or index[first + 1] != pd.Timestamp(start):
        raise ValueError(f"need a close on the day before {start} to start a run there")
    if last >= len(index) or index[last] != pd.Timestamp(end):
        raise ValueError(f"no prices up to {end}")
    candidates = np.arange(first, last)  # a decision on `end` would trade after the run
    next_weekday = (index[candidates] + pd.Timedelta(days=1)).weekday.to_numpy()
    days = candidates[next_weekday == weekday]
    return np.unique(np.concatenate([[first], days]))


def run_strategy(
    strategy: Strategy, prices: Prices, start: dt.date, end: dt.date, cost: Costs | None = None,
    days: np.ndarray | None = None, marks: exits.Marks | None = None,
) -> Result:
    """Backtest one strategy on ``start..end`` (both inclusive). The Result's row 0 is the day
    before `start` (the anchor, equity 1.0 at its close); rows 1.. are start..end.

    :param days: the run's :func:`decision_days`, and `marks` its :func:`exits.marks` (of the
        rows from the first decision day to `end`), if the caller has them already."""
    s = settings()
    cost = s.costs if cost is None else cost
    days = decision_days(prices.dates, start, end, s.rebalance_weekday) if days is None else days
    first, last = int(days[0]), int(np.flatnonzero(prices.dates == end)[0])
    # The strategy sees closes up to and including its decision day, nothing later, and the
    # decision day's close only of the assets it may weigh (the universe's members that day); one
    # built on causal per-day signals (rules.DailyRule) gives every decision's weights at once.
    if hasattr(strategy, "targets"):
        targets = strategy.targets(prices.close, days)
    else:
        history = getattr(strategy, "history_days", None)
        targets = np.stack([strategy(prices.seen_at(d, history)) for d in days])
    return simulate(
        prices.open[first : last + 1],
        prices.close[first : last + 1],
        targets,
        days - first,
        cost,
        dates=prices.dates[first : last + 1],
        symbols=prices.symbols,
        marks=marks,
    )


def _as_date(value: dt.date | str) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def run_benchmarks(
    bars: pd.DataFrame,
    start: dt.date | str,
    end: dt.date | str,
    strategies: dict[str, Strategy] | None = None,
    cost: Costs | None = None,
) -> dict[str, Result]:
    """Weekly-rebalanced backtests of the benchmarks on ``start..end`` (UTC days, inclusive),
    all with the same costs and :func:`portfolio.simulate`.

    :param bars: `daily_bars` rows (date, symbol, open, close, ...) covering at least the day
        before `start` through `end`; earlier rows are the strategies' look-back history.
    :returns: ``{name: Result}``; ``result.period_returns`` are the days start..end.
    """
    start, end = _as_date(start), _as_date(end)
    return benchmark_results(wide_prices(bars, end), start, end, strategies, cost)


def benchmark_results(
    prices: Prices, start: dt.date, end: dt.date, strategies: dict[str, Strategy] | None = None,
    cost: Costs | None = None,
) -> dict[str, Result]:
    """:func:`run_benchmarks` on prices already pivoted by :func:`wide_prices`."""
    strategies = benchmark_strategies(prices.symbols) if strategies is None else strategies
    s = settings()
    cost = s.costs if cost is None else cost
    days = decision_days(prices.dates, start, end, s.rebalance_weekday)
    rows = slice(int(days[0]), int(np.flatnonzero(prices.dates == end)[0]) + 1)
    marks = exits.marks(prices.open[rows], prices.close[rows], cost.rate)
    return {name: run_strategy(f, prices, start, end, cost, days, marks) for name, f in strategies.items()}


# --------------------------------------------------------------------------------------
# Inverse volatility on forecast volatility (configs/backtest.yaml `inverse_vol_estimate`)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InverseVolEstimate:
    """The volatility the inverse-volatility benchmark divides by (configs/backtest.yaml)."""

    source: str  # "trailing" (inverse_vol_window_days of returns) or "forecast"
    model: str  # with "forecast": a vol_forecasts column, naive | garch | har | lgbm
    horizon_days: int  # with "forecast": the forecast horizon, one of configs/forecasts.yaml's


@cache
def inverse_vol_estimate() -> InverseVolEstimate:
    """configs/backtest.yaml ``inverse_vol_estimate`` and ``inverse_vol_forecast``, typed; a
    file without them means ``trailing``."""
    raw = load_yaml("backtest")
    source = str(raw.get("inverse_vol_estimate", "trailing"))
    forecast = raw.get("inverse_vol_forecast") or {}
    if source not in ("trailing", "forecast"):
        raise ValueError(f"configs/backtest.yaml: inverse_vol_estimate must be trailing or forecast, got {source!r}")
    return InverseVolEstimate(source, str(forecast.get("model", "lgbm")), int(forecast.get("horizon_days", 7)))


def forecast_table(vol_forecasts: pd.DataFrame, model: str, horizon_days: int) -> pd.DataFrame:
    """One model's forecasts as a wide table: index the forecast dates (``datetime.date``),
    columns the symbols, values the forecast volatility (daily units) made at that day's close.

    :param vol_forecasts: rows of the `vol_forecasts` asset (``date, symbol, horizon_days``
        and one column per model)
    """
    if model not in vol_forecasts.columns:
        raise ValueError(f"no forecast column {model!r} in vol_forecasts (columns: {list(vol_forecasts.columns)})")
    rows = vol_forecasts.loc[vol_forecasts["horizon_days"] == horizon_days]
    if rows.empty:
        raise ValueError(f"vol_forecasts has no rows with horizon_days == {horizon_days}")
    rows = rows.assign(date=pd.to_datetime(rows["date"]).dt.date)
    return rows.pivot(index="date", columns="symbol", values=model).sort_index()


def inverse_vol_forecast_strategy(forecasts: pd.DataFrame, prices: Prices) -> Strategy:
    """Inverse volatility with forecast volatility: weights ∝ 1/σ̂ over the assets listed on
    the decision day d that have a positive forecast σ̂ made at d's close; all cash if none.

    :param forecasts: a wide (date x symbol) table of forecast vols, e.g. :func:`forecast_table`
        (only the ratios matter, so any unit)
    :param prices: the prices the backtest runs on (``wide_prices(bars, end)``, as
        :func:`run_benchmarks` builds them): the strategy finds the decision day from the
        length of the closes it is handed, so it must be given the same calendar
    :return: a :data:`Strategy`. An asset without a forecast on d (its vol features need ~6
        months of history, against inverse_vol_window_days for the trailing estimate) gets 0.
    :raises ValueError: when called on closes that do not match `prices` (another calendar)
    """
    sigma = forecasts.reindex(index=list(prices.dates), columns=list(prices.symbols)).to_numpy(dtype="float64")
    sigma[~(sigma > 0)] = np.nan  # zero, negative or missing: no finite inverse

    def strategy(close: np.ndarray) -> np.ndarray:
        d = close.shape[0] - 1
        seen = np.isfinite(close[-1])
        if close.shape[1] != sigma.shape[1] or d >= sigma.shape[0] or not np.array_equal(
            close[-1][seen], prices.close[d][seen]
        ):
            raise ValueError("inverse_vol_forecast_strategy: the closes do not match the prices it was built with")
        return _inverse_vol_weights(sigma[d], np.isfinite(close[-1]))

    return strategy


def backtest_benchmarks(prices: Prices, vol_forecasts: pd.DataFrame) -> dict[str, Strategy]:
    """The benchmarks an allocation backtest reports: the four of :func:`benchmark_strategies`
    with `inverse_volatility` on the configured estimate (configs/backtest.yaml
    ``inverse_vol_estimate``), plus the other estimate under its own name
    (``inverse_vol_forecast`` or ``inverse_vol_trailing``), so both are always reported."""
    strategies = benchmark_strategies(prices.symbols)
    choice = inverse_vol_estimate()
    trailing = strategies["inverse_volatility"]
    forecast = inverse_vol_forecast_strategy(forecast_table(vol_forecasts, choice.model, choice.horizon_days), prices)
    if choice.source == "trailing":
        strategies["inverse_vol_forecast"] = forecast
    else:
        strategies["inverse_volatility"], strategies["inverse_vol_trailing"] = forecast, trailing
    return strategies


def configured_inverse_volatility(prices: Prices, vol_forecasts: pd.DataFrame | None = None) -> Strategy:
    """The inverse-volatility benchmark as configs/backtest.yaml chooses: ``trailing`` gives
    exactly ``benchmark_strategies(...)["inverse_volatility"]``; ``forecast`` gives
    :func:`inverse_vol_forecast_strategy` on the configured model and horizon of `vol_forecasts`."""
    choice = inverse_vol_estimate()
    if choice.source == "trailing":
        return partial(inverse_volatility, window=settings().inverse_vol_window_days)
    if vol_forecasts is None:
        raise ValueError("configs/backtest.yaml: inverse_vol_estimate is forecast, but no vol_forecasts were given")
    return inverse_vol_forecast_strategy(forecast_table(vol_forecasts, choice.model, choice.horizon_days), prices)
