"""Where a book of records lives: a DuckDB file on one machine, or a schema of a shared Postgres.

The ledger and the paper exchange are written through a :class:`Database`, so the same SQL runs
on both. Each opens a connection per unit of work (:meth:`Database.connect`), commits a unit in one
transaction (:func:`transaction`), and holds :meth:`Database.exclusive` around work that spans
several transactions and must not interleave with another process doing the same:

* :class:`DuckDBFile`: the file's own connection (read-only readers, a bounded wait on the lock,
  ``core/dbfile.py``) and an OS lock on ``<file>.lock``;
* :class:`PostgresSchema`: a schema of a Postgres database, statements written with DuckDB's ``?``
  placeholders translated to psycopg2's, and a transaction-scoped advisory lock, held by a
  connection of its own for as long as the exclusive work lasts: Postgres releases it when that
  transaction ends, or when the connection dies with its process, so a killed run never keeps it.

Rows read into pandas come back with the same dtypes from both (Postgres rows go through the
same DuckDB-to-pandas conversion as a DuckDB query's).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import duckdb
import pandas as pd
import pyarrow as pa

from regime_pipeline.core.dbfile import open_db
from regime_pipeline.core.dbfile import transaction as duckdb_transaction


class ExclusiveBusyError(TimeoutError):
    """Another process held the exclusive lock for longer than the caller would wait."""


class Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...


class Database(Protocol):
    """A place for tables: see the module docstring."""

    def connect(self, read_only: bool = False, log: Any | None = None) -> contextlib.AbstractContextManager[Any]: ...

    def exclusive(self, name: str, wait_s: float = 60.0) -> contextlib.AbstractContextManager[None]: ...

    @property
    def double(self) -> str: ...


@contextmanager
def transaction(con: Any) -> Iterator[Any]:
    """Everything inside is committed together, or rolled back together on an exception."""
    if isinstance(con, PostgresConnection):
        try:
            yield con
        except BaseException:
            con.raw.rollback()
            raise
        con.raw.commit()
    else:
        with duckdb_transaction(con):
            yield con


# -- DuckDB ------------------------------------------------------------------------------


class DuckDBFile:
    """Tables in the DuckDB file `path` (created with its folder when first written)."""

    double = "DOUBLE"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    def __repr__(self) -> str:
        return f"DuckDBFile({self.path!r})"

    def connect(self, read_only: bool = False, log: Any | None = None):
        return open_db(self.path, read_only=read_only, log=log)

    @contextmanager
    def exclusive(self, name: str, wait_s: float = 60.0) -> Iterator[None]:
        """Hold the OS lock of ``<file>.lock`` while inside (`name` only words the error: the
        lock covers the whole file)."""
        lock_path = Path(self.path + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("a")
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ExclusiveBusyError(
                            f"{lock_path} is held by another {name} (waited {wait_s:g}s): one at a time"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()


# -- Postgres ----------------------------------------------------------------------------


def psycopg2_dsn(url: str) -> str:
    """A libpq connection URI from a SQLAlchemy URL (``postgresql+psycopg2://...``), which
    Dagster's storage needs and libpq refuses."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a Postgres URL: {redact(url)}")
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


def redact(url: str) -> str:
    """`url` without its password, for logs and errors."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


_PLACEHOLDER = re.compile(r"\?")


def _translate(sql: str) -> str:
    # The project's statements carry no literal '?' or '%': the translation is exact for them.
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


# Postgres type OIDs -> Arrow types, so rows convert to pandas exactly as DuckDB's would.
_ARROW_TYPES = {
    16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 25: pa.string(), 1043: pa.string(),
    1042: pa.string(), 700: pa.float32(), 701: pa.float64(), 1082: pa.date32(), 1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"), 1700: pa.float64(),
}


def rows_to_arrow(description: Sequence[Any], rows: Sequence[Sequence[Any]]) -> pa.Table:
    """A psycopg2 result (its cursor ``description`` and rows) as an Arrow table typed from the
    columns' Postgres types (unknown types as text)."""
    columns = {}
    fields = []
    for i, column in enumerate(description):
        arrow_type = _ARROW_TYPES.get(column.type_code, pa.string())
        values = [row[i] for row in rows]
        if arrow_type == pa.float64() and column.type_code == 1700:
            values = [None if v is None else float(v) for v in values]
        elif arrow_type == pa.string() and column.type_code not in (25, 1043, 1042):
            values = [None if v is None else str(v) for v in values]
        columns[column.name] = pa.array(values, type=arrow_type)
        fields.append(pa.field(column.name, arrow_type))
    return pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields))


