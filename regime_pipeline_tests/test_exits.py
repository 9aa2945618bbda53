"""Collapse and delisting in the accounting: LUNA held into its collapse, FTT's close-only days,
and no price of an asset read after its last bar."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from regime_pipeline.core.allocation import exits
from regime_pipeline.core.allocation.portfolio import Costs, simulate
from regime_pipeline_tests.conftest import EMBEDDED, embedded_daily_bars

COSTS = Costs(fee_bps=10, slippage_bps=5)


def _prices(symbols: list[str], first: dt.date, last: dt.date, closes: bool = True):
    """(dates, open, close) of `symbols` on every day of first..last from the embedded bars and
    close-only days (NaN where an asset has no price)."""
    bars = embedded_daily_bars(symbols)
    frames = [bars[["date", "symbol", "open", "close"]]]
    if closes:
        only = pd.read_parquet(EMBEDDED / "daily_closes.parquet")
        only["date"] = pd.to_datetime(only["date"]).dt.date
        frames.append(only.loc[only["symbol"].isin(symbols)].assign(open=np.nan))
    rows = pd.concat(frames, ignore_index=True)
    calendar = pd.date_range(first, last, freq="D").date
    wide = {c: rows.pivot(index="date", columns="symbol", values=c).reindex(index=calendar, columns=symbols).to_numpy()
            for c in ("open", "close")}
    return np.array(calendar), wide["open"], wide["close"]


def _day(dates: np.ndarray, day: dt.date) -> int:
    return int(np.flatnonzero(dates == day)[0])


def test_a_book_holding_luna_loses_what_the_data_say_and_holds_none_after():
    symbols = ["LUNAUSDT", "BTCUSDT"]
    dates, open_, close = _prices(symbols, dt.date(2022, 5, 1), dt.date(2022, 6, 30))
    # Decided at the close of 2022-05-06, traded at the open of 05-07: all in LUNA. The next
    # rebalance (decided 05-22) asks for BTC: LUNA is long gone by then.
    decisions = [_day(dates, dt.date(2022, 5, 6)), _day(dates, dt.date(2022, 5, 22))]
    targets = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    result = simulate(open_, close, targets, decisions, COSTS, dates=dates, symbols=symbols, haircut=0.0)
    may7, may13 = _day(dates, dt.date(2022, 5, 7)), _day(dates, dt.date(2022, 5, 13))
    bought = (1.0 - COSTS.rate) / open_[may7, 0]  # units of LUNA per unit of capital
    expected = bought * close[may13, 0] * (1.0 - COSTS.rate)  # sold at its last close, the sale's costs paid
    assert result.equity[may13] == pytest.approx(expected, rel=1e-12)
    assert open_[may7, 0] == 77.3 and close[may13, 0] == 0.00005
    assert result.equity[may13] < 1e-6  # -99.9999%: what the data say
    # Every day before, LUNA is valued at its own close.
    may10 = _day(dates, dt.date(2022, 5, 10))
    assert result.equity[may10] == pytest.approx(bought * close[may10, 0], rel=1e-12)
    # From its last close on, no LUNA is held: the proceeds are cash, then BTC.
    assert (result.weights[may13:, 0] == 0.0).all()
    assert result.weights[may13, 2] == pytest.approx(1.0)
    assert result.turnover[1] == pytest.approx(1.0)  # the cash bought BTC: LUNA was not sold twice


def test_no_price_of_an_asset_after_its_last_bar_is_used():
    """The value of a delisted holding after its last close is the cash of its sale: any numbers
    in the asset's columns after that day (LUNAUSDT from 2022-05-31 is Terra 2.0) change nothing."""
    symbols = ["LUNAUSDT", "BTCUSDT"]
    dates, open_, close = _prices(symbols, dt.date(2022, 5, 1), dt.date(2022, 6, 30))
    decisions = [_day(dates, dt.date(2022, 5, 1)), _day(dates, dt.date(2022, 5, 8)), _day(dates, dt.date(2022, 5, 15))]
    targets = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    ends_at = _day(dates, dt.date(2022, 5, 13))
    marks = exits.marks(open_, close, COSTS.rate, 0.0)
    assert marks.last_day[0] == ends_at and marks.ends[0] and not marks.ends[1]
    result = simulate(open_, close, targets, decisions, COSTS, dates=dates, symbols=symbols, haircut=0.0)
    # The holding's value is frozen from its last close: equity moves only with BTC.
    btc_units = result.equity[ends_at] * result.weights[ends_at, 1] / close[ends_at, 1]
    cash = result.equity[ends_at] * result.weights[ends_at, 2]
    assert result.weights[ends_at, 2] > 0.0
    np.testing.assert_allclose(result.equity[ends_at:decisions[2] + 1],
                               cash + btc_units * close[ends_at:decisions[2] + 1, 1], rtol=1e-12)
    # A price after the last close is what marks an asset alive; the accounting has none to read.
    assert np.isnan(close[ends_at + 1:, 0]).all() and np.isnan(open_[ends_at + 1:, 0]).all()


def test_a_haircut_takes_its_share_of_the_last_close():
    symbols = ["LUNAUSDT", "BTCUSDT"]
    dates, open_, close = _prices(symbols, dt.date(2022, 5, 1), dt.date(2022, 5, 31))
    decisions = [_day(dates, dt.date(2022, 5, 1))]
    targets = np.array([[1.0, 0.0, 0.0]])
    plain = simulate(open_, close, targets, decisions, COSTS, haircut=0.0)
    cut = simulate(open_, close, targets, decisions, COSTS, haircut=0.5)
    ends_at = _day(dates, dt.date(2022, 5, 13))
    assert cut.equity[ends_at - 1] == plain.equity[ends_at - 1]
    ratio = (1.0 - COSTS.rate - 0.5) / (1.0 - COSTS.rate)
    assert cut.equity[-1] == pytest.approx(plain.equity[-1] * ratio, rel=1e-12)


