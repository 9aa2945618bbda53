"""A SQLite event log that writes a batch of events in one transaction per database.

Dagster's stock :class:`SqliteEventLogStorage` stores every event on its own: one transaction in
the run's database and, for asset and check events, another in ``index.db``, each on a newly
created SQLAlchemy engine. A single-run backfill of 3,059 days writes two such events per asset
and partition (planned, materialized), and setting up and tearing down those engines, not the
INSERTs, is where the time goes. With ``DAGSTER_EVENT_BATCH_SIZE`` set, Dagster hands a run's
planned events, and each step output's materializations, to ``store_event_batch`` together, but
the stock SQLite storage still writes them one at a time.

:class:`BatchingSqliteEventLogStorage` is the stock storage with these changes:

* ``store_event_batch`` writes the rows the stock ``store_event`` would write for each event of
  the batch, but inserted together (one statement per table) inside one transaction on the
  run's database and one on ``index.db``, committed at the end: a killed process leaves all of
  a batch or none of it.
* Within a batch, an asset's ``asset_keys`` row is written by the last event that sets each of its
  columns only, which leaves the row as writing every event in turn would.
* A check planned by a run of several partitions gets one ``asset_check_executions`` row instead
  of one per partition (see :meth:`~BatchingSqliteEventLogStorage._store_asset_check_evaluation_planned`).
* One engine per database file, kept (``NullPool``: a connection is opened per transaction and no
  file stays open between writes), and schema lookups that the stock code repeats for every
  event are remembered.

It reads and writes the stock layout (``<base_dir>/<run_id>.db`` and ``<base_dir>/index.db``), so
history written by either storage stays readable by the other.

Constructing the storage sets ``DAGSTER_EVENT_BATCH_SIZE`` in its process unless it is set
already (``0`` switches batching off), and child processes inherit it. Every process that
writes events builds its instance, and so this storage, from ``dagster.yaml`` or from the
instance reference it is handed: ``regime-pipeline run``, ``dagster asset materialize``, the
webserver and daemon of ``make ui`` and the run and step processes they launch.

It relies on Dagster internals (``SqliteEventLogStorage._connect``, ``_initdb``,
``_initialized_dbs``, ``_db_lock``, what ``store_event`` writes where, ``_event_to_row``,
``_store_asset_event``, ``_store_asset_event_tags``, ``_store_asset_check_evaluation_planned``
and how ``handle_new_event`` batches), read against the versions in
:data:`CHECKED_DAGSTER_VERSIONS`. On any other version it warns and stores every event as the
stock storage does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS, EVENT_TYPE_TO_PIPELINE_RUN_STATUS, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData, serialize_value
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

# The Dagster versions whose internals this storage was read against and tested with.
CHECKED_DAGSTER_VERSIONS = ("1.13.27",)

# Events held before Dagster hands them to `store_event_batch`; a batch also ends with its step
# output or its run's planned events. 1,000 keeps a 3,059-day backfill to a handful of
# transactions with a few MB of events in memory.
EVENT_BATCH_SIZE = 1000
BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"

# Engines kept for run databases; the index's is always kept. A process writes one or a few runs
# at a time, the webserver reads many.
MAX_RUN_ENGINES = 16

log = logging.getLogger(__name__)


def dagster_version_checked(version: str | None = None) -> bool:
    """Whether this storage was checked against Dagster `version` (default: the installed one)."""
    return (version or dg.__version__) in CHECKED_DAGSTER_VERSIONS


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage writing each batch of events in one transaction per database.

    Configured in ``dagster.yaml`` as::

        event_log_storage:
          module: regime_pipeline.instance
          class: BatchingSqliteEventLogStorage
          config:
            base_dir: data/dagster/storage/history/runs

    Attributes:
        events_written: events this object stored, one at a time or in batches.
        batches_written: batches among them (written by :meth:`store_event_batch`).
        seconds_writing: wall time spent storing them.
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._batching = dagster_version_checked()
        if not self._batching:
            warnings.warn(
                f"{type(self).__name__} was checked against Dagster {', '.join(CHECKED_DAGSTER_VERSIONS)}, "
                f"not {dg.__version__}: it writes events one at a time, as the stock SQLite storage does. "
                "Check its overrides against this version and add it to CHECKED_DAGSTER_VERSIONS.",
                stacklevel=2,
            )
        else:
            os.environ.setdefault(BATCH_SIZE_ENV, str(EVENT_BATCH_SIZE))
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._open = threading.local()
        self._tables_present: set[str] = set()
        self._asset_key_columns: set[str] = set()
        self.events_written = 0
        self.batches_written = 0
        self.seconds_writing = 0.0
        super().__init__(base_dir, inst_data)
        # The stock lock is held for as long as a connection is open; a batch holds the run's and
        # the index's connections at once, so the lock must be re-entrant.
        self._db_lock = threading.RLock()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> BatchingSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    # --- connections --------------------------------------------------------------------------

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            engine = self._engines.get(shard)
            if engine is None:
                engine = create_engine(
                    self.conn_string_for_shard(shard),
                    poolclass=NullPool,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                )
                self._engines[shard] = engine
                run_shards = [s for s in self._engines if s != INDEX_SHARD_NAME]
                for stale in run_shards[: max(0, len(run_shards) - MAX_RUN_ENGINES)]:
                    self._engines.pop(stale).dispose()
            else:
                self._engines.move_to_end(shard)
            return engine

    def _open_connections(self) -> dict[str, Connection]:
        if not hasattr(self._open, "connections"):
            self._open.connections = {}
        return self._open.connections

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        if not self._batching:
            with super()._connect(shard) as conn:
                yield conn
            return
        opened = self._open_connections()
        if shard in opened:
            # Inside a batch: join its transaction, committed when the batch ends.
            yield opened[shard]
            return
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                opened[shard] = conn
                try:
                    yield conn
                finally:
                    del opened[shard]

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        if not self._batching:
            return super()._has_asset_key_col_on_connection(conn, column_name)
        # Asked once per stored asset event; a column, once there, stays.
        if column_name not in self._asset_key_columns:
            if super()._has_asset_key_col_on_connection(conn, column_name):
                self._asset_key_columns.add(column_name)
        return column_name in self._asset_key_columns

    def has_table(self, table_name: str) -> bool:
        if not self._batching:
            return super().has_table(table_name)
        # Asked once per stored asset event (for the tags table); tables are never dropped.
        if table_name not in self._tables_present:
            with self.index_connection() as conn:
                if conn.dialect.has_table(conn, table_name):
                    self._tables_present.add(table_name)
        return table_name in self._tables_present

    # --- writes ---------------------------------------------------------------------------------

    def store_event(self, event: EventLogEntry) -> None:
        began = time.perf_counter()
        super().store_event(event)
        self._count(1, began)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store `events` (in order) with one transaction on each database they touch.

        The rows are those the stock :meth:`store_event` writes for each event in turn, inserted
        together. The run's database commits before ``index.db``, as it does for a single
        event; a failed statement (a database locked past the busy timeout) rolls both back, and
        Dagster then stores the events one by one. Only a failure of the index's commit itself,
        after the run's, would leave the run's log holding those events twice.
        """
        if not self._batching or len(events) <= 1:
            super().store_event_batch(events)
            return
        began = time.perf_counter()
        for run_id, run_events in _by_run(events):
            # The index is entered first so that it is committed last.
            with self.index_connection() as index, self.run_connection(run_id) as run:
                self._insert_batch(run, index, run_events)
        self.batches_written += 1
        self._count(len(events), began)
        log.debug("stored %d events in one transaction per database in %.1f ms",
                  len(events), 1000 * (time.perf_counter() - began))

    def _insert_batch(self, run: Connection, index: Connection, events: Sequence[EventLogEntry]) -> None:
        """What `SqliteEventLogStorage.store_event` writes for each of `events`, statement by
        statement kind: every event into the run's log; asset, check and run-status events into
        the index's log too; then the asset events' tags and asset rows, the checks' rows."""
        rows = [self._event_to_row(event) for event in events]
        run.execute(SqlEventLogStorageTable.insert(), rows)
        mirrored = [i for i, event in enumerate(events) if event.is_dagster_event and event.dagster_event_type in _MIRRORED]
        if not mirrored:
            return
        ids = index.execute(
            SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True),
            [rows[i] for i in mirrored],
        ).scalars().all()
        stored = [(events[i], event_id) for i, event_id in zip(mirrored, ids, strict=True)]
        assets = [(event, event_id) for event, event_id in stored if event.dagster_event_type in ASSET_EVENTS]
        if assets:
            self._store_asset_event_tags(index, [event for event, _ in assets], [event_id for _, event_id in assets])
            superseded = superseded_asset_entries([event for event, _ in assets])
            for event, event_id in assets:
                if id(event) not in superseded:
                    self._store_asset_event(index, event, event_id)
        for event, event_id in stored:
            if event.dagster_event_type in ASSET_CHECK_EVENTS:
                self.store_asset_check_event(event, event_id)

    def _count(self, events: int, began: float) -> None:
        self.events_written += events
        self.seconds_writing += time.perf_counter() - began

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        # A check planned by a run of several partitions gets one row, not one per partition:
        # Dagster evaluates a check once for such a run, with no partition, and that evaluation
        # updates only a row without partition. The stock per-partition rows are never updated
        # and show as skipped once the run ends.
        planned = event.get_dagster_event().asset_check_planned_data
        if not self._batching or planned.partitions_subset is None or len(planned.partitions_subset) <= 1:
            super()._store_asset_check_evaluation_planned(event, event_id)
            return
        with self.index_connection() as conn:
            conn.execute(
                AssetCheckExecutionsTable.insert().values(
                    asset_key=planned.asset_key.to_string(),
                    check_name=planned.check_name,
                    partition=None,
                    run_id=event.run_id,
                    execution_status=AssetCheckExecutionRecordStatus.PLANNED.value,
                    evaluation_event=serialize_value(event),
                    evaluation_event_timestamp=self._event_insert_timestamp(event),
                    evaluation_event_storage_id=event_id,
                )
            )

    def delete_events(self, run_id: str) -> None:
        super().delete_events(run_id)
        self._forget_engine(run_id)

    def wipe(self) -> None:
        super().wipe()
        with self._engines_lock:
            for shard in [s for s in self._engines if s != INDEX_SHARD_NAME]:
                self._engines.pop(shard).dispose()

    def _forget_engine(self, shard: str) -> None:
        with self._engines_lock:
            engine = self._engines.pop(shard, None)
        if engine is not None:
            engine.dispose()

    def dispose(self) -> None:
        super().dispose()
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


