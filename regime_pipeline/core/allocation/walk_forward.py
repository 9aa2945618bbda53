"""Walk-forward allocation: which days each origin year's policy may train on, be selected on and
be scored on, and the out-of-sample regime probabilities stitched into one table.

Origin Y (configs/allocation.yaml ``walk_forward``):

* its probabilities (from the regime walk-forward) are those of origin Y's detectors, which
  never saw a day of Y; the origins together give every day from the first origin on a
  probability from a model that never saw it;
* its policy trains on the days before Y - 1 that have such probabilities, from the day after
  the first one (so the first decision already has an observation) to the end of Y - 2;
* it is early-stopped on Y - 1 and scored on Y, beside the rules (calibrated on every day before
  Y) and the benchmarks.

So the first origin with a policy is two years after the first probability origin.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache

import pandas as pd

from regime_pipeline.configs import load_yaml, walk_forward

ORIGIN_COLUMN, TARGET_COLUMN = "origin", "target"


@dataclass(frozen=True)
class WalkForwardSettings:
    """The regime walk-forward's origins (configs/walk_forward.yaml ``origins``) and the policy
    origins (configs/allocation.yaml ``walk_forward``)."""

    probability_origins: tuple[int, ...]
    policy_origins: tuple[int, ...]
    target: str  # the walk-forward probabilities' target the policies observe and the rules read
    ppo_profile: str  # configs/ppo.yaml profile of the walk-forward policies unless a run says otherwise

    @classmethod
    def from_config(cls) -> WalkForwardSettings:
        return _configured()


@cache
def _configured() -> WalkForwardSettings:
    regimes = walk_forward()
    probability = tuple(regimes["origins"])
    raw = load_yaml("allocation")["walk_forward"]
    policy = tuple(int(y) for y in raw["policy_origins"])
    if raw["target"] not in regimes["targets"]:
        raise ValueError(f"configs/allocation.yaml walk_forward.target {raw['target']!r} is not a target of "
                         f"configs/walk_forward.yaml ({', '.join(regimes['targets'])})")
    unknown = [y for y in policy if y not in probability or y - 2 < probability[0]]
    if unknown:
        raise ValueError(f"configs/allocation.yaml walk_forward.policy_origins {unknown}: a policy origin must be a "
                         f"probability origin (configs/walk_forward.yaml {list(probability)}) with a training year of "
                         "probabilities before its selection year")
    return WalkForwardSettings(probability, policy, str(raw["target"]), str(raw["ppo_profile"]))


@dataclass(frozen=True)
class OriginWindows:
    """The days of one origin: ``train`` and ``select`` for the policy, ``score`` for every
    strategy, ``calibrate`` for the rules (every day before the origin year). Inclusive."""

    origin: int
    train: tuple[dt.date, dt.date]
    select: tuple[dt.date, dt.date]
    score: tuple[dt.date, dt.date]

    @property
    def calibrate(self) -> tuple[dt.date, dt.date]:
        return self.train[0], self.select[1]

    def as_dict(self) -> dict[str, list[str]]:
        return {name: [d.isoformat() for d in getattr(self, name)] for name in ("train", "select", "score", "calibrate")}


def origin_windows(origin: int, first_probability_day: dt.date, min_train_days: int = 180) -> OriginWindows:
    """The windows of `origin` when out-of-sample probabilities start on `first_probability_day`.

    :raises ValueError: when fewer than `min_train_days` days with probabilities precede the
        selection year (e.g. origin 2021 with probabilities from 2020)
    """
    train = (first_probability_day + dt.timedelta(days=1), dt.date(origin - 2, 12, 31))
    if (train[1] - train[0]).days + 1 < min_train_days:
        raise ValueError(
            f"origin {origin}: out-of-sample probabilities start on {first_probability_day}, leaving "
            f"{max(0, (train[1] - train[0]).days + 1)} training days before the selection year {origin - 1} "
            f"(at least {min_train_days} needed)"
        )
    return OriginWindows(
        origin, train, (dt.date(origin - 1, 1, 1), dt.date(origin - 1, 12, 31)), (dt.date(origin, 1, 1), dt.date(origin, 12, 31))
    )


def stitch(probabilities: pd.DataFrame, target: str | None = None, before: int | None = None) -> pd.DataFrame:
    """The walk-forward probabilities of all origins as one `regime_probabilities`-shaped table.

    :param probabilities: rows ``date, symbol, origin, [target,] vol_*, trend_*, cross_*``, origin
        Y holding days of year Y only
    :param target: with a ``target`` column holding several targets, the one to keep
    :param before: keep only the origins before this year (what an origin may know)
    :returns: ``date, symbol, vol_*, trend_*, cross_*``, one row per (date, symbol)
    :raises ValueError: a row dated outside its origin's year, a (date, symbol) twice, several
        targets without a choice, no rows
    """
    if ORIGIN_COLUMN not in probabilities.columns:
        raise ValueError(f"walk-forward probabilities need an '{ORIGIN_COLUMN}' column; have {list(probabilities.columns)}")
    frame = probabilities
    if TARGET_COLUMN in frame.columns:
        targets = sorted(frame[TARGET_COLUMN].dropna().unique())
        if target is None and len(targets) > 1:
            raise ValueError(f"walk-forward probabilities hold several targets {targets}: choose one")
        if target is not None:
            if target not in targets:
                raise ValueError(f"no walk-forward probabilities for target {target!r} (have {targets})")
            frame = frame.loc[frame[TARGET_COLUMN] == target]
    origin = frame[ORIGIN_COLUMN].astype(int)
    if before is not None:
        frame, origin = frame.loc[origin < before], origin.loc[origin < before]
    if frame.empty:
        raise ValueError("no walk-forward probabilities" + (f" before origin {before}" if before is not None else ""))
    year = pd.to_datetime(frame["date"]).dt.year
    outside = year != origin
    if outside.any():
        row = frame.loc[outside].iloc[0]
        raise ValueError(f"walk-forward probabilities: row of origin {row[ORIGIN_COLUMN]} dated {row['date']} "
                         f"({row['symbol']}): an origin's probabilities must be for days of its own year")
    twice = frame.duplicated(["date", "symbol"])
    if twice.any():
        row = frame.loc[twice].iloc[0]
        raise ValueError(f"walk-forward probabilities: ({row['date']}, {row['symbol']}) appears more than once")
    out = frame.drop(columns=[c for c in (ORIGIN_COLUMN, TARGET_COLUMN) if c in frame.columns])
    return out.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


def first_day(probabilities: pd.DataFrame) -> dt.date:
    """The first day with a probability (of any asset)."""
    return pd.Timestamp(pd.to_datetime(probabilities["date"]).min()).date()

