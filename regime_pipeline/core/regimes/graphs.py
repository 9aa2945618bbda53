"""One graph per date over the universe's assets: node features, node mask and edge weights, for the cross-regime GNN.

Pure numpy/pandas (no torch, no Dagster). For each requested date d:

* nodes are the assets of ``universe().candidates`` in that fixed order (node i is always the
  same asset, so a graph's arrays line up across dates);
* ``X[d, i]`` is asset i's row of the caller's per-asset feature frame on d (already selected
  and standardised by the caller);
* ``mask[d, i]`` is True when asset i is listed on d (``configs/universe.yaml``) AND has a
  feature row on d. Masking, not imputing: a masked node's feature row and edges are exactly 0
  and the model ignores it (no aggregation, no readout);
* ``A[d, i, j]`` is a non-negative edge weight between two masked-in assets, 0 on the
  diagonal and for any pair with a masked node.

Edges (``edges=``):

``"correlation"`` (default)
    Pearson correlation of the daily log returns ``r_t = ln(close_t / close_{t-1})`` over the
    last ``window`` returns up to and including d (``r_{d-window+1} .. r_d``, i.e. closes
    ``d-window .. d``), clipped at 0. A pair needs both assets' full window (a bar on each of
    the ``window + 1`` days): otherwise, or when one asset's returns have zero variance in the
    window, the edge is 0 (as ``features.cross_features`` counts such a pair). The features
    module's masking already guarantees the full window for any asset with vol or trend
    features, so in practice every active pair has an edge.

    Negative correlations are CLIPPED to 0 rather than taken in absolute value: the target
    regime is about assets moving *together* (``avg_pairwise_corr``), and an anti-correlated
    pair is evidence of divergence, which ``|corr|`` would turn into a strong tie. Clipping
    only drops the (rare, small) negative correlations of daily crypto returns.

``"cosine"``
    Cosine similarity of the two nodes' feature vectors ``X[d, i]``, ``X[d, j]`` on d, clipped
    at 0 the same way (0 for a zero vector): the proxy the original study used. It needs no
    bars; ``bars`` is not read.

Causality: graph d reads bars dated <= d and feature rows dated d only; later data never
changes it (tested in ``regime_pipeline_tests/test_gnn_detector.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from regime_pipeline.configs import universe

EdgeKind = Literal["correlation", "cosine"]
EDGE_KINDS: tuple[str, ...] = ("correlation", "cosine")


@dataclass(frozen=True)
class Graphs:
    """A batch of per-date graphs over a fixed node order.

    :ivar X: (n_dates, n_nodes, F) float32 node features; rows of masked nodes are 0
    :ivar A: (n_dates, n_nodes, n_nodes) float32 symmetric edge weights in [0, 1]; 0 on the
        diagonal and on every pair involving a masked node
    :ivar mask: (n_dates, n_nodes) bool, True = asset listed and has features on that date
    :ivar dates: (n_dates,) object array of ``datetime.date``
    :ivar symbols: node order (``universe().candidates`` by default)
    :ivar columns: feature names, the order of X's last axis
    :ivar window: correlation window in returns (recorded also for cosine graphs)
    :ivar edges: ``"correlation"`` or ``"cosine"``
    """

    X: np.ndarray
    A: np.ndarray
    mask: np.ndarray
    dates: np.ndarray
    symbols: tuple[str, ...]
    columns: tuple[str, ...]
    window: int
    edges: str

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def select(self, keep: np.ndarray | Sequence[bool] | Sequence[int]) -> Graphs:
        """The graphs at ``keep`` (a boolean mask or integer positions over the dates)."""
        keep = np.asarray(keep)
        return Graphs(
            X=self.X[keep],
            A=self.A[keep],
            mask=self.mask[keep],
            dates=self.dates[keep],
            symbols=self.symbols,
            columns=self.columns,
            window=self.window,
            edges=self.edges,
        )

    def between(self, start: dt.date, end: dt.date) -> Graphs:
        """The graphs dated ``start <= d <= end`` (both inclusive, as configs/splits.yaml)."""
        days = _as_days(self.dates)
        return self.select((days >= np.datetime64(start, "D")) & (days <= np.datetime64(end, "D")))


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _as_days(values: object) -> np.ndarray:
    """Dates (datetime.date, Timestamp, str, datetime64) as a (n,) datetime64[D] array."""
    index = pd.DatetimeIndex(pd.to_datetime(pd.Series(np.asarray(values, dtype=object)), errors="raise"))
    if (index != index.normalize()).any():
        raise ValueError("dates must be whole days")
    return index.to_numpy().astype("datetime64[D]")


def _node_arrays(
    node_features: pd.DataFrame, columns: Sequence[str], days: np.ndarray, symbols: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows laid out on the (date, node) grid.

    :return: ``X`` (n_dates, n_nodes, F) float64, 0 where absent; ``present`` (n_dates, n_nodes) bool
    """
    missing = [c for c in ("date", "symbol", *columns) if c not in node_features.columns]
    if missing:
        raise ValueError(f"build_graphs: node_features lacks columns {missing}")
    unknown = sorted(set(node_features["symbol"]) - set(symbols))
    if unknown:
        raise ValueError(f"build_graphs: node_features has symbols outside the node order: {unknown}")
    frame_days = _as_days(node_features["date"])
    wanted = pd.Index(days)
    t_idx = wanted.get_indexer(frame_days)  # -1: a date not asked for
    s_idx = pd.Index(list(symbols)).get_indexer(node_features["symbol"].to_numpy())
    values = node_features[list(columns)].to_numpy(dtype="float64")
    keep = t_idx >= 0
    t_idx, s_idx, values = t_idx[keep], s_idx[keep], values[keep]
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        first = np.flatnonzero(bad)[0]
        raise ValueError(
            f"build_graphs: non-finite feature on {days[t_idx[first]]} for {symbols[s_idx[first]]} "
            f"(and {int(bad.sum()) - 1} more rows): features are masked, never NaN"
        )
    flat = t_idx * len(symbols) + s_idx
    if len(np.unique(flat)) != len(flat):
        raise ValueError("build_graphs: duplicate (date, symbol) rows in node_features")
    X = np.zeros((len(days), len(symbols), len(columns)))
    present = np.zeros((len(days), len(symbols)), dtype=bool)
    X[t_idx, s_idx] = values
    present[t_idx, s_idx] = True
    return X, present


