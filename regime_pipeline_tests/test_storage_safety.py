"""Stored data that bad input, concurrent runs and crashes cannot corrupt, on real embedded rows.

Each case compares what is stored, byte for byte, with a clean sequential run, or with what was
stored before when the input is refused. Concurrency and crashes use real separate processes
(``regime_pipeline_tests.workers``) and a real ``kill -9``.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus, make_new_run_id

from regime_pipeline.assets.bars import daily_bars, minute_bars
from regime_pipeline.configs import run_settings, universe
from regime_pipeline.core.data.lake import MinuteLake
from regime_pipeline.core.data.sources.embedded import EmbeddedSource
from regime_pipeline.core.errors import DataError
from regime_pipeline.definitions import all_assets
from regime_pipeline.recovery import slots_held
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline_tests.conftest import (
    EMBEDDED,
    check_results,
    embedded_daily_bars,
    materialize_range,
    write_instance_yaml,
    write_table,
)
from regime_pipeline_tests.test_source_binance_files import bulk_lines, day_minutes, write_csv, write_freqtrade_json

WORKERS = [sys.executable, "-m", "regime_pipeline_tests.workers"]
BARS = [minute_bars, daily_bars]


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


def test_a_month_emptied_while_the_stored_days_are_listed_is_not_an_error(tmp_path, monkeypatch):
    lake = MinuteLake(tmp_path / "lake")
    source = EmbeddedSource(EMBEDDED / "daily_klines.parquet", EMBEDDED / "minute_bars.parquet")
    for day, minutes in source.minute_days("BTCUSDT", dt.date(2021, 10, 1), dt.date(2021, 10, 3)):
        lake.write_day("BTCUSDT", day, minutes)
    listed = lake.files() + [lake.month_path("ETHUSDT", "2021-10")]  # listed, then emptied by a writer
    monkeypatch.setattr(lake, "files", lambda: listed)
    assert lake.stored_days()["date"].tolist() == [dt.date(2021, 10, 1), dt.date(2021, 10, 2)]


def test_an_object_lake_read_that_meets_a_replaced_month_reads_the_manifest_again(tmp_path):
    """A writer replaced the month after the reader read the manifest and deleted the object the
    reader was sent to: the read fetches the manifest's new object instead of failing, and gives
    up with a clear error only when the month keeps moving."""
    from upath import UPath

    from regime_pipeline.core.data import object_lake

    source = EmbeddedSource(EMBEDDED / "daily_klines.parquet", EMBEDDED / "minute_bars.parquet")
    (day, minutes), = source.minute_days("BTCUSDT", dt.date(2021, 10, 1), dt.date(2021, 10, 2))
    root = UPath(tmp_path / "bucket")
    (root / "symbol=BTCUSDT" / "month=2021-10").mkdir(parents=True)
    (root / "symbol=BTCUSDT" / "month=2021-10" / "new.parquet").write_bytes(object_lake._parquet_bytes(minutes, [day.isoformat()]))
    manifests = [("BTCUSDT", "2021-10", "symbol=BTCUSDT/month=2021-10/gone.parquet", day.isoformat()),
                 ("BTCUSDT", "2021-10", "symbol=BTCUSDT/month=2021-10/new.parquet", day.isoformat())]

    class ScriptedLake(object_lake.ObjectMinuteLake):
        """The lake's reads, its manifest answering first with the replaced object, then the new one."""

        def __init__(self, answers):
            self.root, self.name, self.answers = root, str(root), list(answers)

        def _rows(self, symbols=None, months=None):
            return [self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]]

    read = ScriptedLake(manifests).read(day, day + dt.timedelta(days=1))
    assert len(read) == 1440 and read["open_time"].min() == pd.Timestamp(day)
    assert ScriptedLake(manifests).daily_aggregate(day, day + dt.timedelta(days=1))["n_minutes"].tolist() == [1440]
    with pytest.raises(FileNotFoundError, match="replaced while being read, 5 times in a row"):
        ScriptedLake(manifests[:1]).read(day, day + dt.timedelta(days=1))


