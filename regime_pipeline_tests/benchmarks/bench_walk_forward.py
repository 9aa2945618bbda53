"""Walk-forward: where an origin's training time goes, and what two worker processes buy.

On the real embedded data, for one origin (default 2023; ``--origin Y``): the labelers are
fitted (timed), then

1. the training loop is profiled: one epoch of the vol LSTM on the origin's fit windows under
   the `light` and `full` (published) profiles, the ratio between them, and torch's profiler's
   top operators for one `light` epoch;
2. the origin's six detectors (forward and same_day x vol, trend, cross; `light`) are trained
   in this process, then on two workers of a started pool, alternated and best of
   ``--repeats``: the ratio is the parallel speed-up (goal >= 1.5x on 2 cores; less when other
   work shares them).

Run: ``python -m regime_pipeline_tests.benchmarks walk_forward [--origin 2023]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from regime_pipeline.core.features import daily as F
from regime_pipeline.core.regimes import detectors
from regime_pipeline.core.regimes import ladder
from regime_pipeline.core.regimes import walk_forward as wf
from regime_pipeline.core.regimes.models.lstm import AttentionLSTMClassifier
from regime_pipeline.core.regimes.models.training import fit_classifier, set_seed
from regime_pipeline_tests.benchmarks import print_table
from regime_pipeline_tests.conftest import embedded_daily_bars

GOAL_SPEEDUP = 1.5


def _epoch_seconds(settings: dict, X: np.ndarray, y: np.ndarray, profile: bool = False):
    hparams = {"n_features": X.shape[2], "n_classes": 4, "hidden": settings["hidden"], "hidden2": settings["hidden2"],
               "dropout": settings["dropout"], "window": X.shape[1]}
    set_seed(0, 1)
    model = AttentionLSTMClassifier(hparams)
    kwargs = dict(y_train=y, y_val=y[:512], n_classes=4, epochs=1, batch_size=settings["batch_size"], lr=settings["lr"],
                  weight_decay=0.0, patience=1, seed=0)
    if not profile:
        began = time.perf_counter()
        fit_classifier(model, X, X[:512], **kwargs)
        return time.perf_counter() - began, None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fit_classifier(model, X, X[:512], **kwargs)
    return None, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)


def _start_worker(seconds: float) -> None:
    """Import what a training task needs, then hold the worker so the other one starts too."""
    import regime_pipeline.core.regimes.detectors  # noqa: F401

    time.sleep(seconds)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="walk_forward")
    parser.add_argument("--origin", type=int, default=2023)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    bars = embedded_daily_bars()
    first, end = bars["date"].min(), dt.date(2026, 1, 1)
    trend, cross = F.trend_features(bars, first, end), F.cross_features(bars, first, end)
    windows = wf.origin_windows(args.origin)
    began = time.perf_counter()
    labelers = wf.fit_labelers(bars, trend, cross, windows)
    labeler_s = time.perf_counter() - began
    data = wf.origin_data(labelers, bars, trend, cross)

    # 1. The training loop: one epoch of the vol LSTM, light against full.
    light, full = wf.training_profile("light")["lstm"], wf.training_profile("full")["lstm"]
    det = detectors.Detector("vol", None, detectors.Standardizer.fit(data.vol, F.VOL_COLUMNS, (windows.fit_start, windows.fit_end)),
                             list(F.VOL_COLUMNS), ladder.regime_names("vol"), {"window": light["window"]})
    labels = data.targets["forward"][["date", "symbol", "vol_regime"]]
    X, y, _ = detectors._sequence_inputs(det, data.vol, labels, (windows.fit_start, windows.fit_end))
    light_s, _ = _epoch_seconds(light, X, y)
    full_s, _ = _epoch_seconds(full, X, y)
    _, table = _epoch_seconds(light, X, y, profile=True)

    # 2. The origin's six detectors in this process, then on two workers of a started pool (a
    # run starts its pool once for all its fits; starting it is timed apart).
    # Alternated and best-of `--repeats`, so a change in the machine's other load hits both.
    timings = {1: float("inf"), 2: float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        tasks = wf.detector_tasks(data, "light", Path(tmp))
        pool = wf.worker_pool(2)
        began = time.perf_counter()
        list(pool.map(_start_worker, [2.0, 2.0]))
        start_s = time.perf_counter() - began - 2.0
        for _ in range(args.repeats):
            for workers in (1, 2):
                began = time.perf_counter()
                wf.train_detectors(tasks, workers, pool=pool if workers == 2 else None)
                timings[workers] = min(timings[workers], time.perf_counter() - began)
        pool.shutdown()
    speedup = timings[1] / timings[2]
    print_table([
        (f"origin {args.origin}", f"fit {windows.fit_start}..{windows.fit_end}, {len(X):,} vol windows"),
        ("labelers (GARCH, 3 HMMs, 2 jump models)", f"{labeler_s:.1f} s"),
        ("vol LSTM, one epoch", f"light {light_s:.2f} s, full {full_s:.2f} s: full/light {full_s / light_s:.1f}x"),
        ("six detectors, light", f"1 process {timings[1]:.1f} s, 2 workers {timings[2]:.1f} s: {speedup:.2f}x  "
                                 f"goal >= {GOAL_SPEEDUP}x: {'PASS' if speedup >= GOAL_SPEEDUP else 'FAIL'}"),
        ("starting the 2 workers (imports)", f"{start_s:.1f} s, once per run"),
    ])
    print("\n  torch profiler, one light epoch (top operators by self CPU time):")
    print("  " + table.replace("\n", "\n  "))
    return 0 if speedup >= GOAL_SPEEDUP else 1
