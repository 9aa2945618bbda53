"""Detectors: training time of each (default profile) and one day's inference for all three.

On the real embedded data: features and HMM labels are built with `core` first (not timed),
then each detector is trained on train and early-stopped on val, then the probabilities of
one day (2025-12-31, 13 assets) are computed from the three fitted models. The baseline in
the same process is one epoch-equivalent forward pass over the train inputs, so the ratio
says how many passes training took. Goal: training "a few minutes" for all three together.
Run: ``python -m regime_pipeline_tests.benchmarks detectors``.
"""

from __future__ import annotations

import datetime as dt
import time

import pandas as pd

from regime_pipeline.configs import splits
from regime_pipeline.core.regimes import detectors
from regime_pipeline.core.regimes import labels as regimes
from regime_pipeline.core.features import daily as F
from regime_pipeline.core.regimes.models.training import predict_proba
from regime_pipeline_tests.benchmarks import peak_rss_mib, print_table
from regime_pipeline_tests.conftest import embedded_daily_bars

DAY = dt.timedelta(days=1)
GOAL_TOTAL_S = 300.0
SELECTED = {"vol": list(F.VOL_COLUMNS), "trend": list(F.TREND_COLUMNS)}


def main(argv: list[str]) -> int:
    bars = embedded_daily_bars()
    train = splits()["train"]
    params = F.fit_garch(bars, train.start, train.end + DAY)
    first, end = bars["date"].min(), dt.date(2026, 1, 1)
    feats = {"vol": F.vol_features(bars, params, first, end), "trend": F.trend_features(bars, first, end)}
    cross = F.cross_features(bars, first, end)
    config = regimes.settings()
    models = regimes.RegimeModels(vol=regimes.fit_hmm(feats["vol"], "vol", train, config),
                                  trend=regimes.fit_hmm(feats["trend"], "trend", train, config))
    labels = pd.concat([
        regimes.label_window(models, *(regimes.in_window(f, s.start, s.end) for f in (feats["vol"], feats["trend"], cross)), config).assign(split=s.name)
        for s in splits().values()
    ], ignore_index=True)

    rows, dets, total = [], {}, 0.0
    for kind in ("vol", "trend"):
        began = time.perf_counter()
        det, result = detectors.train_sequence_detector(kind, feats[kind], labels, SELECTED[kind], detectors.settings_for(kind))
        seconds = time.perf_counter() - began
        X, _, _ = detectors._sequence_inputs(det, feats[kind], None, (train.start, train.end))
        one_pass = _timed(lambda: predict_proba(det.model, X))
        dets[kind], total = det, total + seconds
        rows.append((f"{kind}_detector", f"{seconds:.1f} s, {len(result.history)} epochs (best {result.best_epoch + 1}), "
                     f"{seconds / one_pass:.0f}x one forward pass over train ({one_pass:.2f} s)"))
    columns = SELECTED["vol"] + SELECTED["trend"]
    nodes = detectors.node_features(feats["vol"], feats["trend"], columns)
    began = time.perf_counter()
    det, result = detectors.train_cross_detector(nodes, bars, labels, columns, detectors.settings_for("cross"))
    seconds = time.perf_counter() - began
    dets["cross"], total = det, total + seconds
    rows.append(("cross_detector", f"{seconds:.1f} s, {len(result.history)} epochs (best {result.best_epoch + 1})"))

    day = dt.date(2025, 12, 31)
    window = {k: f[(f["date"] > day - dt.timedelta(days=40)) & (f["date"] <= day)] for k, f in feats.items()}
    recent = bars[(bars["date"] > day - dt.timedelta(days=40)) & (bars["date"] <= day)]
    infer = min(_timed(lambda: detectors.probabilities(dets, window["vol"], window["trend"], recent, day, day + DAY)) for _ in range(5))
    rows += [
        ("all three, training", f"{total:.1f} s  goal <= {GOAL_TOTAL_S:.0f} s: {'PASS' if total <= GOAL_TOTAL_S else 'FAIL'}"),
        ("one day, all three", f"{1000 * infer:.0f} ms (13 assets, best of 5)"),
        ("peak RSS", f"{peak_rss_mib():,.0f} MiB"),
    ]
    print_table(rows)
    return 0 if total <= GOAL_TOTAL_S else 1


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began