@pytest.mark.slow
def test_two_minute_bars_runs_on_different_days_of_a_month_store_both(tmp_path, instance):
    # The 00:15 daily schedule and a user's backfill, as two processes writing October at once.
    data_dir = tmp_path / "data"
    procs = start_together(
        [["materialize", str(data_dir), first, last, "--select", "minute_bars"]
         for first, last in (("2021-10-01", "2021-10-08"), ("2021-10-09", "2021-10-16"))],
        tmp_path / "go",
    )
    assert all("succeeded" in out for out in finish(procs))

    clean = tmp_path / "clean"
    for first, last in (("2021-10-01", "2021-10-08"), ("2021-10-09", "2021-10-16")):
        assert materialize_range([minute_bars], first, last, embedded(clean), instance).success
    stored = MinuteLake(data_dir / "lake" / "minute_bars").stored_days()
    assert len(stored) == 8 * 16  # the 8 symbols with minutes, 16 days each
    assert lake_bytes(data_dir / "lake" / "minute_bars") == lake_bytes(clean / "lake" / "minute_bars")


# --------------------------------------------------------------------------- stored state

def warehouse_bytes(data_dir: Path) -> bytes:
    return (data_dir / "warehouse.duckdb").read_bytes()


def stored_bars(data_dir: Path) -> pd.DataFrame:
    frame = read_table(str(data_dir / "warehouse.duckdb"), "daily_bars")
    return frame.sort_values(["date", "symbol"]).reset_index(drop=True)


def snapshot(data_dir: Path) -> tuple[dict[str, bytes], bytes]:
    """The lake's month files and the warehouse file, byte for byte."""
    return lake_bytes(data_dir / "lake" / "minute_bars"), warehouse_bytes(data_dir)


def embedded(data_dir: Path) -> dict:
    return build_resources(str(data_dir), MarketData(source="embedded"))


def files(data_dir: Path, folder: Path) -> dict:
    return build_resources(str(data_dir), MarketData(source="binance_files", files_dir=str(folder)))


def klines_of(symbol: str, first: dt.date, last: dt.date) -> pd.DataFrame:
    """Real daily klines with an ``open_time`` column, as the file writers take them."""
    frame = embedded_daily_bars(universe().symbols)
    frame = frame[(frame.symbol == symbol) & (frame.date >= first) & (frame.date <= last)].reset_index(drop=True)
    return frame.assign(open_time=pd.to_datetime(frame["date"]).astype("datetime64[ms]"))


# --------------------------------------------------------------------------- 1. a file cut at a line break

CUT_DAY = dt.date(2021, 10, 2)
OCT, LAST_OCT = dt.date(2021, 10, 1), dt.date(2021, 10, 31)


@pytest.mark.parametrize("with_klines", [False, True], ids=["minutes_only", "with_daily_klines"])
def test_a_minute_file_cut_at_a_line_break_is_refused_and_nothing_stored_changes(tmp_path, instance, with_klines):
    data_dir = tmp_path / "data"
    assert materialize_range(BARS, "2021-09-28", "2021-10-02", embedded(data_dir), instance).success
    before = snapshot(data_dir)
    folder = tmp_path / "drop"
    # BTC 2021-10-02 from its first 700 of 1,440 minutes: every line is a valid row.
    cut = write_csv(folder / "BTCUSDT-1m-2021-10-02.csv", bulk_lines(day_minutes(CUT_DAY))[:700])
    if with_klines:
        for symbol in universe().trading(OCT, LAST_OCT + dt.timedelta(days=1)):
            write_csv(folder / f"{symbol}-1d-2021-10.csv", bulk_lines(klines_of(symbol, OCT, LAST_OCT), interval="1d"))

    refetch = {"ops": {"minute_bars": {"config": {"refetch": True}}}}
    with pytest.raises(DataError) as info:
        materialize_range(BARS, "2021-10-02", "2021-10-02", files(data_dir, folder), instance, run_config=refetch)

    message = str(info.value)
    assert str(cut) in message and "BTCUSDT 2021-10-02 not stored" in message
    assert ("daily kline says" in message) if with_klines else ("740 of 1440 minutes missing" in message)
    assert snapshot(data_dir) == before


