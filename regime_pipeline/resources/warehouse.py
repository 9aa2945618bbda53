"""The warehouse IO managers: each partition of an asset is a slice of one table, replaced atomically.

:class:`SliceTableIOManager` holds the semantics below once; :class:`DuckDBTableIOManager` (one
DuckDB file, the `local` deployment) and
:class:`~regime_pipeline.resources.warehouse_postgres.PostgresTableIOManager` (the `cluster`
deployment) give it a backend's primitives.

Unlike a plain delete-then-insert, the delete and the insert run in one transaction, so a
failed write leaves the slice as it was. Columns are inserted by name (a reordered frame
cannot shuffle values), a new column is added to an existing table, and rows outside the
partition being written are refused (they would survive the next re-run's delete and
break idempotency), as is an empty output over a slice that holds rows (a step whose inputs
were missing must not wipe good rows). Reads open the file read-only, so readers never block
each other, and come back ordered by the partition column.

An asset declares how its partitions map to rows with ``metadata={"partition_expr": "date"}``
(a ``DATE``/``TIMESTAMP`` column for time partitions, a text column for static ones).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import dagster as dg
import duckdb
import pandas as pd

from regime_pipeline.core.dbfile import open_db
from regime_pipeline.partitions import summary_partition


def connect(database: str, read_only: bool = False, wait_s: float = 60.0, log: Any | None = None):
    """Open `database`, waiting (bounded, logged to `log`) while another process holds a conflicting
    lock (a context manager); see :func:`regime_pipeline.core.dbfile.open_db`."""
    return open_db(database, wait_s=wait_s, read_only=read_only, log=log)


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    found = con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
    ).fetchone()
    return found is not None


def _slice(context: dg.OutputContext | dg.InputContext, expr: str | None) -> tuple[str, list[Any], str]:
    """SQL condition, parameters and a description of the partitions in `context`."""
    if not context.has_asset_partitions:
        return "TRUE", [], "all rows"
    if expr is None:
        raise dg.DagsterInvariantViolationError(
            f"asset {context.asset_key.to_user_string()} is partitioned but has no "
            "'partition_expr' metadata naming the column its partitions are stored in"
        )
    if isinstance(context.asset_partitions_def, dg.TimeWindowPartitionsDefinition):
        window = context.asset_partitions_time_window
        start, end = window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)
        return f"{expr} >= ? AND {expr} < ?", [start, end], f"{expr} in [{start:%Y-%m-%d}, {end:%Y-%m-%d})"
    keys = sorted(context.asset_partition_keys)
    return f"{expr} IN ({', '.join('?' for _ in keys)})", list(keys), f"{expr} in {keys}"


def _outside_slice(frame: pd.DataFrame, context: dg.OutputContext, expr: str) -> pd.DataFrame:
    column = frame[expr]
    if isinstance(context.asset_partitions_def, dg.TimeWindowPartitionsDefinition):
        window = context.asset_partitions_time_window
        values = pd.to_datetime(column)
        start = pd.Timestamp(window.start).tz_localize(None)
        end = pd.Timestamp(window.end).tz_localize(None)
        return frame.loc[(values < start) | (values >= end)]
    return frame.loc[~column.isin(context.asset_partition_keys)]


def _describe_output(context: dg.OutputContext, metadata: dict[str, Any]) -> None:
    """Attach `metadata` (it describes the whole slice written) to the output's materialization;
    for a run of several partitions, to the last partition's only, as the assets do."""
    last = summary_partition(list(context.asset_partition_keys)) if context.has_asset_partitions else None
    try:
        step = context.step_context if last is not None else None
    except dg.DagsterInvariantViolationError:  # an output context built outside a run
        step = None
    if step is None:
        context.add_output_metadata(metadata)
    else:
        step.add_asset_metadata(metadata, asset_key=context.asset_key, partition_key=last)


def _frame_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """DuckDB column types of the registered ``frame``."""
    return dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM frame)").fetchall())


def _storable(sql_type: str) -> str:
    # A column that is all None in the first slice written has type NULL; store it as text so
    # a later slice with values can be inserted.
    return "VARCHAR" if sql_type == '"NULL"' or sql_type == "NULL" else sql_type


