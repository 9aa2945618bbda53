"""Books of the trade ledger: the runs of consecutive weeks one deployed policy traded.

A policy's decision depends on the portfolio it holds, which it is given as its model book: the
same policy run with the same risk limits from the book's first week
(:func:`regime_pipeline.core.allocation.policy.decide_week`), which the ledger follows to within
execution details. When the deployed policy changes (a new walk-forward origin, a retrained
policy), the weeks from then on are a new book:

* its model book starts at the first week the new policy trades, from the positions the account
  holds at the Sunday close before it (valued at that close), not from cash: nothing is sold to
  restart, and the first decision trades from what is actually held;
* the drawdown stop carries over: the model book's earlier marks are the ledger's, scaled to
  its start value, so a stop in force or a peak from before the change binds as it would have;
* its return, drawdown and volatility observations start afresh (a new book's history).

Every week's plan in the ledger records its book (:meth:`Book.to_dict`: the policy's fingerprint
and label, the first week, the weights and value it started from), so a later run continues the
same book, and the paper ledger's tracking check compares each book's weeks with the backtest of
the policy that traded them. A week planned before books were recorded belongs to no book: the
next week starts one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from regime_pipeline.core.allocation.policy import BookStart
from regime_pipeline.core.trading.ledger import Ledger
from regime_pipeline.core.trading.orders import current_weights


def fingerprint(policy: Mapping[str, Any]) -> str:
    """A policy's identity: the sha256 of its ``to_dict()`` form as canonical JSON (16 hex
    digits). Two artifacts with the same parameters have the same fingerprint."""
    payload = json.dumps(policy, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


@dataclass(frozen=True)
class Book:
    """One policy's run of weeks in a ledger.

    :ivar policy: :func:`fingerprint` of the policy that trades it
    :ivar label: where that policy came from, for people (e.g. ``walk_forward_policy/2025``)
    :ivar first_week: the Monday of its first trade
    :ivar symbols: the N assets of `weights`
    :ivar weights: (N + 1,) the account's weights at the Sunday close before `first_week`, cash last
    :ivar value: the account's value at that close, USDT
    """

    policy: str
    label: str
    first_week: dt.date
    symbols: tuple[str, ...]
    weights: np.ndarray
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "label": self.label, "first_week": self.first_week.isoformat(),
                "symbols": list(self.symbols), "weights": [float(w) for w in self.weights], "value": float(self.value)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Book:
        return cls(str(raw["policy"]), str(raw["label"]), dt.date.fromisoformat(raw["first_week"]),
                   tuple(raw["symbols"]), np.asarray(raw["weights"], dtype="float64"), float(raw["value"]))

    def start(self, ledger: Ledger) -> BookStart | None:
        """Where its model book starts: None (cash, the default) when the ledger had nothing but
        cash before it and no earlier week; else its weights and the ledger's earlier drawdown
        marks in units of its start value."""
        marks = ledger.drawdown_history(before=self.first_week)
        if not marks and self.weights[:-1].sum() == 0.0:
            return None
        return BookStart(self.weights.copy(), tuple((m / self.value, s) for m, s in marks))


def book_of(details: Mapping[str, Any] | None) -> Book | None:
    """The book a stored plan's details record, if any."""
    raw = (details or {}).get("book")
    return Book.from_dict(raw) if raw else None


def book_for_week(
    ledger: Ledger, policy: str, label: str, week: dt.date, symbols: Sequence[str], closes: Mapping[str, float],
) -> Book:
    """The book that `week` (not planned yet) trades in under the deployed `policy`: the last
    planned week's book if that policy traded it, else a new book from `week`, starting from
    the ledger's positions and cash valued at `closes` (the Sunday close before `week`).

    :raises ValueError: a held asset without a close in `closes`
    """
    last = ledger.last_planned_week()
    if last is not None and last < week:
        current = book_of(ledger.plan(last).details)
        if current is not None and current.policy == policy:
            return current
    positions, cash = ledger.book()
    weights, value = current_weights(tuple(symbols), positions, cash, closes)
    return Book(policy, label, week, tuple(symbols), weights, value)


def book_weeks(ledger: Ledger, book: Book) -> pd.DataFrame:
    """The ledger's complete weeks of `book`: ``week, equity_after`` (USDT), oldest first."""
    history = ledger.equity_history().dropna(subset=["equity_after"])
    details = ledger.plan_details()
    keep = []
    for week in history["week"]:
        day = pd.Timestamp(week).date()
        recorded = book_of(details.get(day))
        keep.append(recorded is not None and recorded.policy == book.policy and recorded.first_week == book.first_week)
    frame = history.loc[keep, ["week", "equity_after"]].reset_index(drop=True)
    frame["week"] = [pd.Timestamp(w).date() for w in frame["week"]]
    return frame
