"""Typed access to the yaml files in this folder: the one place constants are read from.

Every module that needs the universe, the split windows or a data setting imports it from
here, so a change to a yaml file is a change everywhere.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = CONFIG_DIR.parents[1]


def load_yaml(name: str) -> dict[str, Any]:
    """Parse ``configs/<name>.yaml``; raise naming the file if it is missing or malformed."""
    path = CONFIG_DIR / f"{name}.yaml"
    try:
        with path.open() as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid yaml: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


@dataclass(frozen=True)
class Asset:
    symbol: str  # Binance spot symbol, e.g. "BTCUSDT"
    base: str  # base currency, e.g. "BTC"
    quote: str  # quote currency, "USDT"
    listed: dt.date  # first UTC trading day on Binance spot


@dataclass(frozen=True)
class Universe:
    assets: tuple[Asset, ...]

    @property
    def symbols(self) -> list[str]:
        return [a.symbol for a in self.assets]

    def __getitem__(self, symbol: str) -> Asset:
        for asset in self.assets:
            if asset.symbol == symbol:
                return asset
        raise KeyError(f"unknown symbol {symbol!r}: not in configs/universe.yaml {self.symbols}")

    def __contains__(self, symbol: object) -> bool:
        return any(a.symbol == symbol for a in self.assets)

    def listing_dates(self) -> dict[str, dt.date]:
        return {a.symbol: a.listed for a in self.assets}


@dataclass(frozen=True)
class Split:
    name: str
    start: dt.date  # first day, inclusive
    end: dt.date  # last day, inclusive


@cache
def universe() -> Universe:
    raw = load_yaml("universe")
    quote = raw["quote"]
    assets = tuple(
        Asset(symbol=a["symbol"], base=a["base"], quote=quote, listed=a["listed"])
        for a in raw["assets"]
    )
    return Universe(assets=assets)


@cache
def splits() -> dict[str, Split]:
    raw = load_yaml("splits")
    result = {name: Split(name, w["start"], w["end"]) for name, w in raw.items()}
    ordered = list(result.values())
    for before, after in zip(ordered, ordered[1:]):
        if not before.end < after.start:
            raise ValueError(f"configs/splits.yaml: {before.name} overlaps {after.name}")
    return result


@cache
def data_settings() -> dict[str, Any]:
    return load_yaml("data")


@cache
def run_settings() -> dict[str, Any]:
    return load_yaml("runs")


def history_start() -> dt.date:
    return data_settings()["history_start"]


@dataclass(frozen=True)
class Gap:
    """Minutes ``[start, end)`` (naive UTC) in which the exchange made no bar."""

    start: dt.datetime
    end: dt.datetime
    note: str


@cache
def known_gaps() -> tuple[Gap, ...]:
    """The exchange's own gaps listed in ``data.yaml`` (``known_gaps``)."""
    gaps = []
    where = CONFIG_DIR / "data.yaml"
    for i, raw in enumerate(data_settings().get("known_gaps") or []):
        try:
            start, end = (dt.datetime.fromisoformat(str(raw[key])) for key in ("from", "to"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: known_gaps[{i}] needs 'from' and 'to' as 'YYYY-MM-DD HH:MM': {exc}") from exc
        if not start < end:
            raise ValueError(f"{where}: known_gaps[{i}] ends before it starts")
        gap = Gap(start, end, str(raw.get("note", "")))
        gaps.append(gap)
    return tuple(gaps)


@cache
def walk_forward() -> dict[str, Any]:
    """``configs/walk_forward.yaml``, with the origins as ints in increasing order."""
    raw = load_yaml("walk_forward")
    origins = [int(y) for y in raw["origins"]]
    if origins != sorted(set(origins)):
        raise ValueError(f"configs/walk_forward.yaml: origins must be distinct and increasing, got {origins}")
    if origins[0] - 1 <= raw["first_fit_day"].year:
        raise ValueError(f"configs/walk_forward.yaml: origin {origins[0]} leaves no fit year after first_fit_day")
    return {**raw, "origins": origins}
