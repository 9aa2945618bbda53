"""Work tests run in separate processes: ``python -m regime_pipeline_tests.workers TASK ...``, and pool tasks.

Each task prepares everything (imports, data, resources), prints ``ready``, then waits for the
file given as ``--go`` before it starts writing, so that several processes start their writes
together rather than one after another's start-up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

READY = "ready"
HANGING = "hanging"


def wait_for(go: str | None, timeout_s: float = 120.0) -> None:
    """Say ready, then block until the file `go` exists (no wait without one)."""
    print(READY, flush=True)
    if not go:
        return
    deadline = time.monotonic() + timeout_s
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no go file {go} after {timeout_s}s")
        time.sleep(0.005)


def write_days(args: argparse.Namespace) -> None:
    """Store real embedded minutes of `symbol` for `days` in the lake at `root`, one day at a time."""
    from regime_pipeline.core.data.lake import MinuteLake
    from regime_pipeline.core.data.sources.embedded import EmbeddedSource
    from regime_pipeline_tests.conftest import EMBEDDED

    source = EmbeddedSource(EMBEDDED / "daily_klines.parquet", EMBEDDED / "minute_bars.parquet")
    wanted = [dt.date.fromisoformat(d) for d in args.days]
    days = {d: m for d, m in source.minute_days(args.symbol, min(wanted), max(wanted) + dt.timedelta(days=1))}
    lake = MinuteLake(args.root)
    wait_for(args.go)
    for _ in range(args.repeat):
        for day in wanted:
            lake.write_day(args.symbol, day, days[day])


def materialize(args: argparse.Namespace) -> None:
    """Materialize `select` (of the bars assets) over ``first..last`` against `data_dir` (embedded
    data, or `files_dir`).

    With ``--home`` the run goes to the Dagster instance there (its pools apply); without, to a
    throw-away instance. With ``--hang`` the run hangs inside `daily_bars`' computation (its pool
    slot held, no storage access under way), after printing ``hanging``: a stuck step, which
    only a kill ends.
    """
    import os

    import dagster as dg

    # The bars assets alone: importing every asset (torch, ...) would double the start-up time.
    from regime_pipeline.assets.bars import daily_bars, minute_bars
    from regime_pipeline.resources import build_resources
    from regime_pipeline.resources.market_data import MarketData
    from regime_pipeline_tests.conftest import materialize_range

    market = MarketData(source="binance_files", files_dir=args.files_dir) if args.files_dir else MarketData()
    resources = build_resources(args.data_dir, market)
    if args.home:
        os.environ["DAGSTER_HOME"] = args.home
        instance = dg.DagsterInstance.get()
    else:
        instance = dg.DagsterInstance.ephemeral()
    if args.hang:
        from regime_pipeline.assets import bars

        def hang(*_args, **_kwargs):
            print(HANGING, flush=True)
            while True:
                time.sleep(60)

        bars.combine_daily = hang
    wait_for(args.go)
    result = materialize_range([minute_bars, daily_bars], args.first, args.last, resources, instance,
                               selection=args.select, raise_on_error=False)
    print(f"run {result.run_id} {'succeeded' if result.success else 'failed'}", flush=True)
    sys.exit(0 if result.success else 1)

def warn_and_log(value: int) -> int:
    """A pool task that warns and logs a library warning, then returns `value` squared."""
    import logging
    import warnings

    warnings.warn(f"task {value} warns", UserWarning, stacklevel=1)
    logging.getLogger("some.library").warning("shared library message")
    return value * value



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m regime_pipeline_tests.workers")
    sub = parser.add_subparsers(dest="task", required=True)
    days = sub.add_parser("write_days")
    days.add_argument("root")
    days.add_argument("symbol")
    days.add_argument("days", nargs="+")
    days.add_argument("--repeat", type=int, default=1)
    days.add_argument("--go")
    days.set_defaults(func=write_days)
    run = sub.add_parser("materialize")
    run.add_argument("data_dir")
    run.add_argument("first")
    run.add_argument("last")
    run.add_argument("--select", nargs="+", required=True)
    run.add_argument("--files-dir", default="")
    run.add_argument("--home", default="")
    run.add_argument("--go")
    run.add_argument("--hang", action="store_true")
    run.set_defaults(func=materialize)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

