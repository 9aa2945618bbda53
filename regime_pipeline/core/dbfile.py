"""A DuckDB file opened for one unit of work, waiting (bounded, logged) while another process holds its lock.

DuckDB lets one process write a database file at a time, and a process holding it read-write
keeps every other process out, readers included; readers that open it read-only share it with
each other. The warehouse, the ledger and the paper exchange open their file per operation, read-only
when they only read, and close it straight after, so several runs (or a run and the UI, a test and
the code it checks) take turns instead of failing on the lock. A wait is logged when it begins and
when it ends, and gives up after `wait_s` seconds with an error naming the file and the holder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from regime_pipeline.core.data.lake import duckdb_connect

_log = logging.getLogger(__name__)


class DatabaseBusyError(TimeoutError):
    """Another process kept a DuckDB file locked for longer than the caller would wait."""


@contextmanager
def open_db(
    path: str | os.PathLike, wait_s: float = 60.0, read_only: bool = False, log: Any | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the DuckDB file `path`, closed on exit.

    Read-write opens create the file and its folder if missing; a read-only open of a missing file
    raises :class:`FileNotFoundError`. While another process holds a conflicting lock, retries with
    backoff for up to `wait_s` seconds, telling `log` (``info``) when the wait starts and ends.

    :raises DatabaseBusyError: if the lock is still held after `wait_s` seconds
    """
    log = log if log is not None else _log
    path = Path(path)
    mode = "read-only" if read_only else "read-write"
    if read_only and not path.exists():
        raise FileNotFoundError(f"{path}: no such DuckDB file")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    delay = 0.05
    waited = False
    while True:
        try:
            con = duckdb_connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if not waited:
                log.info(f"{path} is locked by another process; waiting up to {wait_s:.0f}s to open it {mode} ({exc})")
                waited = True
            if time.monotonic() - began > wait_s:
                raise DatabaseBusyError(
                    f"{path}: gave up opening it {mode} after waiting {wait_s:.0f}s for another process's lock: {exc}"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    if waited:
        log.info(f"{path}: opened {mode} after waiting {time.monotonic() - began:.1f}s")
    try:
        yield con
    finally:
        con.close()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Everything inside is committed together, or rolled back together on an exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
