"""The batching event log against Dagster's stock SQLite storage.

The same runs go to an instance configured as the project's ``dagster.yaml`` configures it and
to one on the stock ``storage: sqlite``; after each, both must hold the same events per asset
partition and report the same materialized, failed and in-progress partitions. A run killed
between its steps, or in the middle of a batch, must leave recorded exactly the partitions the
instance reports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.events import DagsterEventType
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from regime_pipeline import instance as project_instance
from regime_pipeline.instance import event_log
from regime_pipeline_tests import eventlog_job as job
from regime_pipeline_tests.conftest import write_instance_yaml

ASSETS = ("upstream", "downstream")
CHECK_KEY = dg.AssetCheckKey(dg.AssetKey("upstream"), job.CHECK)


@pytest.fixture
def batch_env(monkeypatch):
    """No ``DAGSTER_EVENT_BATCH_SIZE`` to start with (the storage sets it); restored afterwards."""
    monkeypatch.setenv(event_log.BATCH_SIZE_ENV, "unset")
    monkeypatch.delenv(event_log.BATCH_SIZE_ENV)


def _open(home: Path, storage: str) -> dg.DagsterInstance:
    write_instance_yaml(home, storage)
    return dg.DagsterInstance.from_config(str(home))


def snapshot(instance: dg.DagsterInstance) -> dict:
    """What the UI is built from: per run (oldest first) its status and the event types of each
    (asset, partition); per asset the materialized, failed and in-progress partitions; the
    check's latest status."""
    runs = []
    for run in reversed(instance.get_runs()):
        events = defaultdict(list)
        for record in instance.get_records_for_run(run.run_id).records:
            event = record.event_log_entry.dagster_event
            if event is not None and event.asset_key is not None:
                events[(event.asset_key.to_user_string(), event.partition)].append(event.event_type_value)
        runs.append((run.status, dict(events)))
    status = {}
    for name in ASSETS:
        key = dg.AssetKey(name)
        value = get_and_update_asset_status_cache_value(instance, key, job.DAYS)
        status[name] = {
            "materialized": sorted(value.deserialize_materialized_partition_subsets(job.DAYS).get_partition_keys()),
            "failed": sorted(value.deserialize_failed_partition_subsets(job.DAYS).get_partition_keys()),
            "in_progress": sorted(value.deserialize_in_progress_partition_subsets(job.DAYS).get_partition_keys()),
            "index": sorted(instance.get_materialized_partitions(key)),
        } if value else None
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([CHECK_KEY]).get(CHECK_KEY)
    return {"runs": runs, "status": status, "check": latest.status if latest else None, "index": index_tables(instance)}


def index_tables(instance: dg.DagsterInstance) -> dict:
    """What ``index.db`` holds besides check executions: its copy of the events (type, asset,
    partition), the asset events' indexed tags, and each asset's row (the run, by position, and
    the partition of its latest materialization)."""
    runs = {run.run_id: i for i, run in enumerate(reversed(instance.get_runs()))}
    with instance.event_log_storage.index_connection() as conn:
        events = Counter(conn.execute(sa.text("SELECT dagster_event_type, asset_key, partition FROM event_logs")).all())
        tags = Counter(conn.execute(sa.text("SELECT asset_key, key FROM asset_event_tags")).all())
    rows = {}
    for record in instance.get_asset_records():
        entry = record.asset_entry
        latest = entry.last_materialization_record
        rows[entry.asset_key.to_user_string()] = (
            runs.get(entry.last_run_id), latest.partition_key if latest else None,
            latest.event_log_entry.dagster_event_type if latest else None,
        )
    return {"events": events, "tags": tags, "assets": rows}


def recorded_materializations(instance: dg.DagsterInstance, asset: str) -> list[str]:
    """Partitions of `asset` with a materialization in some run's own event log."""
    keys = set()
    for run in instance.get_runs():
        for record in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
            if record.event_log_entry.dagster_event.asset_key == dg.AssetKey(asset):
                keys.add(record.event_log_entry.dagster_event.partition)
    return sorted(keys)


def test_the_project_instance_uses_the_batching_storage_and_switches_batching_on(tmp_path, batch_env):
    with _open(tmp_path / "home", "project") as instance:
        assert isinstance(instance.event_log_storage, project_instance.BatchingSqliteEventLogStorage)
        assert os.environ[event_log.BATCH_SIZE_ENV] == str(event_log.EVENT_BATCH_SIZE)
        # It reads and writes the folders the stock `storage: sqlite` uses.
        assert instance.event_log_storage._base_dir == str(tmp_path / "home" / "storage" / "history" / "runs")