# --------------------------------------------------------------------------- 2. a freqtrade candle still open

def write_freqtrade_days(folder: Path, last: dt.date, written: str, partial_btc: bool) -> None:
    """freqtrade 1d files of every symbol, 2021-09-01..`last`, stamped as written at `written` (UTC)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = pd.Timestamp(written).timestamp()
    for symbol in universe().trading(dt.date(2021, 9, 1), last + dt.timedelta(days=1)):
        candles = klines_of(symbol, dt.date(2021, 9, 1), last)
        if partial_btc and symbol == "BTCUSDT":
            # BTC's 2021-10-03 as it stood at noon: high 48,100 (the day closed with a 49,228 high).
            candles.loc[candles.index[-1], ["high", "close", "volume"]] = [48_100.0, 47_900.0, 15_000.0]
        path = write_freqtrade_json(folder / f"{symbol.removesuffix('USDT')}_USDT-1d.json", candles)
        os.utime(path, (stamp, stamp))


def test_a_freqtrade_candle_still_open_when_the_file_was_written_is_not_stored(tmp_path, instance):
    data_dir = tmp_path / "data"
    assert materialize_range([daily_bars], "2021-09-28", "2021-10-02", embedded(data_dir), instance).success
    before = snapshot(data_dir)
    folder = tmp_path / "freqtrade"
    write_freqtrade_days(folder, dt.date(2021, 10, 3), "2021-10-03 12:00", partial_btc=True)

    result = materialize_range([daily_bars], "2021-10-01", "2021-10-03", files(data_dir, folder), instance,
                               raise_on_error=False)

    # 2021-10-03 was still open in every file: no bar for it, the coverage check fails before storing.
    assert not result.success and check_results(result)["coverage"] is False
    coverage = next(e for e in result.get_asset_check_evaluations() if e.check_name == "coverage")
    assert coverage.metadata["missing_days"].value == len(universe().trading(dt.date(2021, 10, 3), dt.date(2021, 10, 4)))
    assert snapshot(data_dir) == before

    # Written after the day closed, the same files hold the final candles: stored exactly as Binance's.
    write_freqtrade_days(folder, dt.date(2021, 10, 3), "2021-10-04 00:00:05", partial_btc=False)
    assert materialize_range([daily_bars], "2021-10-01", "2021-10-03", files(data_dir, folder), instance).success
    clean = tmp_path / "clean"
    assert materialize_range([daily_bars], "2021-09-28", "2021-10-03", embedded(clean), instance).success
    pd.testing.assert_frame_equal(stored_bars(data_dir), stored_bars(clean), check_exact=True)


# --------------------------------------------------------------------------- 3. checks before the write

def test_a_failing_blocking_check_leaves_the_stored_bars_exactly_as_they_were(tmp_path, instance):
    data_dir = tmp_path / "data"
    assert materialize_range(BARS, "2021-09-28", "2021-10-07", embedded(data_dir), instance).success
    before = snapshot(data_dir)
    rows = stored_bars(data_dir)
    assert len(rows) == 10 * len(universe().trading(dt.date(2021, 9, 28), dt.date(2021, 10, 8)))
    # Rebuilding stored days from files for BTC only: the other symbols have no bar, the coverage check fails.
    folder = tmp_path / "btc_only"
    for month, (first, last) in {"09": (dt.date(2021, 9, 1), dt.date(2021, 9, 30)), "10": (OCT, LAST_OCT)}.items():
        write_csv(folder / f"BTCUSDT-1d-2021-{month}.csv", bulk_lines(klines_of("BTCUSDT", first, last), interval="1d"))

    result = materialize_range([daily_bars], "2021-09-28", "2021-10-07", files(data_dir, folder), instance,
                               raise_on_error=False)

    assert not result.success and check_results(result)["coverage"] is False
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "Nothing was stored" in failure.event_specific_data.error.message
    assert snapshot(data_dir) == before
    pd.testing.assert_frame_equal(stored_bars(data_dir), rows)


def test_features_refuse_to_run_on_missing_bars_and_keep_their_rows(tmp_path, instance):
    data_dir = tmp_path / "data"
    database = str(data_dir / "warehouse.duckdb")
    bars = embedded_daily_bars()
    write_table(database, "daily_bars", bars)
    resources = embedded(data_dir)
    assert materialize_range(all_assets, "2024-03-01", "2024-03-07", resources, instance, selection=["trend_features"]).success
    stored = read_table(database, "trend_features")
    assert len(stored) == 7 * 13
    # The bars of the range go missing (a wiped table, a run pointed at the wrong warehouse...).
    write_table(database, "daily_bars", bars[bars.date < dt.date(2024, 3, 1)].reset_index(drop=True))
    before = warehouse_bytes(data_dir)

    result = materialize_range(all_assets, "2024-03-01", "2024-03-07", resources, instance, selection=["trend_features"],
                               raise_on_error=False)

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "daily_bars has no bar for 91 asset-days" in failure.event_specific_data.error.message
    assert warehouse_bytes(data_dir) == before
    pd.testing.assert_frame_equal(read_table(database, "trend_features"), stored)


# --------------------------------------------------------------------------- 5. crashes and signals

CLI = [sys.executable, "-m", "regime_pipeline"]
FIRST, LAST = "2021-09-27", "2021-10-03"  # a week with 1-minute bars


def dagster_home(tmp_path: Path) -> Path:
    """A Dagster home whose dagster.yaml is the project's, with its storage moved under `tmp_path`."""
    home = tmp_path / "home"
    write_instance_yaml(home)
    return home