def arrow_to_frame(table: pa.Table) -> pd.DataFrame:
    """`table` as pandas through DuckDB, giving the dtypes a DuckDB query's ``.df()`` gives."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("result", table)
        return con.execute("SELECT * FROM result").df()
    finally:
        con.close()


class PostgresResult:
    """What :meth:`PostgresConnection.execute` returns: DuckDB's result methods on a cursor."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def fetchone(self):
        return self.cursor.fetchone()

    def fetchall(self):
        return self.cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount

    @property
    def description(self):
        return self.cursor.description

    def arrow(self) -> pa.Table:
        return rows_to_arrow(self.cursor.description, self.cursor.fetchall())

    def df(self) -> pd.DataFrame:
        return arrow_to_frame(self.arrow())


class PostgresConnection:
    """A psycopg2 connection with DuckDB's ``execute(sql, params)`` surface (``?`` placeholders),
    its statements run in `schema` (the search path)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PostgresResult:
        cursor = self.raw.cursor()
        if params:
            cursor.execute(_translate(sql), [_plain(p) for p in params])
        else:
            cursor.execute(sql)
        return PostgresResult(cursor)


def _plain(value: Any) -> Any:
    """numpy scalars as the Python values psycopg2 adapts."""
    return value.item() if hasattr(value, "item") and hasattr(value, "dtype") else value


def connect_postgres(url: str, wait_s: float = 30.0):
    """A psycopg2 connection to `url` (a SQLAlchemy or libpq URL), retried for up to `wait_s`
    seconds while the server does not answer."""
    import psycopg2

    dsn = psycopg2_dsn(url)
    began = time.monotonic()
    delay = 0.1
    while True:
        try:
            return psycopg2.connect(dsn, connect_timeout=10)
        except psycopg2.OperationalError as exc:
            if time.monotonic() - began > wait_s:
                raise ConnectionError(f"{redact(url)}: no connection after {wait_s:.0f}s: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def advisory_keys(*names: str) -> tuple[int, int]:
    """Two signed 32-bit keys for ``pg_advisory_xact_lock(int, int)`` from `names`, stable
    across processes and machines (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256("\x1f".join(names).encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True), int.from_bytes(digest[4:8], "big", signed=True)


class PostgresSchema:
    """Tables in `schema` of the Postgres database at `url` (the schema is created on first use)."""

    double = "DOUBLE PRECISION"

    def __init__(self, url: str, schema: str) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ValueError(f"schema {schema!r}: lower-case letters, digits and underscores only")
        self.url = url
        self.schema = schema

    def __repr__(self) -> str:
        return f"PostgresSchema({redact(self.url)!r}, schema={self.schema!r})"

    @contextmanager
    def connect(self, read_only: bool = False, log: Any | None = None) -> Iterator[PostgresConnection]:
        """A connection whose search path is the schema; closed on exit, uncommitted work rolled
        back (use :func:`transaction` to commit). Readers and writers never block each other."""
        raw = connect_postgres(self.url)
        try:
            with raw.cursor() as cursor:
                if not read_only:
                    # Two processes creating the schema at once would collide: they take turns.
                    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", advisory_keys("schema", self.schema))
                    cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                cursor.execute(f"SET search_path TO {self.schema}")
            raw.commit()
            if read_only:
                raw.set_session(readonly=True)
            yield PostgresConnection(raw)
        finally:
            with contextlib.suppress(Exception):
                raw.rollback()
            raw.close()

    @contextmanager
    def exclusive(self, name: str, wait_s: float = 60.0) -> Iterator[None]:
        """Hold a transaction-scoped advisory lock on (`schema`, `name`) while inside, on a
        connection of its own whose transaction stays open until the block ends; waits up to
        `wait_s` seconds for another holder."""
        keys = advisory_keys(self.schema, name)
        raw = connect_postgres(self.url)
        try:
            deadline = time.monotonic() + wait_s
            with raw.cursor() as cursor:
                while True:
                    cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", keys)
                    if cursor.fetchone()[0]:
                        break
                    if time.monotonic() >= deadline:
                        raise ExclusiveBusyError(
                            f"{self.schema}: the lock of {name} is held by another process (waited {wait_s:g}s): one at a time"
                        )
                    time.sleep(0.05)
            yield
        finally:
            with contextlib.suppress(Exception):
                raw.rollback()  # ends the transaction: the advisory lock goes with it
            raw.close()


def create_tables(con: Any, db: Database, statements: Sequence[str]) -> None:
    """Run `statements` (``CREATE ... IF NOT EXISTS``, with ``{double}`` for the database's
    DOUBLE) in the open transaction of `con`. On Postgres, processes creating the same tables at
    once take turns (an advisory lock until the transaction ends) instead of colliding."""
    if isinstance(db, PostgresSchema):
        con.execute("SELECT pg_advisory_xact_lock(?, ?)", list(advisory_keys("tables", db.schema)))
    for statement in statements:
        con.execute(statement.format(double=db.double))


def database_for(location: str | os.PathLike, schema: str | None = None) -> Database:
    """A Postgres URL (with `schema`) or a DuckDB file path."""
    text = str(location)
    if text.startswith(("postgresql", "postgres:")):
        if schema is None:
            raise ValueError("a Postgres location needs a schema")
        return PostgresSchema(text, schema)
    return DuckDBFile(text)