def test_same_events_and_partition_status_as_the_stock_storage(tmp_path, monkeypatch, batch_env):
    steps = [
        lambda i: job.run_range(i, "2024-01-01", "2024-01-06"),
        # downstream fails: upstream's six days materialized, downstream's failed
        lambda i: job.run_range(i, "2024-01-04", "2024-01-09", fail_partitions=["2024-01-08"]),
        # one partition per run, two of them failing
        *[(lambda key: lambda i: job.run_partition(i, key, fail_partitions=["2024-01-11", "2024-01-13"]))(f"2024-01-{d}")
          for d in range(10, 14)],
        # a re-run turns failed days green
        lambda i: job.run_range(i, "2024-01-07", "2024-01-11"),
    ]
    monkeypatch.setenv(event_log.BATCH_SIZE_ENV, "0")  # the stock storage, unbatched
    with _open(tmp_path / "stock", "stock") as stock:
        stock_snapshots = []
        for step in steps:
            step(stock)
            stock_snapshots.append(snapshot(stock))
    monkeypatch.delenv(event_log.BATCH_SIZE_ENV)
    with _open(tmp_path / "batching", "project") as batching:
        for step, expected in zip(steps, stock_snapshots, strict=True):
            step(batching)
            assert snapshot(batching) == expected
        assert batching.event_log_storage.batches_written > 0
    final = stock_snapshots[-1]["status"]
    assert final["downstream"]["failed"] == ["2024-01-04", "2024-01-05", "2024-01-06", "2024-01-13"]
    assert final["upstream"]["materialized"] == [f"2024-01-{d:02d}" for d in range(1, 14)]


def test_a_range_run_checks_once_with_one_execution_row(tmp_path, batch_env):
    """The stock storage adds a planned row per partition that the run's evaluation (which has no
    partition) never updates; the batching storage plans and records the check on one row."""
    with _open(tmp_path / "batching", "project") as batching:
        job.run_range(batching, "2024-01-01", "2024-01-10")
        history = batching.event_log_storage.get_asset_check_execution_history(CHECK_KEY, limit=100)
    assert [(r.partition, r.status.value) for r in history] == [(None, "SUCCEEDED")]
    with _open(tmp_path / "stock", "stock") as stock:
        job.run_range(stock, "2024-01-01", "2024-01-10")
        history = stock.event_log_storage.get_asset_check_execution_history(CHECK_KEY, limit=100)
    assert len(history) == 11 and history[0].partition is None and history[0].status.value == "SUCCEEDED"
    assert {r.status.value for r in history[1:]} == {"PLANNED"}


def test_run_metadata_is_stored_once_per_run(tmp_path, batch_env):
    with _open(tmp_path / "home", "project") as instance:
        job.run_range(instance, "2024-01-01", "2024-01-10")
        events = instance.fetch_materializations(dg.AssetKey("upstream"), limit=100).records
    metadata = {r.partition_key: r.asset_materialization.metadata for r in events}
    assert metadata["2024-01-10"]["rows"].value == 130 and metadata["2024-01-10"]["first"].value == "2024-01-01"
    assert all(set(m) == {"summary_on"} and m["summary_on"].value == "2024-01-10"
               for key, m in metadata.items() if key != "2024-01-10")


def _kill_run(home: Path, marker: Path, *args: str) -> None:
    """Start the job over January 2024 in a process of its own, SIGKILL it once `marker` exists."""
    env = {k: v for k, v in os.environ.items() if k != event_log.BATCH_SIZE_ENV}
    child = subprocess.Popen([sys.executable, "-m", "regime_pipeline_tests.eventlog_job", str(home),
                              "2024-01-01", "2024-01-31", *args], env=env)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never reached the point to kill it at"
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()


@pytest.mark.parametrize("storage", ["stock", "project"])
def test_a_run_killed_between_steps_records_what_it_reports(tmp_path, storage, batch_env):
    home, marker = tmp_path / storage, tmp_path / "downstream_started"
    write_instance_yaml(home, storage)
    _kill_run(home, marker, "--hold", str(marker))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        state = snapshot(instance)
        january = [f"2024-01-{d:02d}" for d in range(1, 32)]
        assert recorded_materializations(instance, "upstream") == state["status"]["upstream"]["materialized"] == january
        assert state["status"]["upstream"]["index"] == january
        assert recorded_materializations(instance, "downstream") == [] and state["status"]["downstream"]["in_progress"] == january
        assert state["runs"][0][0] == dg.DagsterRunStatus.STARTED


