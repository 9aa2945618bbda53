"""One daily series per asset from several copies of the same Binance klines, checked against each other.

The candidate assets' daily klines come from independent public copies of Binance's data
(``data/PROVENANCE.md``), none complete on its own. :func:`merge_sources` turns the rows of all
copies into one series per asset:

1. rows known to be bad (a partial candle, a stale bar, another asset under the same symbol)
   carry the reason in ``excluded`` and are set aside first; nothing else is dropped;
2. every two sources of a symbol must agree on every day both hold: prices within
   `price_rtol`, volumes within `volume_rtol` where both have a volume (a closes-only source is
   compared on the close). The first disagreement raises :class:`DataError` naming both files,
   the symbol, the day and the field;
3. each day is taken from the highest-priority source with a full bar (they agree anyway);
   a day that only a closes-only source holds becomes a **close-only day**, kept apart from
   the bars (valued, never traded). Close-only days before an asset's first full bar are
   dropped, since nothing can hold an asset before it can be bought;
4. an asset's days, full or close-only, must run without a gap from its first full bar to its
   last day, or :class:`DataError` names the missing days.

Rows (the input) have the columns of :data:`SOURCE_COLUMNS`: ``source`` is the file, relative
to the raw-data folder; ``priority`` orders a symbol's sources (0 first); ``open, high, low,
volume`` are NaN in a closes-only source. Dates are ``datetime.date`` (UTC candle open days).
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from regime_pipeline.core.data.bars import DAILY_KLINE_COLUMNS, OHLCV_COLUMNS, PRICE_COLUMNS
from regime_pipeline.core.errors import DataError

SOURCE_COLUMNS = ["source", "priority", "symbol", "date", *OHLCV_COLUMNS, "excluded"]
CLOSE_COLUMNS = ["symbol", "date", "close"]


@dataclass(frozen=True)
class Merged:
    """What :func:`merge_sources` returns.

    :ivar bars: full daily bars ``symbol, date, open, high, low, close, volume``, sorted
    :ivar closes: close-only days ``symbol, date, close``, sorted
    :ivar origin: per merged day ``symbol, date, source, kind`` (``bar`` or ``close``): the file
        each value was taken from
    :ivar comparisons: per symbol and pair of sources, ``symbol, source_a, source_b, days``: the
        overlapping days compared (all agreed)
    """

    bars: pd.DataFrame
    closes: pd.DataFrame
    origin: pd.DataFrame
    comparisons: pd.DataFrame


def _is_close_only(frame: pd.DataFrame) -> np.ndarray:
    return frame[["open", "high", "low"]].isna().all(axis=1).to_numpy()


def _compare_pair(
    symbol: str, a: pd.DataFrame, b: pd.DataFrame, price_rtol: float, volume_rtol: float
) -> int:
    """Compare two sources of one symbol on their common days; raise on the first disagreement.
    Return the number of days compared."""
    both = a.merge(b, on="date", suffixes=("_a", "_b"))
    if both.empty:
        return 0
    for field in (*PRICE_COLUMNS, "volume"):
        x, y = both[f"{field}_a"].to_numpy(float), both[f"{field}_b"].to_numpy(float)
        present = np.isfinite(x) & np.isfinite(y)  # a closes-only source has no open/high/low/volume
        rtol = volume_rtol if field == "volume" else price_rtol
        bad = present & (np.abs(x - y) > rtol * np.maximum(np.abs(y), np.finfo(float).tiny))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            row = both.iloc[i]
            raise DataError(
                row["source_a"],
                f"{symbol} {row['date']}: {field} {float(x[i])!r} here but {float(y[i])!r} in {row['source_b']}: "
                "the sources disagree (exclude the bad row with its reason, or fix the source)",
                field=field,
            )
    return len(both)


def reconcile(rows: pd.DataFrame, *, price_rtol: float, volume_rtol: float) -> pd.DataFrame:
    """Check that every two sources of each symbol agree on every day both hold (excluded rows
    left out); return ``symbol, source_a, source_b, days`` per compared pair.

    :raises DataError: naming the first source's file, the symbol, the day, the field and the
        other file
    """
    kept = rows.loc[rows["excluded"].isna()]
    out = []
    for symbol, group in kept.groupby("symbol", sort=True):
        parts = [(name, part[["date", "source", *OHLCV_COLUMNS]]) for name, part in group.groupby("priority", sort=True)]
        for (_, a), (_, b) in itertools.combinations(parts, 2):
            days = _compare_pair(symbol, a, b, price_rtol, volume_rtol)
            if days:
                out.append((symbol, a["source"].iloc[0], b["source"].iloc[0], days))
    return pd.DataFrame(out, columns=["symbol", "source_a", "source_b", "days"])


def _require_unique(rows: pd.DataFrame) -> None:
    dup = rows.duplicated(["source", "symbol", "date"], keep=False)
    if dup.any():
        row = rows.loc[dup].iloc[0]
        raise DataError(row["source"], f"{row['symbol']} {row['date']} appears more than once", field="date")
    mixed = rows.groupby(["symbol", "priority"])["source"].nunique()
    if (mixed > 1).any():
        symbol, priority = mixed.index[int(np.argmax(mixed.to_numpy() > 1))]
        raise ValueError(f"{symbol}: several sources share priority {priority}")


def _check_contiguous(symbol: str, days: list[dt.date], what: str) -> None:
    if not days:
        return
    expected = pd.date_range(days[0], days[-1], freq="D").date
    missing = sorted(set(expected) - set(days))
    if missing:
        shown = ", ".join(str(d) for d in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            what, f"{symbol}: {len(missing)} day(s) between {days[0]} and {days[-1]} in no source: {shown}"
        )


def merge_sources(rows: pd.DataFrame, *, price_rtol: float, volume_rtol: float) -> Merged:
    """Reconcile the sources (:func:`reconcile`), then merge them into one series per symbol
    (see the module docstring).

    :param rows: frame with :data:`SOURCE_COLUMNS`
    """
    missing = [c for c in SOURCE_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"merge_sources: missing columns {missing}")
    _require_unique(rows)
    comparisons = reconcile(rows, price_rtol=price_rtol, volume_rtol=volume_rtol)
    kept = rows.loc[rows["excluded"].isna()].sort_values(["symbol", "date", "priority"], kind="stable")
    close_only = _is_close_only(kept)
    full = kept.loc[~close_only].drop_duplicates(["symbol", "date"], keep="first")
    closes = kept.loc[close_only].drop_duplicates(["symbol", "date"], keep="first")
    first_full = full.groupby("symbol")["date"].min()
    closes = closes.loc[closes["symbol"].map(first_full).notna()]
    closes = closes.loc[closes["date"] > closes["symbol"].map(first_full)]
    closes = closes.loc[~closes.set_index(["symbol", "date"]).index.isin(full.set_index(["symbol", "date"]).index)]
    for symbol, group in full.groupby("symbol"):
        days = sorted(set(group["date"]) | set(closes.loc[closes["symbol"] == symbol, "date"]))
        _check_contiguous(symbol, days, "merged sources")
    origin = pd.concat(
        [full[["symbol", "date", "source"]].assign(kind="bar"), closes[["symbol", "date", "source"]].assign(kind="close")],
        ignore_index=True,
    ).sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
    bars = full[DAILY_KLINE_COLUMNS].sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
    closes = closes[CLOSE_COLUMNS].sort_values(["symbol", "date"], kind="stable").reset_index(drop=True)
    return Merged(bars=bars, closes=closes, origin=origin, comparisons=comparisons)
