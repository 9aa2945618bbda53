"""Walk-forward regime detection: per-origin windows, labelers, targets, detectors and probabilities.

Origin Y (``configs/walk_forward.yaml``): every fitted thing -- GARCH parameters (hence
``garch_sigma``), scalers, HMMs, jump models, target thresholds, baselines and detectors -- is
fitted on the target days ``first_fit_day .. fit_end``, with ``fit_end = (Y-1)-01-01 - 1 - purge``
and ``purge`` = the detectors' look-back + the longest label horizon; detectors are early-stopped
on the days of Y-1 whose label horizon ends in Y-1; and the models predict the days of Y only,
from inputs that end on the predicted day. So every day from the first origin on gets a
probability from a model that saw neither it nor its label horizon.

Targets per kind (``vol``, ``trend``, ``cross``):

* ``same_day``: the study's labels -- the origin's HMM Viterbi states (decoded inside each
  window: hindsight, targets only) and the cross thresholds on the day's correlation;
* ``forward``: the regime of the coming days (realized vol of d+1..d+7 against the vol HMM's
  state cuts; the quartile of the fit window's 28-day forward returns; the mean pairwise
  correlation of d+1..d+30 against the cross thresholds);
* ``jump``: the jump model's states (vol and trend), the second labeler.

Everything here is plain pandas/numpy/torch; the assets in ``assets/walk_forward.py`` wire it up.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from regime_pipeline.configs import Split, universe, walk_forward
from regime_pipeline.core.data.universe import only_members
from regime_pipeline.core.features import daily as F
from regime_pipeline.core.paths import storage_path
from regime_pipeline.core.regimes import labels as regimes
from regime_pipeline.core.regimes.hmm import RegimeHMM
from regime_pipeline.core.regimes.jump import JumpLabeler
from regime_pipeline.core.regimes.models.training import profile

DAY = dt.timedelta(days=1)
KINDS = ("vol", "trend", "cross")
TARGETS = ("forward", "same_day")  # targets the detectors are trained on
LABELED_KINDS = ("vol", "trend")  # kinds an HMM (and a jump model) labels
FORMAT = "walk_forward_labelers/1"


def settings() -> dict[str, Any]:
    return walk_forward()


# ------------------------------------------------------------------------------ windows


@dataclass(frozen=True)
class OriginWindows:
    """The days origin `origin` fits on, early-stops on and predicts, all inclusive.

    :param fit_start, fit_end: target days of the fit window (features and labels both)
    :param val_start, val_end: target days of early stopping: year Y-1 up to the last day whose
        longest label horizon still ends in Y-1
    :param predict_start, predict_end: the days of Y
    :param lookback_days: days of inputs a detector reads, ending on the predicted day
    :param horizon_days: the longest label horizon (days after d a target looks at)
    :param purge_days: lookback_days + horizon_days, left out between fit_end and val_start
    """

    origin: int
    fit_start: dt.date
    fit_end: dt.date
    val_start: dt.date
    val_end: dt.date
    predict_start: dt.date
    predict_end: dt.date
    lookback_days: int
    horizon_days: int
    purge_days: int

    @property
    def fit(self) -> Split:
        return Split("fit", self.fit_start, self.fit_end)

    @property
    def val(self) -> Split:
        return Split("val", self.val_start, self.val_end)

    @property
    def predict(self) -> Split:
        return Split("predict", self.predict_start, self.predict_end)

    @property
    def seen_until(self) -> dt.date:
        """The last day whose data any model of the origin was fitted or early-stopped on:
        the end of the val window's label horizon."""
        return self.val_end + dt.timedelta(days=self.horizon_days)

    def record(self) -> dict[str, Any]:
        """Plain values, stored with every model of the origin."""
        return {
            "origin": self.origin,
            **{k: getattr(self, k).isoformat() for k in
               ("fit_start", "fit_end", "val_start", "val_end", "predict_start", "predict_end")},
            "lookback_days": self.lookback_days, "horizon_days": self.horizon_days, "purge_days": self.purge_days,
            "seen_until": self.seen_until.isoformat(),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> OriginWindows:
        dates = {k: dt.date.fromisoformat(record[k]) for k in
                 ("fit_start", "fit_end", "val_start", "val_end", "predict_start", "predict_end")}
        return cls(origin=int(record["origin"]), **dates, lookback_days=int(record["lookback_days"]),
                   horizon_days=int(record["horizon_days"]), purge_days=int(record["purge_days"]))


def horizons(config: Mapping[str, Any] | None = None) -> dict[str, dict[str, int]]:
    """``{target: {kind: horizon_days}}`` from the config."""
    config = config or settings()
    return {t: {k: int(v["horizon_days"]) for k, v in kinds.items()} for t, kinds in config["targets"].items()}


def origin_windows(origin: int, config: Mapping[str, Any] | None = None) -> OriginWindows:
    """The windows of origin `origin` (a year)."""
    config = config or settings()
    lookback = max(int(profile("lstm")["window"]), int(profile("cross")["window"]))
    horizon = max(h for kinds in horizons(config).values() for h in kinds.values())
    purge = lookback + horizon
    val_start = dt.date(origin - 1, 1, 1)
    predict_start = dt.date(origin, 1, 1)
    fit_start = config["first_fit_day"]
    fit_end = val_start - DAY - dt.timedelta(days=purge)
    if fit_end <= fit_start:
        raise ValueError(f"origin {origin}: the fit window {fit_start}..{fit_end} is empty")
    return OriginWindows(
        origin=origin, fit_start=fit_start, fit_end=fit_end, val_start=val_start,
        val_end=predict_start - DAY - dt.timedelta(days=horizon), predict_start=predict_start,
        predict_end=dt.date(origin, 12, 31), lookback_days=lookback, horizon_days=horizon, purge_days=purge,
    )


# ------------------------------------------------------------------------------ GARCH per origin


def fit_origin_garch(bars: pd.DataFrame, windows: OriginWindows) -> tuple[dict[str, F.GarchParams], list[str]]:
    """GARCH(1,1) parameters per asset from the returns of the fit window only.

    An asset with fewer than ``min_returns`` returns there (listed late) gets the median of the
    fitted assets' parameters: its ``garch_sigma`` is then the universe's typical GARCH filter
    run over its own returns, still from nothing after the fit window.

    :return: ``(params for every symbol of the universe and of `bars`, the symbols that took the median)``
    """
    start, end = windows.fit_start, windows.fit_end + DAY
    inside = bars.loc[(bars["date"] >= start - DAY) & (bars["date"] < end)]
    counts = inside.groupby("symbol")["date"].size() - 1
    enough = sorted(s for s, n in counts.items() if n >= F.GARCH_MIN_RETURNS)
    if not enough:
        raise ValueError(f"origin {windows.origin}: no asset has {F.GARCH_MIN_RETURNS} returns in {start}..{windows.fit_end}")
    fitted = F.fit_garch(bars.loc[bars["symbol"].isin(enough)], start, end)
    table = pd.DataFrame({s: p.to_dict() for s, p in fitted.items()}).T.astype(float)
    median = F.GarchParams.from_dict(table.median().to_dict())
    pooled = sorted((set(universe().candidates) | set(bars["symbol"])) - set(fitted))
    return {**fitted, **{s: median for s in pooled}}, pooled


# ------------------------------------------------------------------------------ labelers


@dataclass
class Labelers:
    """What an origin fits before any detector: GARCH parameters, the HMMs, the jump models and
    the forward targets' cuts, with the windows they were fitted on."""

    windows: OriginWindows
    garch: dict[str, F.GarchParams]
    garch_pooled: list[str]
    hmm: dict[str, RegimeHMM]  # vol, trend (labelers) and cross (the filter baseline only)
    jump: dict[str, JumpLabeler]  # vol, trend
    vol_cuts: list[float]  # annualised vol between adjacent vol states
    trend_cuts: list[float]  # quartiles of the fit window's forward log returns

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "windows": self.windows.record(),
            "garch": {s: p.to_dict() for s, p in self.garch.items()}, "garch_pooled": self.garch_pooled,
            "hmm": {k: m.to_dict() for k, m in self.hmm.items()},
            "jump": {k: m.to_dict() for k, m in self.jump.items()},
            "vol_cuts": self.vol_cuts, "trend_cuts": self.trend_cuts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Labelers:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document: format {data.get('format')!r}")
        return cls(
            windows=OriginWindows.from_record(data["windows"]),
            garch={s: F.GarchParams.from_dict(p) for s, p in data["garch"].items()},
            garch_pooled=list(data["garch_pooled"]),
            hmm={k: RegimeHMM.from_dict(m) for k, m in data["hmm"].items()},
            jump={k: JumpLabeler.from_dict(m) for k, m in data["jump"].items()},
            vol_cuts=[float(v) for v in data["vol_cuts"]], trend_cuts=[float(v) for v in data["trend_cuts"]],
        )


def origin_vol_features(bars: pd.DataFrame, garch: Mapping[str, F.GarchParams], end: dt.date) -> pd.DataFrame:
    """`vol_features` of every day before `end` with the origin's GARCH parameters."""
    return F.vol_features(bars, garch, bars["date"].min(), end)


def cross_observations(cross_features: pd.DataFrame) -> pd.DataFrame:
    """The cross HMM's one observation (avg_pairwise_corr) in the layout of `labels.observations`."""
    feature = regimes.settings()["cross"]["feature"]
    return cross_features[["date"]].assign(symbol="market", **{feature: cross_features[feature].to_numpy(float)})


def observation_sequences(features: pd.DataFrame, kind: str) -> tuple[np.ndarray, list[int], pd.DataFrame]:
    """``(X, lengths, keys)`` of a kind's labeler observations, per asset run of consecutive days."""
    obs = cross_observations(features) if kind == "cross" else regimes.observations(features, kind)
    return regimes.sequences(obs)


LABELER_PARTS = ("vol", "trend", "cross")


def fit_labeler_part(part: str, bars: pd.DataFrame, trend_features: pd.DataFrame, cross_features: pd.DataFrame,
                     windows: OriginWindows, members: pd.DataFrame | None = None) -> dict[str, Any]:
    """One independent part of an origin's labelers, fitted on its fit window only:

    * ``vol``: GARCH parameters, then the vol HMM, the vol jump model and the vol cuts;
    * ``trend``: the trend HMM, the trend jump model and the forward-return quartiles;
    * ``cross``: the 3-state HMM on the day's mean correlation (the cross filter baseline).

    The HMMs, jump models and quartiles are fitted on the universe's member asset-days
    (`members`: ``date, symbol``; None: every row); GARCH on every candidate's returns.
    """
    wf = settings()
    base = regimes.settings()
    config = {**base, "hmm": {**base["hmm"], "n_restarts": int(wf["hmm_restarts"])}}
    h, jm = config["hmm"], wf["jump_model"]
    if part == "cross":
        X, lengths, _ = observation_sequences(regimes.in_window(cross_features, windows.fit_start, windows.fit_end), "cross")
        model = RegimeHMM(config["cross"]["names"], covariance_type=h["covariance_type"], n_restarts=h["n_restarts"],
                          n_iter=h["n_iter"], min_occupancy=h["min_occupancy"], random_state=h["random_state"])
        return {"hmm": model.fit(X, lengths)}
    out: dict[str, Any] = {}
    if part == "vol":
        out["garch"], out["garch_pooled"] = fit_origin_garch(bars, windows)
        features = origin_vol_features(bars, out["garch"], windows.fit_end + DAY)
    else:
        features = trend_features
    features = only_members(features, members)
    out["hmm"] = regimes.fit_hmm(features, part, windows.fit, config)
    X, lengths, _ = observation_sequences(regimes.in_window(features, windows.fit_start, windows.fit_end), part)
    out["jump"] = JumpLabeler(config[part]["names"], jump_penalty=jm["jump_penalty"], n_init=jm["n_init"],
                              max_iter=jm["max_iter"], random_state=jm["random_state"]).fit(X, lengths)
    if part == "vol":
        # Vol states are ordered by log realized vol (observation 0): cut halfway between neighbours.
        log_means = out["hmm"].means_[:, 0]
        out["cuts"] = np.exp((log_means[1:] + log_means[:-1]) / 2).tolist()
    else:
        fwd = only_members(forward_values(bars, cross_features), members)
        in_fit = fwd.loc[(fwd["date"] >= windows.fit_start) & (fwd["date"] <= windows.fit_end), "trend_value"].dropna()
        out["cuts"] = np.quantile(in_fit.to_numpy(), [0.25, 0.5, 0.75]).tolist()
    return out


def assemble_labelers(windows: OriginWindows, parts: Mapping[str, Mapping[str, Any]]) -> Labelers:
    """The :class:`Labelers` of an origin from its three fitted parts."""
    vol, trend, cross = parts["vol"], parts["trend"], parts["cross"]
    return Labelers(windows, vol["garch"], vol["garch_pooled"], {"vol": vol["hmm"], "trend": trend["hmm"], "cross": cross["hmm"]},
                    {"vol": vol["jump"], "trend": trend["jump"]}, vol["cuts"], trend["cuts"])


def fit_labelers(bars: pd.DataFrame, trend_features: pd.DataFrame, cross_features: pd.DataFrame,
                 windows: OriginWindows) -> Labelers:
    """Fit everything an origin needs before its detectors, on its fit window only (in this process)."""
    parts = {part: fit_labeler_part(part, bars, trend_features, cross_features, windows) for part in LABELER_PARTS}
    return assemble_labelers(windows, parts)


# ------------------------------------------------------------------------------ targets


def _wide_close(bars: pd.DataFrame) -> pd.DataFrame:
    """Closes on a full calendar (rows: every day, columns: symbols), NaN where no bar."""
    wide = bars.pivot(index="date", columns="symbol", values="close")
    wide.index = pd.to_datetime(wide.index)
    return wide.reindex(pd.date_range(wide.index.min(), wide.index.max(), freq="D"))


def forward_values(bars: pd.DataFrame, cross_features: pd.DataFrame) -> pd.DataFrame:
    """The forward quantities behind the forward targets, per (date, symbol); NaN where the
    horizon runs past the data or crosses a missing bar.

    :return: ``date, symbol, vol_value`` (annualised sample std of r_{d+1..d+7}), ``trend_value``
        (ln close_{d+28} / close_d), ``cross_value`` (avg_pairwise_corr of day d+30, the date's)
    """
    h = horizons()["forward"]
    close = _wide_close(bars)
    r = np.log(close / close.shift(1))
    vol = r.rolling(h["vol"]).std(ddof=1).shift(-h["vol"]) * math.sqrt(F.ANNUALIZATION_DAYS)
    trend = np.log(close.shift(-h["trend"]) / close)
    frame = pd.DataFrame({"vol_value": vol.stack(future_stack=True), "trend_value": trend.stack(future_stack=True)})
    frame.index.names = ["date", "symbol"]
    frame = frame.reset_index()
    frame["date"] = frame["date"].dt.date
    present = bars[["date", "symbol"]]
    frame = present.merge(frame, on=["date", "symbol"], how="left")
    feature = regimes.settings()["cross"]["feature"]
    later = cross_features[["date", feature]].assign(date=lambda f: f["date"] - dt.timedelta(days=h["cross"]))
    frame = frame.merge(later.rename(columns={feature: "cross_value"}), on="date", how="left")
    return frame.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


def _classify(values: pd.Series, cuts: Sequence[float], names: Sequence[str]) -> pd.Series:
    out = pd.Series(np.asarray(names, dtype=object)[np.digitize(values.fillna(0).to_numpy(float), cuts)], index=values.index)
    return out.where(values.notna())


def forward_targets(labelers: Labelers, bars: pd.DataFrame, cross_features: pd.DataFrame) -> pd.DataFrame:
    """The forward targets of every day: ``date, symbol, vol_regime, trend_regime, cross_regime``
    (None where the horizon is not observed)."""
    config = regimes.settings()
    values = forward_values(bars, cross_features)
    c = config["cross"]
    return pd.DataFrame({
        "date": values["date"], "symbol": values["symbol"],
        "vol_regime": _classify(values["vol_value"], labelers.vol_cuts, config["vol"]["names"]),
        "trend_regime": _classify(values["trend_value"], labelers.trend_cuts, config["trend"]["names"]),
        "cross_regime": _classify(values["cross_value"], [c["divergent_below"], c["convergent_above"]], c["names"]),
    })


def _decode_windows(decode: Callable[[pd.DataFrame], pd.DataFrame], frame: pd.DataFrame,
                    windows: Sequence[Split]) -> pd.DataFrame:
    """Decode each window on its own rows only (hindsight stays inside a window)."""
    parts = [decode(regimes.in_window(frame, w.start, w.end)) for w in windows]
    return pd.concat(parts, ignore_index=True)


def label_windows(w: OriginWindows) -> list[Split]:
    """The windows decoded one by one: fit, val (to the end of Y-1) and Y."""
    return [w.fit, Split("val", w.val_start, w.predict_start - DAY), w.predict]


def same_day_targets(labelers: Labelers, vol: pd.DataFrame, trend: pd.DataFrame, cross: pd.DataFrame) -> pd.DataFrame:
    """The study's labels with the origin's HMMs, decoded window by window."""
    models = regimes.RegimeModels(vol=labelers.hmm["vol"], trend=labelers.hmm["trend"])
    parts = [regimes.label_window(models, *(regimes.in_window(f, s.start, s.end) for f in (vol, trend, cross)))
             for s in label_windows(labelers.windows)]
    return pd.concat(parts, ignore_index=True)


def jump_targets(labelers: Labelers, vol: pd.DataFrame, trend: pd.DataFrame) -> pd.DataFrame:
    """The jump models' states, each window solved on its own: ``date, symbol, vol_regime, trend_regime``."""
    out = None
    for kind, frame in (("vol", vol), ("trend", trend)):
        model = labelers.jump[kind]
        names = np.asarray(model.state_names, dtype=object)

        def decode(part: pd.DataFrame, model=model, names=names, kind=kind) -> pd.DataFrame:
            X, lengths, keys = observation_sequences(part, kind)
            labels = model.predict(X, lengths) if len(X) else np.array([], dtype=int)
            return keys.assign(**{f"{kind}_regime": names[labels]})

        decoded = _decode_windows(decode, frame, label_windows(labelers.windows))
        out = decoded if out is None else out.merge(decoded, on=["date", "symbol"], how="inner")
    return out.sort_values(["date", "symbol"], kind="stable").reset_index(drop=True)


@dataclass
class OriginData:
    """An origin's inputs and targets over the whole history, built from its labelers."""

    labelers: Labelers
    vol: pd.DataFrame  # vol_features with the origin's GARCH parameters
    trend: pd.DataFrame
    cross: pd.DataFrame
    bars: pd.DataFrame
    targets: dict[str, pd.DataFrame]  # same_day, forward, jump: date, symbol, <kind>_regime...
    members: pd.DataFrame | None = None  # date, symbol of the universe's members; None: every row


def origin_data(labelers: Labelers, bars: pd.DataFrame, trend_features: pd.DataFrame,
                cross_features: pd.DataFrame, members: pd.DataFrame | None = None) -> OriginData:
    """Features and targets of an origin, every day up to the end of its year Y. Targets exist
    for the universe's member asset-days only (`members`, ``date, symbol``; None: every row);
    the features cover every candidate, so a window may reach back before an asset joined."""
    end = labelers.windows.predict_end + DAY
    vol = origin_vol_features(bars, labelers.garch, end)
    trend = trend_features.loc[trend_features["date"] < end].reset_index(drop=True)
    cross = cross_features.loc[cross_features["date"] < end].reset_index(drop=True)
    targets = {
        "same_day": same_day_targets(labelers, only_members(vol, members), only_members(trend, members), cross),
        "forward": only_members(forward_targets(labelers, bars, cross_features), members),
        "jump": jump_targets(labelers, only_members(vol, members), only_members(trend, members)),
    }
    return OriginData(labelers, vol, trend, cross, bars, targets, members)


# ------------------------------------------------------------------------------ detectors


def training_profile(name: str) -> dict[str, dict[str, Any]]:
    """``{"lstm": settings, "cross": settings}`` of a walk-forward profile, each laid over
    ``configs/models.yaml``'s default of its section."""
    profiles = settings()["profiles"]
    if name not in profiles:
        raise KeyError(f"configs/walk_forward.yaml: no profile {name!r}; known {sorted(profiles)}")
    chosen = profiles[name]
    return {section: {**profile(section), **(chosen.get(section) or {})} for section in ("lstm", "cross")}


def detector_path(models_dir: Path, origin: int, target: str, kind: str) -> Path:
    return storage_path(models_dir) / "walk_forward" / str(origin) / f"{target}_{kind}_detector.pt"


def labelers_path(models_dir: Path, origin: int) -> Path:
    return storage_path(models_dir) / "walk_forward" / str(origin) / "labelers.json"


def _train_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train and store one detector (runs in a worker process); return its summary."""
    from regime_pipeline.core.regimes import detectors

    kind, windows = task["kind"], OriginWindows.from_record(task["windows"])
    started = time.perf_counter()
    fit_val = (windows.fit, windows.val)
    if kind == "cross":
        det, result = detectors.train_cross_detector(task["nodes"], task["bars"], task["labels"], task["columns"],
                                                     task["settings"], windows=fit_val)
    else:
        det, result = detectors.train_sequence_detector(kind, task["features"], task["labels"], task["columns"],
                                                        task["settings"], windows=fit_val)
    det.settings = {**det.settings, "walk_forward": {**windows.record(), "target": task["target"],
                                                     "target_horizon_days": task["horizon_days"]}}
    sha = det.save(Path(task["path"]), result)
    return {"origin": windows.origin, "target": task["target"], "kind": kind, "path": task["path"], "sha256": sha,
            "best_epoch": result.best_epoch + 1, "epochs_run": len(result.history),
            "val_macro_f1": float(result.best["val_macro_f1"]), "seconds": time.perf_counter() - started,
            "history": result.history, "pid": os.getpid()}


def detector_tasks(data: OriginData, profile_name: str, models_dir: Path) -> list[dict[str, Any]]:
    """One training task per (target, kind), with just the rows it needs (sent to a worker)."""
    from regime_pipeline.core.regimes import detectors

    w = data.labelers.windows
    sections = training_profile(profile_name)
    h = horizons()
    last = w.val_end + DAY
    vol = data.vol.loc[data.vol["date"] < last]
    trend = data.trend.loc[data.trend["date"] < last]
    bars = data.bars.loc[data.bars["date"] < last]
    columns = {"vol": list(F.VOL_COLUMNS), "trend": list(F.TREND_COLUMNS)}
    tasks = []
    for target in TARGETS:
        labels = data.targets[target]
        labels = labels.loc[labels["date"] <= w.val_end]
        for kind in KINDS:
            task = {"kind": kind, "target": target, "windows": w.record(), "horizon_days": h[target][kind],
                    "path": str(detector_path(models_dir, w.origin, target, kind))}
            if kind == "cross":
                cols = columns["vol"] + columns["trend"]
                task.update(nodes=only_members(detectors.node_features(vol, trend, cols), data.members), bars=bars, columns=cols,
                            labels=labels[["date", "symbol", "cross_regime"]], settings=sections["cross"])
            else:
                task.update(features=vol if kind == "vol" else trend, columns=columns[kind],
                            labels=labels[["date", "symbol", f"{kind}_regime"]], settings=sections["lstm"])
            tasks.append(task)
    return tasks


def worker_pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of `workers` spawned processes, or None for one worker (run in this process).

    Spawned, not forked: a forked process inherits torch's and OpenMP's thread state and can
    deadlock. Starting a worker costs a few seconds (imports), so one pool serves a whole run.
    """
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], pool: ProcessPoolExecutor | None,
              done: Callable[[Any], None] | None = None, warn: Callable[[str], None] | None = None) -> list[Any]:
    """``[fn(task) for task in tasks]`` on `pool` (in this process when None), results in task
    order; `done` is called on each result as soon as it is ready. Each task must be picklable
    and `fn` a module-level function. A worker's warnings (Python's and libraries' log records
    of level WARNING and above) come back with its result and go to `warn`, each text once;
    without `warn` they are issued here as Python warnings."""
    if pool is None:
        results = []
        for task in tasks:
            results.append(fn(task))
            if done:
                done(results[-1])
        return results
    futures = {pool.submit(_recording, fn, task): i for i, task in enumerate(tasks)}
    results: list[Any] = [None] * len(tasks)
    said: set[str] = set()
    for future in as_completed(futures):
        result, messages = future.result()
        results[futures[future]] = result
        for message in messages:
            if message not in said:
                said.add(message)
                warn(message) if warn else warnings.warn(message, stacklevel=2)
        if done:
            done(result)
    return results


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.name}: {record.getMessage()}")