def test_ftt_is_valued_at_its_closes_and_never_traded_on_close_only_days():
    symbols = ["FTTUSDT", "BTCUSDT"]
    dates, open_, close = _prices(symbols, dt.date(2022, 9, 25), dt.date(2022, 11, 30))
    sundays = [d for d in dates if d.weekday() == 6 and d < dt.date(2022, 11, 28)]
    decisions = [_day(dates, d) for d in sundays]
    # Half in FTT from 2022-09-26; from 2022-10-16 on the policy wants no FTT (all BTC).
    targets = np.array([[0.5, 0.5, 0.0] if d < dt.date(2022, 10, 16) else [0.0, 1.0, 0.0] for d in sundays])
    result = simulate(open_, close, targets, decisions, COSTS, dates=dates, symbols=symbols, haircut=0.0)
    last_bar, last_day = _day(dates, dt.date(2022, 10, 10)), _day(dates, dt.date(2022, 11, 14))
    assert np.isnan(open_[last_bar + 1 : last_day + 1, 0]).all() and np.isfinite(close[last_bar + 1 : last_day + 1, 0]).all()
    # The units bought on 2022-10-10 (the last trade with a full FTT bar) are held to its last day.
    units = result.weights[:, 0] * result.equity / np.where(np.isfinite(close[:, 0]), close[:, 0], np.nan)
    held = units[last_bar + 1 : last_day]
    np.testing.assert_allclose(held, held[0], rtol=1e-12)
    # Valued at its closes: the 2022-11-08 collapse (22.08 -> 5.50) shows in the book's equity.
    nov7, nov8 = _day(dates, dt.date(2022, 11, 7)), _day(dates, dt.date(2022, 11, 8))
    ftt_value = held[0] * close[[nov7, nov8], 0]
    btc_value = result.equity[[nov7, nov8]] - ftt_value
    np.testing.assert_allclose(btc_value[1] / btc_value[0], close[nov8, 1] / close[nov7, 1], rtol=1e-9)
    # Sold at its last close (2022-11-14); nothing afterwards.
    assert (result.weights[last_day:, 0] == 0.0).all() and result.weights[last_day - 1, 0] > 0.0
    # The rebalances on close-only days traded only BTC and cash around the frozen FTT.
    frozen_trades = [k for k, d in enumerate(decisions) if last_bar < d + 1 <= last_day]
    assert frozen_trades and all(result.turnover[k] < 0.5 for k in frozen_trades)


def test_a_target_on_an_asset_without_a_full_bar_is_refused():
    symbols = ["FTTUSDT", "BTCUSDT"]
    dates, open_, close = _prices(symbols, dt.date(2022, 10, 1), dt.date(2022, 10, 31))
    decisions = [_day(dates, dt.date(2022, 10, 16))]
    with pytest.raises(ValueError, match=r"2022-10-17.*FTTUSDT, which cannot be traded"):
        simulate(open_, close, np.array([[0.5, 0.5, 0.0]]), decisions, COSTS, dates=dates, symbols=symbols)


def test_benchmarks_hold_the_members_of_the_day_and_luna_into_its_collapse():
    """Equal weight over the point-in-time members of each decision: LUNA (a member in May 2022)
    is held into its collapse, sold at its last close, and never weighed again."""
    from regime_pipeline.configs import universe
    from regime_pipeline.core.allocation.strategies import benchmark_results, wide_prices
    from regime_pipeline.core.data.universe import membership

    pit = universe().with_mode("point_in_time")
    bars = embedded_daily_bars(pit.symbols)
    closes = pd.read_parquet(EMBEDDED / "daily_closes.parquet")
    closes["date"] = pd.to_datetime(closes["date"]).dt.date
    rows = membership(bars, dt.date(2021, 10, 1), dt.date(2023, 1, 1), pit, 0)
    prices = wide_prices(bars, dt.date(2022, 12, 31), symbols=pit.symbols, closes=closes, universe_rows=rows)
    result = benchmark_results(prices, dt.date(2022, 1, 1), dt.date(2022, 12, 31))["equal_weight"]
    luna = pit.symbols.index("LUNAUSDT")
    dates = list(result.dates)
    for target, day in zip(result.targets, result.rebalance_days):
        decided = prices.dates.tolist().index(dates[day]) - 1
        weighed = np.flatnonzero(target[:-1] > 0)
        assert set(weighed) <= set(np.flatnonzero(prices.members[decided])), dates[day]
        assert len(weighed) <= 13
    may13 = dates.index(dt.date(2022, 5, 13))
    assert result.weights[may13 - 1, luna] > 0.0  # held into the collapse
    assert (result.weights[may13:, luna] == 0.0).all()
    # LUNA lost 99.99% that week: the book's loss from its last rebalance to 05-13 includes its share.
    may8, may9 = dates.index(dt.date(2022, 5, 8)), dates.index(dt.date(2022, 5, 9))
    share = result.targets[list(result.rebalance_days).index(may9), luna]
    assert share == pytest.approx(1 / 13)
    assert result.equity[may13] / result.equity[may8] < 1.0 - 0.9 * share