# Events the stock storage also writes into the index's log.
_MIRRORED = frozenset(ASSET_EVENTS | ASSET_CHECK_EVENTS | set(EVENT_TYPE_TO_PIPELINE_RUN_STATUS))

# The columns of the asset_keys row that each event type sets (`_get_asset_entry_values`).
_ASSET_ENTRY_COLUMNS = {
    DagsterEventType.ASSET_MATERIALIZATION: frozenset({"last_materialization", "last_run_id", "last_materialization_timestamp"}),
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED: frozenset({"last_run_id", "last_materialization_timestamp"}),
    DagsterEventType.ASSET_OBSERVATION: frozenset({"last_materialization_timestamp"}),
}


def superseded_asset_entries(events: Sequence[EventLogEntry]) -> frozenset[int]:
    """``id()`` of the events whose asset_keys update a later event in `events` overwrites.

    Writing only the others leaves every asset's row as writing all of them in order would.
    Event types not in ``_ASSET_ENTRY_COLUMNS`` are always written.
    """
    later: dict[Any, set[str]] = {}
    superseded = set()
    for event in reversed(events):
        dagster_event = event.dagster_event
        if dagster_event is None or dagster_event.asset_key is None:
            continue
        columns = _ASSET_ENTRY_COLUMNS.get(dagster_event.event_type)
        if columns is None:
            continue
        seen = later.setdefault(dagster_event.asset_key, set())
        if columns <= seen:
            superseded.add(id(event))
        seen |= columns
    return frozenset(superseded)


def _by_run(events: Sequence[EventLogEntry]) -> Iterator[tuple[str, list[EventLogEntry]]]:
    """Consecutive runs of `events` with the same run id (a batch normally has one)."""
    group: list[EventLogEntry] = []
    for event in events:
        if group and event.run_id != group[0].run_id:
            yield group[0].run_id, group
            group = []
        group.append(event)
    if group:
        yield group[0].run_id, group
