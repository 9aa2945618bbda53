"""The warehouse on Postgres (the `cluster` deployment): the DuckDB IO manager's slices, shared.

Same semantics as :class:`~regime_pipeline.resources.warehouse.DuckDBTableIOManager`, from the
same :class:`~regime_pipeline.resources.warehouse.SliceTableIOManager`: a partition's rows are
deleted and inserted in one transaction, rows outside the partition and an empty output over
stored rows are refused, new columns are added. What differs:

* **Types.** The output frame is registered in an in-memory DuckDB and its column types are the
  ones DuckDB would store; they are created as the matching Postgres types, and the rows
  inserted are the values DuckDB casts them to. Reads convert rows to pandas through DuckDB as
  well, so a table read back is the frame the DuckDB warehouse gives, dtypes included.
* **Concurrency.** Postgres lets many processes write at once, and readers never wait for
  writers. Writers of one table take a transaction-scoped advisory lock on it first, so two
  runs creating a table or adding a column at the same moment take turns rather than fail;
  the lock is released with the transaction (or the dead connection of a killed run).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import duckdb
import pandas as pd

from regime_pipeline.core.database import PostgresConnection, PostgresSchema, advisory_keys, redact
from regime_pipeline.core.data.lake import duckdb_connect
from regime_pipeline.resources.warehouse import SliceTableIOManager, _existing_columns, _frame_types, _query, _storable

# The schema of the warehouse tables in the cluster's database (Dagster's own tables are in `public`).
WAREHOUSE_SCHEMA = "warehouse"

_EXACT = {
    "BOOLEAN": "BOOLEAN", "TINYINT": "SMALLINT", "SMALLINT": "SMALLINT", "UTINYINT": "SMALLINT",
    "INTEGER": "INTEGER", "USMALLINT": "INTEGER", "BIGINT": "BIGINT", "UINTEGER": "BIGINT",
    "UBIGINT": "NUMERIC", "HUGEINT": "NUMERIC", "FLOAT": "REAL", "DOUBLE": "DOUBLE PRECISION",
    "VARCHAR": "TEXT", "DATE": "DATE", "TIMESTAMP": "TIMESTAMP", "TIMESTAMP_NS": "TIMESTAMP",
    "TIMESTAMP_MS": "TIMESTAMP", "TIMESTAMP_S": "TIMESTAMP", "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
}


def postgres_type(duckdb_type: str) -> str:
    """The Postgres column type storing values of the DuckDB type `duckdb_type`."""
    storable = _storable(duckdb_type)
    if storable in _EXACT:
        return _EXACT[storable]
    if storable.startswith("DECIMAL"):
        return storable.replace("DECIMAL", "NUMERIC")
    raise TypeError(f"no Postgres column type for DuckDB's {duckdb_type} (store it as text or numbers)")


def _ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


class _PostgresSlice:
    """:class:`~regime_pipeline.resources.warehouse.SliceWriter` on a Postgres transaction; the
    output frame is registered as ``frame`` in `local`, an in-memory DuckDB."""

    def __init__(self, con: PostgresConnection, local: duckdb.DuckDBPyConnection, schema: str, table: str) -> None:
        self.con, self.local, self.schema, self.table = con, local, schema, table
        self.qualified = f"{schema}.{_ident(table)}"
        self.types = _frame_types(local)

    def table_exists(self) -> bool:
        found = self.con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [self.schema, self.table]
        ).fetchone()
        return found is not None

    def create_table(self) -> None:
        columns = ", ".join(f"{_ident(n)} {postgres_type(t)}" for n, t in self.types.items())
        self.con.execute(f"CREATE TABLE {self.qualified} ({columns})")

    def add_new_columns(self) -> None:
        existing = _existing_columns(self.con, self.schema, self.table)
        for column, sql_type in self.types.items():
            if column not in existing:
                self.con.execute(f"ALTER TABLE {self.qualified} ADD COLUMN {_ident(column)} {postgres_type(sql_type)}")

    def count(self, where: str, params: list[Any]) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {self.qualified} WHERE {where}", params).fetchone()[0])

    def delete(self, where: str, params: list[Any]) -> int:
        return self.con.execute(f"DELETE FROM {self.qualified} WHERE {where}", params).rowcount

    def insert(self) -> None:
        from psycopg2.extras import execute_values

        names = list(self.types)
        # The values DuckDB would store: each column cast to the type DuckDB gives it.
        casts = ", ".join(f"{_ident(n)}::{_storable(t)}" for n, t in self.types.items())
        rows = self.local.execute(f"SELECT {casts} FROM frame").fetchall()
        with self.con.raw.cursor() as cursor:
            execute_values(
                cursor, f"INSERT INTO {self.qualified} ({', '.join(_ident(n) for n in names)}) VALUES %s", rows,
                page_size=2000,
            )

    def commit(self) -> None:
        self.con.raw.commit()

    def rollback(self) -> None:
        self.con.raw.rollback()


class PostgresTableIOManager(SliceTableIOManager):
    """The warehouse as tables in `db_schema` of the Postgres database at `url`
    (``postgresql+psycopg2://user:password@host:port/database``)."""

    url: str
    db_schema: str = WAREHOUSE_SCHEMA

    def _location(self) -> str:
        return redact(self.url)

    def _schema(self) -> PostgresSchema:
        return PostgresSchema(self.url, self.db_schema)

    @contextmanager
    def _writer(self, context: dg.OutputContext, table: str, frame: pd.DataFrame) -> Iterator[_PostgresSlice]:
        local = duckdb_connect()
        try:
            local.register("frame", frame)
            with self._schema().connect(log=context.log) as con:
                con.execute("SELECT pg_advisory_xact_lock(?, ?)", list(advisory_keys(self.db_schema, table)))
                yield _PostgresSlice(con, local, self.db_schema, table)
        finally:
            local.close()

    def _read(self, context: dg.InputContext, table: str, where: str, params: list[Any], order: str) -> pd.DataFrame:
        return read_postgres_table(self.url, table, where, params, self.db_schema, order)


def read_postgres_table(
    url: str, table: str, where: str = "TRUE", params: Sequence[Any] = (), schema: str = WAREHOUSE_SCHEMA, order: str = "",
) -> pd.DataFrame:
    """Rows of `schema.table` matching `where` (``?`` placeholders), as the DuckDB warehouse
    would return them; :class:`LookupError` if the table does not exist."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
        raise ValueError(f"table name {table!r}")
    with PostgresSchema(url, schema).connect(read_only=True) as con:
        exists = con.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
        ).fetchone()
        if exists is None:
            raise LookupError(f"{schema}.{table}")
        result = con.execute(f"SELECT * FROM {schema}.{_ident(table)} WHERE {where}{order}", list(params)).arrow()
    local = duckdb_connect()
    try:
        local.register("result", result)
        return _query(local, "SELECT * FROM result", [])
    finally:
        local.close()


def write_postgres_table(url: str, table: str, frame: pd.DataFrame, schema: str = WAREHOUSE_SCHEMA) -> None:
    """Replace `schema.table` with `frame` in one transaction, typed as the IO manager types it
    (loading a table the earlier stages would have left, in notebooks and tests)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
        raise ValueError(f"table name {table!r}")
    local = duckdb_connect()
    try:
        local.register("frame", frame)
        with PostgresSchema(url, schema).connect() as con:
            con.execute("SELECT pg_advisory_xact_lock(?, ?)", list(advisory_keys(schema, table)))
            con.execute(f"DROP TABLE IF EXISTS {schema}.{_ident(table)}")
            writer = _PostgresSlice(con, local, schema, table)
            writer.create_table()
            writer.insert()
            writer.commit()
    finally:
        local.close()
