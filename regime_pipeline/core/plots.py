"""Matplotlib figures rendered as base64 PNG inside markdown, for Dagster asset metadata."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in workers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def figure_to_markdown(fig: plt.Figure, alt: str = "plot") -> str:
    """Encode `fig` as an inline PNG markdown image and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write `fig` as a PNG at `path` (parents created) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_daily_bars(bars: pd.DataFrame, title: str) -> plt.Figure:
    """Two panels: close prices rebased to 1 at each symbol's first day (log scale), and the
    source of each (symbol, day) bar: from minutes, from coarser intraday bars, from the exchange's
    daily kline, or none."""
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [3, 2]}, constrained_layout=True
    )
    closes = bars.pivot(index="date", columns="symbol", values="close").sort_index()
    for symbol in closes.columns:
        series = closes[symbol].dropna()
        if not series.empty:
            top.plot(series.index, series / series.iloc[0], lw=0.9, label=symbol.removesuffix("USDT"))
    top.set_yscale("log")
    top.set_ylabel("close / first close")
    top.set_title(title)
    top.legend(ncol=7, fontsize=7, loc="upper left")

    code = bars.assign(code=np.select([bars["source"] == "minutes", bars["source"] == "klines"], [3, 1], 2))
    grid = code.pivot(index="symbol", columns="date", values="code").fillna(0)
    cmap = matplotlib.colors.ListedColormap(["#eeeeee", "#4c72b0", "#55a868", "#dd8452"])
    bottom.imshow(grid.to_numpy(), aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=3)
    bottom.set_yticks(range(len(grid.index)), [s.removesuffix("USDT") for s in grid.index], fontsize=7)
    ticks = np.linspace(0, len(grid.columns) - 1, num=min(8, len(grid.columns))).astype(int)
    bottom.set_xticks(ticks, [str(grid.columns[i]) for i in ticks], fontsize=7)
    bottom.set_title(
        "bar source: grey = no bar (not listed, or no data), blue = daily kline, green = 3m..12h bars, "
        "orange = 1-minute bars", fontsize=8,
    )
    return fig


def plot_regime_timeline(labels: pd.DataFrame, names: dict[str, list[str]], title: str) -> plt.Figure:
    """For each regime kind, the share of listed assets in each regime per day (stacked);
    the cross regime is one band per day.

    :param labels: ``date, symbol, vol_regime, trend_regime, cross_regime``
    :param names: regime names per kind, in order, e.g. ``{"vol": ["low", ...], ...}``
    """
    kinds = list(names)
    fig, axes = plt.subplots(len(kinds), 1, figsize=(11, 2.2 * len(kinds)), sharex=True, constrained_layout=True)
    dates = pd.to_datetime(labels["date"])
    for ax, kind in zip(axes, kinds):
        column = f"{kind}_regime"
        frame = labels.assign(date=dates)
        if kind == "cross":
            frame = frame.drop_duplicates("date")
        share = pd.crosstab(frame["date"], frame[column], normalize="index").reindex(columns=names[kind], fill_value=0.0)
        colors = plt.get_cmap("RdYlBu_r" if kind == "vol" else "RdYlGn")(np.linspace(0.05, 0.95, len(names[kind])))
        ax.stackplot(share.index, share.to_numpy().T, labels=names[kind], colors=colors, step="post")
        ax.set_ylim(0, 1)
        ax.set_ylabel(kind)
        ax.legend(loc="upper left", fontsize=7, ncol=len(names[kind]), framealpha=0.8)
    axes[0].set_title(title)
    return fig


def plot_importance(importance: dict[str, pd.Series], selected: dict[str, list[str]]) -> plt.Figure:
    """Mean |SHAP| per feature for each group; selected features dark, collapsed ones light."""
    fig, axes = plt.subplots(1, len(importance), figsize=(4.2 * len(importance), 3.2), constrained_layout=True)
    for ax, (group, values) in zip(np.atleast_1d(axes), importance.items()):
        values = values.sort_values()
        colors = ["#4c72b0" if f in selected[group] else "#c6d3e6" for f in values.index]
        ax.barh(values.index, values.to_numpy(), color=colors)
        ax.set_title(f"{group}: mean |SHAP|", fontsize=9)
        ax.tick_params(labelsize=7)
    return fig