def _refuse_empty_over_stored(qualified: str, description: str, stored: int) -> None:
    if stored:
        raise ValueError(
            f"{qualified}: the output for {description} is empty but {stored} rows are stored "
            "there; refusing to replace them with none (were the step's inputs missing?)"
        )


class SliceWriter(Protocol):
    """One table's side of a slice replacement, inside one open transaction (a backend's primitives)."""

    def table_exists(self) -> bool: ...
    def create_table(self) -> None: ...
    def add_new_columns(self) -> None: ...
    def count(self, where: str, params: list[Any]) -> int: ...
    def delete(self, where: str, params: list[Any]) -> int: ...
    def insert(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class SliceTableIOManager(dg.ConfigurableIOManager):
    """Stores pandas DataFrames as tables named after the asset (``<schema>.<asset>``), each
    partition a slice replaced in one transaction: the semantics of the module docstring, for
    every backend. A backend gives :meth:`_writer` (the primitives of one write transaction)
    and :meth:`_read`."""

    db_schema: str = "main"

    def _table(self, context: dg.OutputContext | dg.InputContext) -> str:
        return context.asset_key.path[-1]

    def _location(self) -> str:
        raise NotImplementedError

    def _writer(self, context: dg.OutputContext, table: str, frame: pd.DataFrame):
        """A context manager giving a :class:`SliceWriter` on an open transaction."""
        raise NotImplementedError

    def _read(self, context: dg.InputContext, table: str, where: str, params: list[Any], order: str) -> pd.DataFrame:
        """The rows of `table` matching `where`; raises :class:`LookupError` if it does not exist."""
        raise NotImplementedError

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{type(self).__name__} stores pandas DataFrames, got {type(obj).__name__}")
        table = self._table(context)
        expr = context.definition_metadata.get("partition_expr")
        where, params, description = _slice(context, expr)
        if context.has_asset_partitions and not obj.empty:
            stray = _outside_slice(obj, context, expr)
            if not stray.empty:
                raise ValueError(
                    f"{table}: {len(stray)} rows fall outside the partitions being written "
                    f"({description}), e.g. {expr}={stray[expr].iloc[0]!r}"
                )
        qualified = f"{self.db_schema}.{table}"
        with self._writer(context, table, obj) as writer:
            try:
                if not writer.table_exists():
                    if obj.empty:
                        writer.rollback()
                        context.log.info(f"{qualified}: nothing to store for {description}")
                        return
                    writer.create_table()
                writer.add_new_columns()
                if obj.empty:
                    _refuse_empty_over_stored(qualified, description, writer.count(where, params))
                deleted = writer.delete(where, params)
                if not obj.empty:
                    writer.insert()
                writer.commit()
            except Exception:
                writer.rollback()
                raise
        _describe_output(
            context,
            {
                "table": qualified,
                "slice": description,
                "rows": len(obj),
                "replaced_rows": int(deleted),
                "columns": dg.MetadataValue.table_schema(
                    dg.TableSchema(columns=[dg.TableColumn(str(n), str(t)) for n, t in obj.dtypes.items()])
                ),
            },
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        upstream = context.upstream_output
        table = self._table(context)
        expr = upstream.definition_metadata.get("partition_expr") if upstream is not None else None
        if context.has_asset_partitions and not context.asset_partition_keys:
            return pd.DataFrame()
        where, params, _ = _slice(context, expr)
        order = f" ORDER BY {expr}" if expr else ""
        try:
            return self._read(context, table, where, params, order)
        except LookupError:
            raise dg.DagsterInvariantViolationError(
                f"table {self.db_schema}.{table} does not exist in {self._location()}: "
                f"materialize {context.asset_key.to_user_string()} first"
            ) from None


class _DuckDBSlice:
    """:class:`SliceWriter` on a DuckDB connection with the output registered as ``frame``."""

    def __init__(self, con: duckdb.DuckDBPyConnection, schema: str, table: str) -> None:
        self.con, self.schema, self.table = con, schema, table
        self.qualified = f"{schema}.{table}"

    def table_exists(self) -> bool:
        return table_exists(self.con, self.schema, self.table)

    def create_table(self) -> None:
        columns = ", ".join(f'"{name}"::{_storable(sql_type)} AS "{name}"' for name, sql_type in _frame_types(self.con).items())
        self.con.execute(f"CREATE TABLE {self.qualified} AS SELECT {columns} FROM frame LIMIT 0")

    def add_new_columns(self) -> None:
        existing = _existing_columns(self.con, self.schema, self.table)
        for column, sql_type in _frame_types(self.con).items():
            if column not in existing:
                self.con.execute(f'ALTER TABLE {self.qualified} ADD COLUMN "{column}" {_storable(sql_type)}')

    def count(self, where: str, params: list[Any]) -> int:
        return self.con.execute(f"SELECT count(*) FROM {self.qualified} WHERE {where}", params).fetchone()[0]

    def delete(self, where: str, params: list[Any]) -> int:
        return self.con.execute(f"DELETE FROM {self.qualified} WHERE {where}", params).fetchone()[0]

    def insert(self) -> None:
        self.con.execute(f"INSERT INTO {self.qualified} BY NAME SELECT * FROM frame")

    def commit(self) -> None:
        self.con.execute("COMMIT")

    def rollback(self) -> None:
        self.con.execute("ROLLBACK")


def _existing_columns(con: Any, schema: str, table: str) -> set[str]:
    return {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()
    }


class DuckDBTableIOManager(SliceTableIOManager):
    """The warehouse as one DuckDB file (`database`): one writing process at a time (the
    `warehouse` pool), readers open it read-only."""

    database: str

    def _location(self) -> str:
        return self.database

    @contextmanager
    def _writer(self, context: dg.OutputContext, table: str, frame: pd.DataFrame) -> Iterator[_DuckDBSlice]:
        with connect(self.database, log=context.log) as con:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {self.db_schema}")
            con.register("frame", frame)
            con.execute("BEGIN TRANSACTION")
            try:
                yield _DuckDBSlice(con, self.db_schema, table)
            finally:
                con.unregister("frame")

    def _read(self, context: dg.InputContext, table: str, where: str, params: list[Any], order: str) -> pd.DataFrame:
        try:
            with connect(self.database, read_only=True, log=context.log) as con:
                if not table_exists(con, self.db_schema, table):
                    raise LookupError(table)
                return _query(con, f"SELECT * FROM {self.db_schema}.{table} WHERE {where}{order}", params)
        except FileNotFoundError:
            raise LookupError(table) from None


def read_table(database: str, table: str, where: str = "TRUE", params: Sequence[Any] = (), schema: str = "main") -> pd.DataFrame:
    """Read rows of a warehouse table outside Dagster (the CLI summary, notebooks, tests), read-only.

    :param database: the DuckDB file, or the Postgres URL of the cluster's warehouse (then
        `schema` ``main`` means the Postgres IO manager's default schema)
    """
    if database.startswith("postgres"):
        from regime_pipeline.resources.warehouse_postgres import WAREHOUSE_SCHEMA, read_postgres_table

        return read_postgres_table(database, table, where, params, WAREHOUSE_SCHEMA if schema == "main" else schema)
    with connect(database, read_only=True) as con:
        return _query(con, f"SELECT * FROM {schema}.{table} WHERE {where}", list(params))


def stored_values(
    database: str, table: str, column: str, where: str = "TRUE", params: Sequence[Any] = (), schema: str = "main",
    log: Any | None = None,
) -> set:
    """The distinct values of `column` in the rows of `table` matching `where`, read-only; empty when
    the warehouse or the table does not exist yet."""
    try:
        with connect(database, read_only=True, log=log) as con:
            if not table_exists(con, schema, table):
                return set()
            rows = con.execute(f'SELECT DISTINCT "{column}" FROM {schema}.{table} WHERE {where}', list(params)).fetchall()
    except FileNotFoundError:
        return set()
    return {value for (value,) in rows}


def _query(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]) -> pd.DataFrame:
    """Run `sql`; DATE columns come back as ``datetime.date`` (the project's day type), not timestamps."""
    relation = con.execute(sql, params)
    date_columns = [d[0] for d in relation.description if str(d[1]).upper() == "DATE"]
    frame = relation.df()
    for column in date_columns:
        frame[column] = frame[column].dt.date
    return frame
