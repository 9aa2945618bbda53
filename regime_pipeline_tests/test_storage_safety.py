"""Stored data that bad input, concurrent runs and crashes cannot corrupt, on real embedded rows.

Each case compares what is stored, byte for byte, with a clean sequential run, or with what was
stored before when the input is refused. Concurrency and crashes use real separate processes
(``regime_pipeline_tests.workers``) and a real ``kill -9``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pandas as pd

from regime_pipeline.core.data.lake import MinuteLake
from regime_pipeline.core.data.sources.embedded import EmbeddedSource
from regime_pipeline_tests.conftest import EMBEDDED

WORKERS = [sys.executable, "-m", "regime_pipeline_tests.workers"]


def lake_bytes(root: Path) -> dict[str, bytes]:
    """Every month file of the lake at `root`, by its path relative to the root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("symbol=*/month=*/data.parquet"))}


def start_together(commands: list[list[str]], go: Path) -> list[subprocess.Popen]:
    """Start one worker process per command, wait until each is ready, then let them all go at once."""
    procs = [
        subprocess.Popen([*WORKERS, *command, "--go", str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    for proc in procs:
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.wait(timeout=60)
            raise AssertionError(f"worker did not start: {line!r}\n{proc.stderr.read()[-3000:]}")
    go.touch()
    return procs


def finish(procs: list[subprocess.Popen], timeout_s: float = 300) -> list[str]:
    """Wait for every worker; fail with its stderr if one failed; return their stdout."""
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout_s)
        assert proc.returncode == 0, f"worker exited {proc.returncode}:\n{err[-4000:]}"
        outputs.append(out)
    return outputs


# --------------------------------------------------------------------------- 4. concurrent lake writers

OCTOBER_FIRST_HALF = [dt.date(2021, 10, d).isoformat() for d in range(1, 9)]
OCTOBER_SECOND_HALF = [dt.date(2021, 10, d).isoformat() for d in range(9, 17)]


def test_two_processes_writing_days_of_one_month_keep_every_day(tmp_path):
    lake_root = tmp_path / "lake"
    procs = start_together(
        [["write_days", str(lake_root), "BTCUSDT", *days, "--repeat", "3"]
         for days in (OCTOBER_FIRST_HALF, OCTOBER_SECOND_HALF)],
        tmp_path / "go",
    )
    finish(procs)

    sequential = MinuteLake(tmp_path / "sequential")
    source = EmbeddedSource(EMBEDDED / "daily_klines.parquet", EMBEDDED / "minute_bars.parquet")
    for day, minutes in source.minute_days("BTCUSDT", dt.date(2021, 10, 1), dt.date(2021, 10, 17)):
        sequential.write_day("BTCUSDT", day, minutes)
    stored = MinuteLake(lake_root).stored_days()
    assert stored["date"].tolist() == [dt.date(2021, 10, d) for d in range(1, 17)]
    assert len(MinuteLake(lake_root).read(dt.date(2021, 10, 1), dt.date(2021, 10, 17))) == 16 * 1440
    assert lake_bytes(lake_root) == lake_bytes(tmp_path / "sequential")
    # Nothing but the month file and its lock is left in the month's folder.
    month = lake_root / "symbol=BTCUSDT" / "month=2021-10"
    assert sorted(p.name for p in month.iterdir()) == [".lock", "data.parquet"]