def plot_correlations(corr: dict[str, pd.DataFrame]) -> plt.Figure:
    """|Pearson correlation| between the features of each group, on train."""
    fig, axes = plt.subplots(1, len(corr), figsize=(4.2 * len(corr), 3.8), constrained_layout=True)
    for ax, (group, matrix) in zip(np.atleast_1d(axes), corr.items()):
        image = ax.imshow(matrix.abs().to_numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(matrix)), matrix.columns, rotation=70, fontsize=6)
        ax.set_yticks(range(len(matrix)), matrix.index, fontsize=6)
        ax.set_title(f"{group}: |corr|", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.7)
    return fig


def plot_training(history: list[dict], best_epoch: int, title: str) -> plt.Figure:
    """Train/val loss and val macro-F1 by epoch; the kept (best) epoch marked."""
    epochs = np.arange(1, len(history) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2), constrained_layout=True)
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    left.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    left.legend(fontsize=8)
    right.plot(epochs, [h["val_macro_f1"] for h in history], color="#55a868")
    right.set_ylabel("val macro-F1")
    for ax in (left, right):
        ax.axvline(best_epoch + 1, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
    fig.suptitle(f"{title} (kept epoch {best_epoch + 1})", fontsize=10)
    return fig


def plot_attention(by_lag: dict[str, list[float]]) -> plt.Figure:
    """Mean attention weight by lag (0 = the predicted day) for each LSTM detector."""
    fig, ax = plt.subplots(figsize=(8, 3), constrained_layout=True)
    for name, weights in by_lag.items():
        ax.plot(np.arange(len(weights)), weights, marker=".", label=name)
    ax.axhline(1 / len(next(iter(by_lag.values()))), color="grey", ls=":", lw=0.8, label="uniform")
    ax.set_xlabel("lag (days before the predicted day)")
    ax.set_ylabel("mean attention weight")
    ax.legend(fontsize=8)
    return fig


def plot_learning_curves(
    train: dict[str, list[tuple[int, float]]],
    val: dict[str, list[tuple[int, float, float]]],
    kept: dict[str, int],
    min_steps: int,
    score_name: str,
    title: str,
) -> plt.Figure:
    """Learning curves of several seeds: the training reward per rollout (left) and the
    selection score per evaluation (right: raw points, the smoothed curve as a line), with the
    earliest step a checkpoint could be kept and each seed's kept checkpoint marked.

    :param train: ``{seed: [(steps, mean reward per weekly step), ...]}``
    :param val: ``{seed: [(steps, score, smoothed score), ...]}``
    :param kept: ``{seed: steps of the kept checkpoint}``
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6), constrained_layout=True)
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(val):
        color = colors(i % 10)
        if train.get(name):
            steps, reward = zip(*train[name])
            left.plot(steps, reward, lw=0.8, color=color, label=name)
        if val[name]:
            steps, score, smooth = zip(*val[name])
            right.plot(steps, score, ".", ms=3, color=color, alpha=0.5)
            right.plot(steps, smooth, lw=1.2, color=color, label=name)
            at = dict(zip(steps, smooth)).get(kept.get(name))
            if at is not None:
                right.plot([kept[name]], [at], "*", ms=10, color=color, markeredgecolor="k", markeredgewidth=0.5)
    for ax in (left, right):
        ax.axvline(min_steps, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("environment steps (weeks)")
    left.set_ylabel("training reward per step (rollout mean)")
    right.set_ylabel(f"selection {score_name} (line: smoothed; *: kept)")
    right.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title}; dashed: no checkpoint kept before", fontsize=10)
    return fig


def plot_equity_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> plt.Figure:
    """Equity (log scale, start = 1) and drawdown from the running peak, per strategy.

    :param curves: ``{name: (dates (T,), equity (T,))}``
    """
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}, constrained_layout=True
    )
    for name, (dates, equity) in curves.items():
        x = pd.to_datetime(pd.Series(dates))
        top.plot(x, equity, lw=1.5 if name.startswith("ppo") else 1.0, label=name)
        bottom.plot(x, equity / np.maximum.accumulate(equity) - 1.0, lw=0.9)
    top.set_yscale("log")
    top.axhline(1.0, color="grey", lw=0.6)
    top.set_ylabel("equity (start = 1)")
    top.legend(fontsize=8, ncol=3)
    top.set_title(title, fontsize=10)
    bottom.set_ylabel("drawdown")
    return fig


def plot_membership(universe_rows: pd.DataFrame, title: str) -> plt.Figure:
    """Who is in the universe over time: one row per candidate (in order of listing), dark where
    it is a member, light where it trades but is not a member, blank where it has no bar; above,
    the number of members per day.

    :param universe_rows: ``date, symbol, member`` (the `universe` table)
    """
    frame = universe_rows.assign(date=pd.to_datetime(universe_rows["date"]),
                                 code=np.where(universe_rows["member"].astype(bool), 2, 1))
    first = frame.groupby("symbol")["date"].min().sort_values()
    grid = frame.pivot(index="symbol", columns="date", values="code").reindex(first.index).fillna(0)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 2.2 + 0.2 * len(grid)), sharex=False, gridspec_kw={"height_ratios": [1, 4]},
        constrained_layout=True,
    )
    counts = (grid == 2).sum(axis=0)
    top.step(grid.columns, counts.to_numpy(), where="post", color="#4c72b0")
    top.set_ylabel("members")
    top.set_xlim(grid.columns[0], grid.columns[-1])
    top.set_title(title)
    cmap = matplotlib.colors.ListedColormap(["#ffffff", "#d9e2ef", "#2f4b7c"])
    bottom.imshow(grid.to_numpy(), aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=2)
    bottom.set_yticks(range(len(grid.index)), [s.removesuffix("USDT") for s in grid.index], fontsize=7)
    ticks = np.linspace(0, len(grid.columns) - 1, num=min(9, len(grid.columns))).astype(int)
    bottom.set_xticks(ticks, [f"{grid.columns[i]:%Y-%m-%d}" for i in ticks], fontsize=7)
    bottom.set_title("dark = member, light = trading but not a member, blank = no bar", fontsize=8)
    return fig


def plot_differences(frame: pd.DataFrame, metric: str, reference: str, title: str) -> plt.Figure:
    """Each strategy's difference to `reference` per origin (and pooled) with its interval: one
    panel per strategy, a point and a bar per origin, zero marked.

    :param frame: rows ``origin, strategy, <metric>_vs_<reference>, ..._low, ..._high``
    """
    strategies = [s for s in dict.fromkeys(frame["strategy"]) if s in set(frame["strategy"])]
    origins = list(dict.fromkeys(frame["origin"]))
    fig, axes = plt.subplots(1, len(strategies), figsize=(2.0 * len(strategies) + 1, 3.2), sharey=True,
                             constrained_layout=True, squeeze=False)
    column = f"{metric}_vs_{reference}"
    for ax, strategy in zip(axes[0], strategies):
        rows = frame.loc[frame["strategy"] == strategy].set_index("origin").reindex(origins)
        x = np.arange(len(origins))
        est, low, high = rows[column].to_numpy(float), rows[f"{column}_low"].to_numpy(float), rows[f"{column}_high"].to_numpy(float)
        colors = ["#c44e52" if h < 0 else "#55a868" if lo > 0 else "#4c72b0" for lo, h in zip(low, high)]
        ax.vlines(x, low, high, colors=colors, lw=2)
        ax.scatter(x, est, color=colors, zorder=3, s=14)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(x, [str(o) for o in origins], rotation=60, fontsize=7)
        ax.set_title(strategy, fontsize=7)
    axes[0][0].set_ylabel(f"{metric} − {reference} (95% interval)")
    fig.suptitle(title, fontsize=10)
    return fig
