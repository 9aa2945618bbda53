"""Fixed-length, gap-free windows of daily features per asset: the inputs of the sequence detectors.

A window for ``(symbol, d)`` holds the asset's feature rows of the ``length`` consecutive
calendar days ``d - length + 1 .. d`` (day d included), oldest first. It is causal by
construction -- nothing dated after d enters it -- and it is never filled: if any of those days
has no feature row (a data gap, or the asset's first days) the window does not exist.

Shapes: ``X`` is ``(n_windows, length, n_features)`` float32; ``y`` is ``(n_windows,)`` int64
class indices; ``keys`` is a frame ``date, symbol`` naming each window by its LAST day.

Scaling is a separate, explicit step (:class:`Standardizer`, fitted on the train rows only) so
that no statistic of val/test leaks into the inputs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from regime_pipeline.configs import load_yaml

DEFAULT_LENGTH = 30


# --------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # numpy fields: compare with to_dict()
class Standardizer:
    """Per-column z-score ``(x - mean) / std`` with statistics of the TRAIN rows only.

    ``std`` is the population std (ddof=0). A constant column (std 0) gets std 1, so it maps
    to a constant 0 instead of NaN/inf.

    :param columns: feature names, in the order of the last axis of any array transformed
    :param mean: ``(n_features,)`` per-column mean (feature units)
    :param std: ``(n_features,)`` per-column std (feature units), > 0
    """

    columns: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        n = len(self.columns)
        if mean.shape != (n,) or std.shape != (n,):
            raise ValueError(
                f"Standardizer: mean {mean.shape} and std {std.shape} must both be ({n},) for {self.columns}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"Standardizer: mean must be finite and std finite and > 0, got {mean}, {std}")
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def fit(
        cls,
        features: pd.DataFrame,
        columns: Sequence[str],
        dates: tuple[dt.date, dt.date] | None = None,
    ) -> Standardizer:
        """Mean and std of `columns` over the rows of `features` dated within `dates` (inclusive).

        :param features: a feature frame (``date, symbol, <columns>``)
        :param dates: the train window ``(start, end)``; None uses every row (the caller has
            already restricted `features` to train)
        :raises ValueError: no rows in the window, or a non-finite value
        """
        _check_columns(features, columns)
        rows = features if dates is None else _in_dates(features, dates)
        if rows.empty:
            raise ValueError(f"Standardizer.fit: no feature rows in {dates}")
        values = rows[list(columns)].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("Standardizer.fit: the features hold NaN or inf")
        std = values.std(axis=0)
        return cls(tuple(columns), values.mean(axis=0), np.where(std > 0, std, 1.0))

    @overload
    def transform(self, data: pd.DataFrame) -> pd.DataFrame: ...
    @overload
    def transform(self, data: np.ndarray) -> np.ndarray: ...

    def transform(self, data: pd.DataFrame | np.ndarray) -> pd.DataFrame | np.ndarray:
        """Scale a feature frame (a copy, other columns untouched) or an array whose LAST axis
        is ``columns`` (e.g. windows ``(n, length, n_features)``; dtype kept if floating)."""
        if isinstance(data, pd.DataFrame):
            _check_columns(data, self.columns)
            out = data.copy()
            out[list(self.columns)] = (data[list(self.columns)].to_numpy(np.float64) - self.mean) / self.std
            return out
        array = np.asarray(data)
        if array.shape[-1:] != (len(self.columns),):
            raise ValueError(
                f"Standardizer.transform: last axis must be {len(self.columns)} features, got {array.shape}"
            )
        dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64
        return ((array.astype(np.float64) - self.mean) / self.std).astype(dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists of floats (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return {"columns": list(self.columns), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Standardizer:
        return cls(tuple(data["columns"]), np.asarray(data["mean"], float), np.asarray(data["std"], float))


# --------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """Feature windows and their (optional) labels.

    :param X: ``(n, length, n_features)`` float32; ``X[i, -1]`` is the row of ``keys.date[i]``
    :param y: ``(n,)`` int64 class indices of the window's last day, or None without labels
    :param keys: ``(n,)`` rows ``date (datetime.date), symbol``, sorted by (date, symbol)
    :param columns: feature names of the last axis of X
    """

    X: np.ndarray
    y: np.ndarray | None
    keys: pd.DataFrame
    columns: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.X.shape[0])


def make_windows(
    features: pd.DataFrame,
    columns: list[str],
    length: int = DEFAULT_LENGTH,
    labels: pd.DataFrame | None = None,
    label_column: str | None = None,
    dates: tuple[dt.date, dt.date] | None = None,
    *,
    classes: Sequence[str] | None = None,
) -> Windows:
    """Every gap-free window of `length` consecutive days of `features`, per symbol.

    A window ends on each (symbol, d) whose rows for days ``d - length + 1 .. d`` all exist;
    a window that would span a missing day is skipped, and no window mixes two symbols.

    :param features: ``date (datetime.date), symbol, <columns>``; one row per (date, symbol)
    :param columns: the features, in the order of the last axis of X
    :param length: days per window (the detector's look-back)
    :param labels: optional frame ``date, symbol, <label_column>``, joined on the window's LAST
        day; windows whose last day has no (or a null) label are dropped
    :param label_column: the label column, e.g. ``"vol_regime"``
    :param dates: ``(first, last)`` end dates to keep, inclusive (e.g. a split); rows before
        `first` still feed the early windows, which is causal
    :param classes: class names in index order, for string labels; by default the names of
        ``configs/regimes.yaml`` ``<kind>.names`` for a ``<kind>_regime`` column. Integer
        labels are taken as class indices.
    :return: :class:`Windows`, sorted by (date, symbol)
    :raises ValueError: a missing column, a duplicate (date, symbol), a non-finite feature,
        or a label that is not one of `classes`
    """
    if length < 1:
        raise ValueError(f"make_windows: length must be >= 1, got {length}")
    if (labels is None) != (label_column is None):
        raise ValueError("make_windows: give both labels and label_column, or neither")
    _check_columns(features, columns)
    frame = _sorted_by_symbol(features, columns)
    values = frame[list(columns)].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = frame.loc[~np.isfinite(values).all(axis=1)].iloc[0]
        raise ValueError(f"make_windows: non-finite feature on {bad['date']} for {bad['symbol']}")
    day = _day_numbers(frame["date"])
    symbols = frame["symbol"].to_numpy()

    lo, hi = (None, None) if dates is None else (_day_number(dates[0]), _day_number(dates[1]))
    blocks: list[np.ndarray] = []
    ends: list[np.ndarray] = []  # row index (in `frame`) of each window's last day
    # Rows of one symbol are contiguous and date-ascending; the loop is over symbols only.
    boundaries = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1
    for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, len(frame)]):
        if stop - start < length:
            continue
        d = day[start:stop]
        # Dates are unique and increasing, so a span of exactly length-1 days means every day
        # in between is present: the window is gap-free.
        span = d[length - 1 :] - d[: len(d) - length + 1]
        keep = span == length - 1
        if lo is not None:
            last = d[length - 1 :]
            keep &= (last >= lo) & (last <= hi)
        if not keep.any():
            continue
        # (n_rows - length + 1, n_features, length) view -> (n, length, n_features) copy.
        view = sliding_window_view(values[start:stop], length, axis=0)
        blocks.append(np.ascontiguousarray(view[keep].transpose(0, 2, 1), dtype=np.float32))
        ends.append(start + length - 1 + np.flatnonzero(keep))

    n_features = len(columns)
    X = np.concatenate(blocks) if blocks else np.empty((0, length, n_features), np.float32)
    end_rows = np.concatenate(ends) if ends else np.empty(0, np.int64)
    keys = frame.iloc[end_rows][["date", "symbol"]].reset_index(drop=True)

    y = None
    if labels is not None and label_column is not None:
        keys, X, y = _join_labels(keys, X, labels, label_column, classes)

    # Sort by (date, symbol) like every other frame of the project.
    order = np.lexsort((keys["symbol"].to_numpy(), _day_numbers(keys["date"])))
    return Windows(
        X=np.ascontiguousarray(X[order]),
        y=None if y is None else y[order],
        keys=keys.iloc[order].reset_index(drop=True),
        columns=tuple(columns),
    )


def window_for_day(
    features: pd.DataFrame, columns: list[str], symbol: str, day: dt.date, length: int = DEFAULT_LENGTH
) -> np.ndarray:
    """The one window of `symbol` ending on `day`, for a prediction on that day.

    :return: ``(length, n_features)`` float32, oldest day first; identical to the row of
        :func:`make_windows` for the same (day, symbol)
    :raises ValueError: naming the symbol if it has no feature rows at all, or naming the
        symbol and the missing dates if any of the `length` days ending on `day` has no row
    """
    _check_columns(features, columns)
    day = _as_date(day)
    rows = features.loc[features["symbol"] == symbol]
    if rows.empty:
        raise ValueError(f"window_for_day: no feature rows at all for symbol {symbol!r}")
    rows = _sorted_by_symbol(rows, columns).set_index("date")
    wanted = [day - dt.timedelta(days=length - 1 - k) for k in range(length)]
    index = pd.Index([_as_date(d) for d in rows.index])
    present = set(index)
    missing = [d for d in wanted if d not in present]
    if missing:
        shown = ", ".join(str(d) for d in missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        raise ValueError(
            f"window_for_day: {symbol} has no features on {len(missing)} of the {length} days "
            f"{wanted[0]}..{wanted[-1]}: missing {shown}"
        )
    rows.index = index
    values = rows.loc[wanted, list(columns)].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"window_for_day: non-finite feature for {symbol} in {wanted[0]}..{wanted[-1]}")
    return values.astype(np.float32)


def class_names_for(label_column: str) -> list[str]:
    """Class names in index order for a ``<kind>_regime`` column, from configs/regimes.yaml."""
    kind = label_column.removesuffix("_regime")
    config = load_yaml("regimes")
    if kind not in config or "names" not in config[kind]:
        raise ValueError(f"no class names for {label_column!r}: configs/regimes.yaml has no {kind}.names")
    return list(config[kind]["names"])


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in ("date", "symbol", *columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"feature frame lacks columns {missing}")


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return pd.Timestamp(value).date()


def _day_number(value: Any) -> int:
    """Days since 1970-01-01."""
    return int(np.datetime64(_as_date(value), "D").astype(np.int64))


def _day_numbers(dates: pd.Series) -> np.ndarray:
    """(n,) int64 days since 1970-01-01 of a column of dates (datetime.date or datetime64)."""
    return pd.to_datetime(dates).to_numpy().astype("datetime64[D]").astype(np.int64)


def _in_dates(frame: pd.DataFrame, dates: tuple[dt.date, dt.date]) -> pd.DataFrame:
    day = _day_numbers(frame["date"])
    return frame.loc[(day >= _day_number(dates[0])) & (day <= _day_number(dates[1]))]


def _sorted_by_symbol(features: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``date, symbol, <columns>`` sorted by (symbol, date); raises on a duplicate (date, symbol)."""
    frame = features[["date", "symbol", *columns]].sort_values(["symbol", "date"], kind="stable")
    dup = frame.duplicated(["symbol", "date"]).to_numpy()
    if dup.any():
        row = frame.loc[dup].iloc[0]
        raise ValueError(f"feature frame has duplicate rows for {row['symbol']} on {row['date']}")
    return frame.reset_index(drop=True)


def _join_labels(
    keys: pd.DataFrame,
    X: np.ndarray,
    labels: pd.DataFrame,
    label_column: str,
    classes: Sequence[str] | None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Attach the label of each window's last day; drop windows without one."""
    missing = [c for c in ("date", "symbol", label_column) if c not in labels.columns]
    if missing:
        raise ValueError(f"labels frame lacks columns {missing}")
    right = labels[["date", "symbol", label_column]].copy()
    right["_day"] = _day_numbers(right["date"])
    if right.duplicated(["_day", "symbol"]).any():
        raise ValueError(f"labels frame has duplicate (date, symbol) rows for {label_column}")
    left = keys.assign(_day=_day_numbers(keys["date"]), _row=np.arange(len(keys)))
    merged = left.merge(right.drop(columns="date"), on=["_day", "symbol"], how="inner")
    merged = merged.loc[merged[label_column].notna()].sort_values("_row")
    raw = merged[label_column].to_numpy()
    if len(raw) and all(isinstance(v, (int, np.integer)) for v in raw):
        y = raw.astype(np.int64)
    else:
        names = list(classes) if classes is not None else class_names_for(label_column)
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in raw if v not in index})
        if unknown:
            raise ValueError(f"{label_column}: labels {unknown} are not among the classes {names}")
        y = np.fromiter((index[v] for v in raw), dtype=np.int64, count=len(raw))
    rows = merged["_row"].to_numpy()
    return keys.iloc[rows].reset_index(drop=True), X[rows], y