@pytest.mark.parametrize("storage", ["stock", "project"])
def test_a_run_killed_inside_a_batch_records_what_it_reports(tmp_path, storage, batch_env):
    """Killed after the 10th of upstream's 31 materializations was stored: the stock storage
    keeps those 10, the batching storage none of the batch; each reports what it recorded."""
    home, marker = tmp_path / storage, tmp_path / "stalled"
    write_instance_yaml(home, storage)
    _kill_run(home, marker, "--stall-batch-after", "10", str(marker))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        state = snapshot(instance)["status"]["upstream"]
        recorded = recorded_materializations(instance, "upstream")
    assert recorded == state["materialized"] == state["index"]
    assert len(recorded) == (10 if storage == "stock" else 0)


def test_dagster_is_a_version_the_storage_was_checked_against():
    assert event_log.dagster_version_checked(), (
        f"Dagster {dg.__version__} is installed, but BatchingSqliteEventLogStorage relies on Dagster "
        f"internals checked against {', '.join(event_log.CHECKED_DAGSTER_VERSIONS)} only: read "
        "regime_pipeline/instance/event_log.py against the new version, run this module's tests, "
        "then add the version to CHECKED_DAGSTER_VERSIONS (and pin it in pyproject.toml)."
    )


def test_the_internals_it_overrides_are_there():
    for name in ("_connect", "_initdb", "_event_to_row", "_store_asset_event", "_store_asset_event_tags",
                 "_has_asset_key_col_on_connection", "_store_asset_check_evaluation_planned",
                 "store_asset_check_event", "store_event_batch", "has_table"):
        assert hasattr(SqliteEventLogStorage, name), name
    assert {"_initialized_dbs", "_db_lock"} <= set(SqliteEventLogStorage.__init__.__code__.co_names)


def test_on_an_unchecked_version_it_warns_and_stores_like_the_stock_storage(tmp_path, monkeypatch, batch_env):
    monkeypatch.setattr(event_log, "CHECKED_DAGSTER_VERSIONS", ("0.0.0",))
    with pytest.warns(UserWarning, match="checked against Dagster 0.0.0"):
        instance = _open(tmp_path / "home", "project")
    with instance:
        assert event_log.BATCH_SIZE_ENV not in os.environ
        job.run_range(instance, "2024-01-01", "2024-01-05")
        assert instance.event_log_storage.batches_written == 0
        assert sorted(instance.get_materialized_partitions(dg.AssetKey("upstream"))) == [f"2024-01-0{d}" for d in range(1, 6)]


def test_a_process_built_from_the_instance_ref_batches(tmp_path, batch_env):
    """Run and step processes launched by the daemon or the webserver rebuild the instance from
    its reference: they get the same event log, which switches batching on in them."""
    with _open(tmp_path / "home", "project") as instance:
        ref = instance.get_ref()
    os.environ.pop(event_log.BATCH_SIZE_ENV)
    with dg.DagsterInstance.from_ref(ref) as rebuilt:
        assert isinstance(rebuilt.event_log_storage, project_instance.BatchingSqliteEventLogStorage)
        assert os.environ[event_log.BATCH_SIZE_ENV] == str(event_log.EVENT_BATCH_SIZE)


TRACE_BATCHES = """
import logging, os
handler = logging.FileHandler(os.environ["EVENT_LOG_TRACE"])
handler.setFormatter(logging.Formatter("%(process)d %(message)s"))
log = logging.getLogger("regime_pipeline.instance")
log.setLevel(logging.DEBUG)
log.addHandler(handler)
"""


def test_dagster_asset_materialize_writes_in_batches(tmp_path, batch_env):
    """The README's `dagster asset materialize`, as a user runs it: its process plans the run, the
    step processes it starts store the materializations, all of them in batches. A
    ``sitecustomize`` on PYTHONPATH makes every process append this storage's log to a file."""
    home, trace, site = tmp_path / "home", tmp_path / "batches.log", tmp_path / "site"
    write_instance_yaml(home)
    site.mkdir()
    (site / "sitecustomize.py").write_text(TRACE_BATCHES)
    env = {k: v for k, v in os.environ.items() if k != event_log.BATCH_SIZE_ENV}
    env.update(DAGSTER_HOME=str(home), EVENT_LOG_TRACE=str(trace), PYTHONPATH=str(site))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "regime_pipeline_tests.eventlog_job",
         "--select", "upstream,downstream", "--partition-range", "2024-01-01...2024-01-20"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    batches = [line.split() for line in trace.read_text().splitlines()]
    # planned: 20 days of each asset and the check; then each asset's 20 materializations
    assert sorted(int(b[2]) for b in batches) == [20, 20, 41], batches
    assert len({b[0] for b in batches}) == 3  # the command's process and one per step
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_materialized_partitions(dg.AssetKey("downstream"))) == 20
