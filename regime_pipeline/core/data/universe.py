"""The universe the portfolio may hold on each day, chosen from data known at that day only.

``point_in_time``: at each rebalance decision -- the close of the day before the rebalance
weekday (configs/backtest.yaml), when the weekly allocation is decided -- the `size` candidates
with the largest mean daily quote volume over the last `window` days become the members, until
the next decision. Quote volume is volume x close (USDT), the same for every asset, since the
data have no quote-volume column for all of them. Only a candidate with a full bar on each of
those `window` days qualifies: a new listing enters after `window` days of trading at the
earliest, and a candidate without a full bar on the decision day (its data ended, or it has a
close only) cannot be chosen. A member whose data end between two decisions leaves after its
last bar; its place stays empty until the next decision.

``fixed``: the configured survivors, each a member on every day it has a full bar.

The membership of day d is decided at the latest decision day s <= d from bars dated <= s:
nothing after d (nor after s) enters it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd

from regime_pipeline.configs import Universe

UNIVERSE_COLUMNS = ["date", "symbol", "quote_volume", "rank", "member", "decided"]


def lookback_days(window: int, weekday_span: int = 7) -> int:
    """Days of bars before a day d that its membership can read: the latest decision day is at
    most ``weekday_span - 1`` days before d, and its ranking reads ``window`` days ending there."""
    return window + weekday_span - 1


def is_decision_day(days: Sequence[dt.date] | np.ndarray, rebalance_weekday: int) -> np.ndarray:
    """(T,) True where the next day is the rebalance weekday (a Sunday for Monday trades)."""
    index = pd.DatetimeIndex(pd.to_datetime(pd.Series(days)))
    return np.asarray((index + pd.Timedelta(days=1)).weekday == rebalance_weekday)


def membership(
    bars: pd.DataFrame, start: dt.date, end: dt.date, universe: Universe, rebalance_weekday: int,
) -> pd.DataFrame:
    """Who is in the universe on each day of ``[start, end)``.

    :param bars: `daily_bars` rows (``date, symbol, close, volume``) of the candidates, covering
        :func:`lookback_days` before `start` (earlier or other rows are ignored)
    :return: one row per (date, symbol) with a full bar that day, columns
        :data:`UNIVERSE_COLUMNS`: ``quote_volume`` the mean daily volume x close (USDT) over the
        `window` days ending at ``decided`` (NaN where the asset had not traded all of them),
        ``rank`` its rank there among the qualified candidates (1 = largest; NA if it did not
        qualify), ``member`` whether it is in the universe that day, ``decided`` the decision
        day that membership comes from (NaT before the first decision)
    """
    window = universe.quote_volume_window_days
    first = start - dt.timedelta(days=lookback_days(window))
    frame = bars.loc[bars["symbol"].isin(universe.symbols), ["date", "symbol", "close", "volume"]]
    frame = frame.assign(date=pd.to_datetime(frame["date"]))
    frame = frame.loc[(frame["date"] >= pd.Timestamp(first)) & (frame["date"] < pd.Timestamp(end))]
    calendar = pd.date_range(first, end - dt.timedelta(days=1), freq="D")
    symbols = sorted(frame["symbol"].unique())
    if not symbols:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            UNIVERSE_COLUMNS, ("object", "object", "float64", "Int32", "bool", "object"))})
    quote = (frame["volume"] * frame["close"]).to_numpy()
    wide = pd.DataFrame({"date": frame["date"], "symbol": frame["symbol"], "qv": quote}).pivot(
        index="date", columns="symbol", values="qv").reindex(index=calendar, columns=symbols)
    qv = wide.to_numpy(dtype="float64")  # (T, S), NaN = no full bar that day
    present = np.isfinite(qv)

    # Trailing mean over `window` days, only where every one of them has a bar.
    filled = np.where(present, qv, 0.0)
    csum = np.vstack([np.zeros((1, qv.shape[1])), np.cumsum(filled, axis=0)])
    ccount = np.vstack([np.zeros((1, qv.shape[1]), dtype=np.int64), np.cumsum(present, axis=0)])
    t_idx = np.arange(qv.shape[0])
    lo = np.maximum(t_idx + 1 - window, 0)
    total = csum[t_idx + 1] - csum[lo]
    count = ccount[t_idx + 1] - ccount[lo]
    qualified = count == window
    trailing = np.where(qualified, total / window, np.nan)

    # Rank at every day (only decision days are used): largest first; the columns are sorted by
    # symbol and the sort is stable, so ties go to the first symbol.
    order = np.argsort(np.where(qualified, -trailing, np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, len(symbols) + 1)[None, :].repeat(qv.shape[0], axis=0), axis=1)
    rank = np.where(qualified, ranks, 0)

    # The decision in force on each day: the latest decision day at or before it.
    decision = is_decision_day(calendar.date, rebalance_weekday)
    last_decision = np.where(decision, t_idx, -1)
    last_decision = np.maximum.accumulate(last_decision)
    has_decision = last_decision >= 0
    s = np.where(has_decision, last_decision, 0)
    rank_then = np.where(has_decision[:, None], rank[s], 0)
    qv_then = np.where(has_decision[:, None], trailing[s], np.nan)
    if universe.mode == "point_in_time":
        member = (rank_then >= 1) & (rank_then <= universe.size) & present
    else:
        member = np.isin(np.array(symbols), list(universe.fixed))[None, :] & present

    keep = present & np.asarray(calendar >= pd.Timestamp(start))[:, None]
    t, j = np.nonzero(keep)
    decided = np.where(has_decision[t], calendar.date[s[t]], None)
    out = pd.DataFrame({
        "date": calendar.date[t],
        "symbol": np.asarray(symbols, dtype=object)[j],
        "quote_volume": qv_then[t, j],
        "rank": pd.array(np.where(rank_then[t, j] >= 1, rank_then[t, j], 0), dtype="Int32"),
        "member": member[t, j],
        "decided": decided,
    })
    out.loc[out["rank"] == 0, "rank"] = pd.NA
    return out.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


def members_by_day(universe_rows: pd.DataFrame) -> pd.DataFrame:
    """The member rows only: ``date, symbol`` (dates as ``datetime.date``)."""
    rows = universe_rows.loc[universe_rows["member"].astype(bool), ["date", "symbol"]]
    return rows.assign(date=pd.to_datetime(rows["date"]).dt.date).reset_index(drop=True)


def only_members(frame: pd.DataFrame, members: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of a per-(date, symbol) `frame` whose (date, symbol) is in `members` (``date,
    symbol``, e.g. :func:`members_by_day`); every row if `members` is None."""
    if members is None:
        return frame
    keys = pd.MultiIndex.from_arrays([pd.to_datetime(frame["date"]), frame["symbol"]])
    allowed = pd.MultiIndex.from_arrays([pd.to_datetime(members["date"]), members["symbol"]])
    return frame.loc[keys.isin(allowed)].reset_index(drop=True)


def changes(universe_rows: pd.DataFrame) -> pd.DataFrame:
    """Membership changes, one row per day on which the members differ from the day before:
    ``date, entered, left, members`` (entered/left as comma-separated bases; the first day of
    the rows lists every member as entered)."""
    members = members_by_day(universe_rows)
    by_day = members.groupby("date")["symbol"].apply(frozenset)
    days = sorted(set(pd.to_datetime(universe_rows["date"]).dt.date))
    out, previous = [], frozenset()
    for day in days:
        current = by_day.get(day, frozenset())
        if current != previous:
            out.append({
                "date": day,
                "entered": ", ".join(sorted(s.removesuffix("USDT") for s in current - previous)),
                "left": ", ".join(sorted(s.removesuffix("USDT") for s in previous - current)),
                "members": len(current),
            })
        previous = current
    return pd.DataFrame(out, columns=["date", "entered", "left", "members"])