def open_instance(home: Path) -> dg.DagsterInstance:
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def claimed(instance: dg.DagsterInstance) -> dict[str, int]:
    """Runs holding a claimed pool slot."""
    return {run_id: n for run_id, n in slots_held(instance).items() if n}


def fake_holder(instance: dg.DagsterInstance, pid: int) -> str:
    """A run in progress, executed by process `pid`, holding the `warehouse` pool slot."""
    from dagster._core.events import EngineEventData
    from dagster._core.storage.dagster_run import DagsterRun

    run = DagsterRun(job_name="holder", run_id=make_new_run_id(), status=DagsterRunStatus.STARTED)
    instance.add_run(run)
    instance.report_engine_event(f"Executing steps in process (pid: {pid})", run, EngineEventData.in_process(pid))
    storage = instance.event_log_storage
    if "warehouse" not in storage.get_concurrency_keys():
        storage.initialize_concurrency_limit_to_default("warehouse")
    assert storage.claim_concurrency_slot("warehouse", run.run_id, "daily_bars", 0).is_claimed
    return run.run_id


def test_a_run_killed_holding_the_warehouse_slot_is_freed_and_the_waiting_run_stores_a_clean_runs_rows(tmp_path):
    home, data_dir = dagster_home(tmp_path), tmp_path / "data"
    env = {**os.environ, "DAGSTER_HOME": str(home), "REGIME_DATA_DIR": str(data_dir)}
    instance = open_instance(home)
    victim = subprocess.Popen(
        [*WORKERS, "materialize", str(data_dir), FIRST, LAST, "--select", "daily_bars", "--home", str(home), "--hang"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    command = None
    try:
        assert victim.stdout.readline().strip() == "ready"
        # Hung inside its step, holding the slot, while another run starts and queues behind it. (Not
        # SIGSTOP at a random moment: stopped inside a SQLite read, it would lock the instance's
        # databases for every other process, which is SQLite's limit, not what is tested here.)
        assert victim.stdout.readline().strip() == "hanging"
        holder = claimed(instance)
        assert holder, "daily_bars computes without holding the warehouse slot"
        (run_id,) = holder
        command = subprocess.Popen([*CLI, "run", "--start", FIRST, "--end", LAST, "--until", "bars"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: set(slots_held(instance)) - {run_id}, 300, "the second run to queue for the slot")
        os.kill(victim.pid, signal.SIGKILL)  # a real kill -9
        victim.wait(timeout=30)
        killed = time.monotonic()
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED and claimed(instance) == holder
        out, err = command.communicate(timeout=300)
        took = time.monotonic() - killed
    finally:
        for proc in (victim, command):
            if proc is not None:
                proc.kill()
                proc.wait()

    assert command.returncode == 0, err[-3000:]
    # Freed by the waiting command's periodic check, within check_every_s of the kill (plus the rest of its run).
    assert f"run {run_id} (__ephemeral_asset_job__): its process {victim.pid} died before the run finished; " \
           "marked it failed and freed 1 pool slot(s)" in err
    assert took < run_settings()["check_every_s"] + 120, took
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE and claimed(instance) == {}

    with dg.instance_for_test() as clean_instance:
        assert materialize_range(BARS, FIRST, LAST, embedded(tmp_path / "clean"), clean_instance).success
    pd.testing.assert_frame_equal(stored_bars(data_dir), stored_bars(tmp_path / "clean"), check_exact=True)
    assert lake_bytes(data_dir / "lake" / "minute_bars") == lake_bytes(tmp_path / "clean" / "lake" / "minute_bars")


def test_the_sensor_and_recover_free_a_dead_runs_slot(tmp_path):
    home = dagster_home(tmp_path)
    instance = open_instance(home)
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        instance.event_log_storage.set_concurrency_slots("warehouse", 2)  # room for a dead and a live holder
        dead_run = fake_holder(instance, dead.pid)
        dead.kill()
        dead.wait()
        alive_run = fake_holder(instance, alive.pid)
        assert set(claimed(instance)) == {dead_run, alive_run}

        from regime_pipeline.recovery import dead_run_sensor

        with dg.build_sensor_context(instance=instance) as context:
            result = dead_run_sensor(context)
        assert dead_run in result.skip_message
        assert instance.get_run_by_id(dead_run).status == DagsterRunStatus.FAILURE
        assert set(claimed(instance)) == {alive_run}
        assert instance.get_run_by_id(alive_run).status == DagsterRunStatus.STARTED

        alive.kill()
        alive.wait()
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        recover = subprocess.run([*CLI, "recover"], env=env, capture_output=True, text=True, timeout=120)
        assert recover.returncode == 0 and "1 run(s) freed" in recover.stdout
        assert f"run {alive_run} (holder): its process {alive.pid} died" in recover.stderr
        assert claimed(instance) == {}
    finally:
        for proc in (dead, alive):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("sig", "times"),
    [(signal.SIGTERM, 1), pytest.param(signal.SIGINT, 2, marks=pytest.mark.slow)],
    ids=["SIGTERM", "Ctrl-C twice"],
)
def test_regime_pipeline_run_stops_on_a_signal_while_it_waits_for_the_warehouse_slot(tmp_path, sig, times):
    # Another run, alive, holds the slot: daily_bars waits for it, in a loop that defers signals.
    home = dagster_home(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(home), "REGIME_DATA_DIR": str(tmp_path / "data")}
    instance = open_instance(home)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    command = subprocess.Popen([*CLI, "run", "--start", FIRST, "--end", LAST, "--until", "bars"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        holder = fake_holder(instance, alive.pid)
        waiting = wait_until(lambda: set(slots_held(instance)) - {holder}, 300, "daily_bars to queue for the slot")
        time.sleep(1.0)
        sent = time.monotonic()
        for _ in range(times):
            command.send_signal(sig)
            time.sleep(0.2)
        out, err = command.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        command.kill()
        alive.kill()
        alive.wait()

    assert command.returncode == 128 + sig, err[-3000:]
    assert f"{sig.name} received: stopping" in err and f"stopped by {sig.name}" in err
    grace = run_settings()["stop_grace_s"]
    assert took < (grace + 15 if times == 1 else 15), took
    (run_id,) = waiting
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    assert set(slots_held(instance)) == {holder}  # its queued claim is gone; the live run keeps its slot
    assert instance.get_run_by_id(holder).status == DagsterRunStatus.STARTED