def _recording(fn: Callable[[Any], Any], task: Any) -> tuple[Any, list[str]]:
    """``fn(task)`` in a worker, with the warnings it raised or logged. A spawned worker has no
    log handler: without this, they would go straight to the terminal, unattributed."""
    messages: list[str] = []
    handler = _Collect(messages)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            result = fn(task)
    finally:
        root.removeHandler(handler)
    messages += [f"{w.category.__name__}: {w.message}" for w in caught]
    return result, messages


def train_detectors(tasks: Sequence[dict[str, Any]], workers: int, log: Callable[[str], None] | None = None,
                    pool: ProcessPoolExecutor | None = None, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Train the detector tasks on `pool`, or on a new pool of `workers` processes; log one line
    per trained detector."""
    done = (lambda r: log(_describe(r))) if log else None
    if pool is not None:
        return run_tasks(_train_one, tasks, pool, done, warn)
    own = worker_pool(min(workers, len(tasks)))
    try:
        return run_tasks(_train_one, tasks, own, done, warn)
    finally:
        if own is not None:
            own.shutdown()


def _fit_labeler_task(task: tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any], pd.DataFrame | None]
                      ) -> dict[str, Any]:
    part, bars, trend, cross, record, members = task
    windows = OriginWindows.from_record(record)
    started = time.perf_counter()
    fitted = fit_labeler_part(part, bars, trend, cross, windows, members)
    return {"origin": windows.origin, "part": part, "fitted": fitted, "seconds": time.perf_counter() - started,
            "pid": os.getpid()}


def fit_origins(bars: pd.DataFrame, trend_features: pd.DataFrame, cross_features: pd.DataFrame,
                origins: Sequence[int], models_dir: Path, profile_name: str, workers: int,
                log: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None,
                members: pd.DataFrame | None = None,
                ) -> tuple[dict[int, Labelers], list[dict[str, Any]]]:
    """Fit everything of `origins`: their labelers, then their detectors, each stage's
    independent fits spread over `workers` processes (their warnings go to `warn`). Writes the labelers (JSON) and detectors
    (torch) under ``<models_dir>/walk_forward/<origin>/``. Labelers and targets are on the
    universe's member asset-days (`members`, ``date, symbol``; None: every row).

    :return: ``({origin: Labelers}, [one summary per trained detector])``
    """
    say = log or (lambda _: None)
    # Latest (largest) origins first, so the workers finish together.
    origins = sorted(origins, reverse=True)
    jobs = []
    for origin in origins:
        w = origin_windows(origin)
        # Each origin's fitting reads nothing after its val window ends.
        cut = w.seen_until + DAY
        inputs = (bars.loc[bars["date"] < cut], trend_features.loc[trend_features["date"] < cut],
                  cross_features.loc[cross_features["date"] < cut], w.record(),
                  None if members is None else members.loc[pd.to_datetime(members["date"]) < pd.Timestamp(cut)])
        jobs += [(part, *inputs) for part in LABELER_PARTS]
    say(f"fitting GARCH, HMMs and jump models of origins {list(origins)} on {workers} processes")
    pool = worker_pool(workers)
    try:
        return _fit_origins(jobs, origins, models_dir, profile_name, workers, pool, bars, trend_features,
                            cross_features, say, warn, members)
    finally:
        if pool is not None:
            pool.shutdown()


def _fit_origins(jobs, origins, models_dir, profile_name, workers, pool, bars, trend_features, cross_features, say, warn,
                 members=None):
    """The two stages of :func:`fit_origins` on one pool."""
    from regime_pipeline.resources.artifacts import write_atomic

    fitted = run_tasks(_fit_labeler_task, jobs, pool,
                       done=lambda r: say(f"origin {r['origin']}: {r['part']} labelers fitted in {r['seconds']:.1f}s "
                                          f"(process {r['pid']})"), warn=warn)
    labelers = {}
    tasks = []
    for origin in origins:
        parts = {r["part"]: r["fitted"] for r in fitted if r["origin"] == origin}
        labelers[origin] = assemble_labelers(origin_windows(origin), parts)
        write_atomic(labelers_path(models_dir, origin), json.dumps(labelers[origin].to_dict(), indent=1).encode())
        # Detector inputs are cut at the end of the val window as well.
        w = labelers[origin].windows
        cut = w.seen_until + DAY
        data = origin_data(labelers[origin], bars.loc[bars["date"] < cut], trend_features.loc[trend_features["date"] < cut],
                           cross_features.loc[cross_features["date"] < cut], members)
        tasks += detector_tasks(data, profile_name, models_dir)
    # Largest fits first (latest origin, LSTMs before graphs), so the workers finish together.
    tasks.sort(key=lambda t: (-int(t["windows"]["origin"]), t["kind"] == "cross"))
    say(f"training {len(tasks)} detectors ({profile_name} profile) on {workers} processes")
    return labelers, train_detectors(tasks, workers, log=say, pool=pool, warn=warn)


def _describe(r: Mapping[str, Any]) -> str:
    return (f"origin {r['origin']} {r['target']} {r['kind']}_detector: best epoch {r['best_epoch']}/{r['epochs_run']}, "
            f"val macro-F1 {r['val_macro_f1']:.3f}, {r['seconds']:.1f}s (process {r['pid']})")


def load_detectors(models_dir: Path, origin: int, target: str):
    from regime_pipeline.core.regimes import detectors

    return {kind: detectors.Detector.load(detector_path(models_dir, origin, target, kind)) for kind in KINDS}


def probabilities(data: OriginData, models_dir: Path) -> pd.DataFrame:
    """Every detector's class probabilities for the days of Y, per target: the columns of
    `regime_probabilities` plus ``origin`` and ``target``."""
    from regime_pipeline.core.regimes import detectors

    w = data.labelers.windows
    parts = []
    for target in TARGETS:
        dets = load_detectors(models_dir, w.origin, target)
        frame = detectors.probabilities(dets, data.vol, data.trend, data.bars, w.predict_start, w.predict_end + DAY,
                                        members=data.members)
        parts.append(frame.assign(origin=str(w.origin), target=target))
    out = pd.concat(parts, ignore_index=True)
    first = ["origin", "target", "date", "symbol"]
    return out[first + [c for c in out.columns if c not in first]]


def model_records(models_dir: Path, origin: int) -> pd.DataFrame:
    """The recorded windows of every stored detector of an origin: one row per (target, kind)."""
    rows = []
    for target in TARGETS:
        for kind, det in load_detectors(models_dir, origin, target).items():
            record = det.settings["walk_forward"]
            rows.append({"origin": str(origin), "target": target, "kind": kind,
                         **{k: record[k] for k in ("fit_start", "fit_end", "val_start", "val_end", "seen_until")},
                         "purge_days": record["purge_days"], "horizon_days": record["target_horizon_days"]})
    frame = pd.DataFrame(rows)
    for column in ("fit_start", "fit_end", "val_start", "val_end", "seen_until"):
        frame[column] = pd.to_datetime(frame[column]).dt.date
    return frame


def unseen_violations(probs: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Rows of `probs` whose day d is not after everything its models saw: the fit window plus
    the purge, the val window plus its label horizon. Empty when the walk-forward holds.

    :param probs: ``origin, target, date, ...`` rows
    :param records: :func:`model_records` rows of the same origins
    """
    worst = records.assign(
        fit_plus_purge=lambda f: f["fit_end"] + pd.to_timedelta(f["purge_days"], unit="D").dt.to_pytimedelta(),
        val_plus_horizon=lambda f: f["val_end"] + pd.to_timedelta(f["horizon_days"], unit="D").dt.to_pytimedelta(),
    ).groupby(["origin", "target"]).agg(fit_plus_purge=("fit_plus_purge", "max"),
                                          val_plus_horizon=("val_plus_horizon", "max"),
                                          seen_until=("seen_until", "max"), kinds=("kind", "nunique")).reset_index()
    merged = probs[["origin", "target", "date"]].merge(worst, on=["origin", "target"], how="left")
    bad = merged["kinds"].isna() | (merged["kinds"] < len(KINDS))
    for column in ("fit_plus_purge", "val_plus_horizon", "seen_until"):
        bad |= ~(merged[column].fillna(dt.date.max) < merged["date"])
    return merged.loc[bad]
