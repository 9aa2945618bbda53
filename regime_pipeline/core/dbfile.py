"""A DuckDB file opened for one unit of work, waiting while another process holds its lock.

DuckDB lets one process write a database file at a time. The warehouse, the ledger and the paper
exchange open their file per operation and close it straight after, so several runs (or a test
and the code it checks) take turns instead of failing on the lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from regime_pipeline.core.data.lake import duckdb_connect


@contextmanager
def open_db(
    path: str | os.PathLike, wait_s: float = 60.0, read_only: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the DuckDB file `path` (created with its folder if missing), closed on exit."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            con = duckdb_connect(str(path), read_only=read_only)
            break
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
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
