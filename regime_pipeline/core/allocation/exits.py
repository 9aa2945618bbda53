"""How the accounting values an asset whose data end, or that has a close but no full bar.

Every backtest, the RL environment and the weekly book share these rules (configs/backtest.yaml
``delisting_haircut``):

* **Data that end.** An asset whose last close (its last day, L) comes before the end of a
  run is sold at that close, at the close of L: each unit becomes ``close[L] · (1 - rate -
  haircut)`` of cash (the trade's fee and slippage, and a haircut for a forced sale). From the
  close of L on the holding is that cash: no price of the asset after L is read, and nothing is
  forward-filled. A delisted pair (LUNA's collapse on 2022-05-13, MATIC's migration to POL) and a
  pair whose public data end while it still traded are handled alike.
* **Close-only days.** On a day with a close but no full bar (FTT 2022-10-11..11-14 in the
  embedded data) a held asset is valued at that close and cannot be traded: a rebalance that
  falls on such a day leaves its units as they are (valued at the previous close at the open)
  and trades the rest of the book around it.

Arrays are (T days, N assets) over one run's calendar; an asset's "last day" is its last close
in the run. An asset whose last close is the run's last day trades through the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from regime_pipeline.configs import load_yaml


@cache
def delisting_haircut() -> float:
    """configs/backtest.yaml ``delisting_haircut``: fraction of the last close lost on the forced
    sale of an asset whose data end, on top of the fee and slippage (0 when absent)."""
    value = float(load_yaml("backtest").get("delisting_haircut", 0.0))
    if not 0.0 <= value < 1.0:
        raise ValueError(f"configs/backtest.yaml: delisting_haircut must be in [0, 1), got {value}")
    return value


@dataclass(frozen=True)
class Marks:
    """What an asset is worth and whether it can be traded, day by day.

    :ivar last_day: (N,) index of the asset's last close in the run (-1: no close at all)
    :ivar ends: (N,) True where the asset's data end before the run's last day
    :ivar exit_value: (N,) cash per unit from the sale at the last close, net of the fee,
        slippage and haircut (0 where the data do not end)
    :ivar open_value: (T, N) value of a unit at each open: the open; the previous close on a
        close-only day; the exit value after the last day; 0 where the asset has no price yet
    :ivar close_value: (T, N) value of a unit at each close: the close before the last day; the
        exit value from the last day's close on (where the data end); 0 before any price
    :ivar tradable: (T, N) True where the day's open can be traded (a full bar, not after the last day)
    :ivar close_only: (T, N) True on a close-only day of a live asset
    :ivar sold: (T, N) True from the close of the last day on, where the data end: the holding is cash
    :ivar open_safe: (T, N) the open where the day can be traded, 1.0 elsewhere (a divisor for
        the units bought: an untradable asset's target is 0)
    :ivar any_sold: (T,) ``sold.any(axis=1)``
    :ivar any_close_only: (T,) ``close_only.any(axis=1)``
    """

    last_day: np.ndarray
    ends: np.ndarray
    exit_value: np.ndarray
    open_value: np.ndarray
    close_value: np.ndarray
    tradable: np.ndarray
    close_only: np.ndarray
    sold: np.ndarray
    # Per-day summaries, so that a step of the environment tests a flag instead of a row.
    open_safe: np.ndarray
    any_sold: np.ndarray
    any_close_only: np.ndarray


def last_days(close: np.ndarray) -> np.ndarray:
    """(N,) index of each column's last finite close, -1 for a column with none."""
    finite = np.isfinite(close)
    last = close.shape[0] - 1 - np.argmax(finite[::-1], axis=0)
    return np.where(finite.any(axis=0), last, -1)


def marks(open_: np.ndarray, close: np.ndarray, rate: float, haircut: float | None = None) -> Marks:
    """The :class:`Marks` of a run's (T, N) opens and closes (NaN where there is no price), for
    trading costs `rate` per unit of traded notional.

    :raises ValueError: an asset with a day without a close between its first and last close
        (a hole in the data; a close-only day has a close)
    """
    open_ = np.asarray(open_, dtype="float64")
    close = np.asarray(close, dtype="float64")
    haircut = delisting_haircut() if haircut is None else float(haircut)
    t_days, n = close.shape
    has_close = np.isfinite(close)
    last = last_days(close)
    first = np.where(has_close.any(axis=0), np.argmax(has_close, axis=0), t_days)
    day = np.arange(t_days)[:, None]
    alive = (day >= first[None, :]) & (day <= last[None, :])
    hole = alive & ~has_close
    if hole.any():
        t, i = np.argwhere(hole)[0]
        raise ValueError(f"asset {i} has no close on day {t}, between its first and last close")
    ends = (last >= 0) & (last < t_days - 1)
    exit_value = np.where(ends, np.nan_to_num(close[np.maximum(last, 0), np.arange(n)]) * (1.0 - rate - haircut), 0.0)
    sold = ends[None, :] & (day >= last[None, :])
    after = ends[None, :] & (day > last[None, :])
    tradable = np.isfinite(open_) & alive
    close_only = alive & ~np.isfinite(open_)
    previous_close = np.vstack([np.full((1, n), np.nan), close[:-1]])
    open_value = np.where(tradable, open_, np.where(close_only, previous_close, 0.0))
    open_value = np.where(after, exit_value[None, :], np.nan_to_num(open_value))
    close_value = np.where(sold, exit_value[None, :], np.nan_to_num(np.where(alive, close, 0.0)))
    return Marks(last, ends, exit_value, open_value, close_value, tradable, close_only, sold,
                 open_safe=np.where(tradable, open_value, 1.0), any_sold=sold.any(axis=1),
                 any_close_only=close_only.any(axis=1))
