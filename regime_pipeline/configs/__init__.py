"""Typed access to the yaml files in this folder: the one place constants are read from.

Every module that needs the universe, the split windows or a data setting imports it from
here, so a change to a yaml file is a change everywhere.
"""

from __future__ import annotations

import datetime as dt
import os
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
    listed: dt.date  # first UTC day with a full daily bar on Binance spot
    last_bar: dt.date | None = None  # last day with a full bar; None: through the end of the data
    last_day: dt.date | None = None  # last day with a price (a close); later than last_bar only with closes-only days
    end: str | None = None  # why the data end: "delisted" or "data" (the copies end)

    def __post_init__(self) -> None:
        if self.last_day is None and self.last_bar is not None:
            object.__setattr__(self, "last_day", self.last_bar)
        if self.last_bar is not None and not (self.listed <= self.last_bar <= self.last_day):
            raise ValueError(f"configs/universe.yaml: {self.symbol} needs listed <= last_bar <= last_day")

    def trades_on(self, day: dt.date) -> bool:
        """Whether the asset has a full bar on `day` (listed, not past its last bar)."""
        return self.listed <= day and (self.last_bar is None or day <= self.last_bar)


MODES = ("fixed", "point_in_time")
UNIVERSE_ENV = "REGIME_UNIVERSE"


@dataclass(frozen=True)
class Universe:
    """The candidate assets and how the portfolio's universe is chosen from them.

    :ivar assets: every candidate, in the order of ``configs/universe.yaml``
    :ivar mode: ``point_in_time`` (the `size` largest by trailing quote volume at each
        rebalance) or ``fixed`` (the assets of `fixed`, each from its listing)
    :ivar fixed: the 13 symbols of the fixed universe
    :ivar size: members chosen at each rebalance (point_in_time)
    :ivar quote_volume_window_days: days of the trailing mean quote volume the ranking uses
    """

    assets: tuple[Asset, ...]
    mode: str = "fixed"
    fixed: tuple[str, ...] = ()
    size: int = 13
    quote_volume_window_days: int = 30

    @property
    def symbols(self) -> list[str]:
        """Every candidate's symbol (the data cover them all, whatever the mode)."""
        return [a.symbol for a in self.assets]

    @property
    def candidates(self) -> list[str]:
        """The symbols the universe is chosen from: every candidate (point_in_time), or `fixed`."""
        return list(self.fixed) if self.mode == "fixed" else self.symbols

    def __getitem__(self, symbol: str) -> Asset:
        for asset in self.assets:
            if asset.symbol == symbol:
                return asset
        raise KeyError(f"unknown symbol {symbol!r}: not in configs/universe.yaml {self.symbols}")

    def __contains__(self, symbol: object) -> bool:
        return any(a.symbol == symbol for a in self.assets)

    def listing_dates(self) -> dict[str, dt.date]:
        return {a.symbol: a.listed for a in self.assets}

    def last_bars(self) -> dict[str, dt.date]:
        """``{symbol: last day with a full bar}`` of the assets whose data end."""
        return {a.symbol: a.last_bar for a in self.assets if a.last_bar is not None}

    def trading(self, start: dt.date, end: dt.date) -> list[str]:
        """The symbols with a full bar on some day of ``[start, end)``."""
        return [a.symbol for a in self.assets if a.listed < end and (a.last_bar is None or a.last_bar >= start)]

    def with_mode(self, mode: str) -> Universe:
        """The same candidates under another `mode`."""
        if mode not in MODES:
            raise ValueError(f"universe mode must be one of {MODES}, got {mode!r}")
        return Universe(self.assets, mode, self.fixed, self.size, self.quote_volume_window_days)


@dataclass(frozen=True)
class Split:
    name: str
    start: dt.date  # first day, inclusive
    end: dt.date  # last day, inclusive


@cache
def universe() -> Universe:
    """``configs/universe.yaml``; the mode from ``$REGIME_UNIVERSE`` when it is set (read once)."""
    raw = load_yaml("universe")
    where = CONFIG_DIR / "universe.yaml"
    quote = raw["quote"]
    assets = tuple(
        Asset(symbol=a["symbol"], base=a["base"], quote=quote, listed=a["listed"], last_bar=a.get("last_bar"),
              last_day=a.get("last_day"), end=a.get("end"))
        for a in raw["assets"]
    )
    symbols = [a.symbol for a in assets]
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"{where}: a symbol is listed twice")
    fixed = tuple(raw.get("fixed") or symbols)
    unknown = [s for s in fixed if s not in symbols]
    if unknown:
        raise ValueError(f"{where}: fixed names {unknown}, which are not in assets")
    mode = os.environ.get(UNIVERSE_ENV) or raw.get("mode", "fixed")
    if mode not in MODES:
        raise ValueError(f"{where} (or ${UNIVERSE_ENV}): mode must be one of {MODES}, got {mode!r}")
    return Universe(assets, mode, fixed, int(raw.get("size", len(fixed))), int(raw.get("quote_volume_window_days", 30)))


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