def _log_return_grid(bars: pd.DataFrame, symbols: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Daily log returns on a consecutive calendar grid.

    :return: ``(days, r)``: days (T,) datetime64[D]; r (T, n_nodes) float64, NaN on a first
        listed day, after a missing bar, or where there is no bar
    """
    missing = [c for c in ("date", "symbol", "close") if c not in bars.columns]
    if missing:
        raise ValueError(f"build_graphs: bars lack columns {missing}")
    frame = bars.loc[bars["symbol"].isin(list(symbols)), ["date", "symbol", "close"]]
    if frame.empty:
        return np.empty(0, "datetime64[D]"), np.empty((0, len(symbols)))
    frame = frame.assign(date=_as_days(frame["date"]))
    if frame.duplicated(["date", "symbol"]).any():
        raise ValueError("build_graphs: duplicate (date, symbol) rows in bars")
    close = frame["close"].to_numpy(dtype="float64")
    if not (np.isfinite(close) & (close > 0)).all():
        raise ValueError("build_graphs: bars hold a non-positive or non-finite close")
    days = np.arange(frame["date"].min(), frame["date"].max() + np.timedelta64(1, "D"), dtype="datetime64[D]")
    wide = frame.pivot(index="date", columns="symbol", values="close").reindex(index=days, columns=list(symbols))
    grid = wide.to_numpy(dtype="float64")
    r = np.full_like(grid, np.nan)
    r[1:] = np.log(grid[1:] / grid[:-1])
    return days, r


def correlation_edges(bars: pd.DataFrame, days: np.ndarray, symbols: Sequence[str], window: int) -> np.ndarray:
    """Clipped Pearson correlations of daily log returns over the last `window` returns up to each day.

    Vectorised over days: the windows are gathered into a (n_dates, window, n_nodes) array and
    centred per asset (two-pass), so each day's value depends on its own window only.

    :param days: (n_dates,) datetime64[D]
    :return: (n_dates, n_nodes, n_nodes) float64 in [0, 1]; 0 on the diagonal, for a pair
        without both full windows, and for a zero-variance asset
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 returns, got {window}")
    grid_days, r = _log_return_grid(bars, symbols)
    n, S = len(days), len(symbols)
    if len(grid_days) == 0 or n == 0:
        return np.zeros((n, S, S))
    # Row of day d in the grid; windows reaching outside it read NaN (= no bar).
    pos = (days - grid_days[0]).astype(np.int64)
    rows = pos[:, None] - (window - 1) + np.arange(window)[None, :]  # (n, W)
    inside = (rows >= 0) & (rows < len(grid_days))
    win = np.where(inside[..., None], r[np.clip(rows, 0, len(grid_days) - 1)], np.nan)  # (n, W, S)
    full = np.isfinite(win).all(axis=1)  # (n, S): every return of the window present
    win = np.where(full[:, None, :], win, 0.0)
    dev = win - win.mean(axis=1, keepdims=True)
    cov = np.einsum("nwi,nwj->nij", dev, dev)
    var = np.einsum("nwi,nwi->ni", dev, dev)
    den = np.sqrt(var[:, :, None] * var[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(den > 0, cov / den, 0.0)
    ok = full[:, :, None] & full[:, None, :]
    corr = np.where(ok, np.clip(corr, 0.0, 1.0), 0.0)
    idx = np.arange(S)
    corr[:, idx, idx] = 0.0
    return corr


def cosine_edges(X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Clipped cosine similarity of node feature vectors.

    :param X: (n_dates, n_nodes, F)
    :param mask: (n_dates, n_nodes) bool
    :return: (n_dates, n_nodes, n_nodes) float64 in [0, 1]; 0 on the diagonal, for masked
        nodes and for a zero feature vector
    """
    norm = np.linalg.norm(X, axis=-1)  # (n, S)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.where(norm[..., None] > 0, X / norm[..., None], 0.0)
    sim = np.clip(np.einsum("nif,njf->nij", unit, unit), 0.0, 1.0)
    sim = sim * (mask[:, :, None] & mask[:, None, :])
    idx = np.arange(X.shape[1])
    sim[:, idx, idx] = 0.0
    return sim


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def build_graphs(
    node_features: pd.DataFrame,
    bars: pd.DataFrame | None,
    columns: Sequence[str],
    dates: Sequence[dt.date] | np.ndarray | pd.Series | pd.Index,
    window: int = 30,
    edges: EdgeKind = "correlation",
    *,
    symbols: Sequence[str] | None = None,
) -> Graphs:
    """One graph per date: node features, node mask and edge weights (see the module docstring).

    :param node_features: per-asset rows ``date, symbol, *columns`` (e.g. selected vol + trend
        features, standardised by the caller); rows on dates not in `dates` are ignored; a
        (date, symbol) appears at most once; no NaN/inf
    :param bars: daily bars with at least ``date, symbol, close``, covering ``window`` days
        before the first date (only read for ``edges="correlation"``; may be None for cosine)
    :param columns: feature columns, in the order of X's last axis
    :param dates: the graphs' dates, any order (kept as given)
    :param window: number of daily log returns in the correlation window (returns r_{d-window+1} .. r_d)
    :param edges: ``"correlation"`` or ``"cosine"``
    :param symbols: node order; default ``universe().candidates`` (the listing dates of symbols
        outside the candidates are not checked). The network is the same for any number of
        nodes: a node without a feature row on d (not a member that day) is masked out
    :return: :class:`Graphs` with X (n_dates, n_nodes, F) float32, A (n_dates, n_nodes,
        n_nodes) float32, mask (n_dates, n_nodes) bool
    """
    if edges not in EDGE_KINDS:
        raise ValueError(f"edges must be one of {EDGE_KINDS}, got {edges!r}")
    symbols = list(universe().candidates if symbols is None else symbols)
    columns = list(columns)
    if not columns:
        raise ValueError("build_graphs: no feature columns")
    days = _as_days(dates)
    if len(np.unique(days)) != len(days):
        raise ValueError("build_graphs: duplicate dates")
    X, present = _node_arrays(node_features, columns, days, symbols)

    # A node exists from its listing day; a feature row before it would be a data error, but
    # the mask does not trust the features alone.
    known = universe()
    listed = np.array(
        [np.datetime64(known[s].listed, "D") if s in known else np.datetime64("NaT") for s in symbols],
        dtype="datetime64[D]",
    )
    is_listed = np.where(np.isnat(listed)[None, :], True, days[:, None] >= listed[None, :])
    mask = present & is_listed
    X = np.where(mask[..., None], X, 0.0)

    if edges == "correlation":
        if bars is None:
            raise ValueError("build_graphs: edges='correlation' needs bars")
        A = correlation_edges(bars, days, symbols, window)
        A = A * (mask[:, :, None] & mask[:, None, :])
    else:
        A = cosine_edges(X, mask)
    return Graphs(
        X=X.astype(np.float32),
        A=A.astype(np.float32),
        mask=mask,
        dates=np.asarray(pd.DatetimeIndex(days).date, dtype=object),
        symbols=tuple(symbols),
        columns=tuple(columns),
        window=int(window),
        edges=edges,
    )
