"""DuckDB IO manager: each partition of an asset is a slice of one table, replaced atomically.

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

from collections.abc import Sequence
from typing import Any

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


class DuckDBTableIOManager(dg.ConfigurableIOManager):
    """Stores pandas DataFrames as DuckDB tables named after the asset (``<schema>.<asset>``)."""

    database: str
    db_schema: str = "main"

    def _table(self, context: dg.OutputContext | dg.InputContext) -> str:
        return context.asset_key.path[-1]

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
        with connect(self.database, log=context.log) as con:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {self.db_schema}")
            con.register("frame", obj)
            con.execute("BEGIN TRANSACTION")
            try:
                if not table_exists(con, self.db_schema, table):
                    if obj.empty:
                        con.execute("ROLLBACK")
                        context.log.info(f"{qualified}: nothing to store for {description}")
                        return
                    columns = ", ".join(
                        f'"{name}"::{_storable(sql_type)} AS "{name}"' for name, sql_type in _frame_types(con).items()
                    )
                    con.execute(f"CREATE TABLE {qualified} AS SELECT {columns} FROM frame LIMIT 0")
                self._add_new_columns(con, qualified, table)
                if obj.empty:
                    stored = con.execute(f"SELECT count(*) FROM {qualified} WHERE {where}", params).fetchone()[0]
                    if stored:
                        raise ValueError(
                            f"{qualified}: the output for {description} is empty but {stored} rows are stored "
                            "there; refusing to replace them with none (were the step's inputs missing?)"
                        )
                deleted = con.execute(f"DELETE FROM {qualified} WHERE {where}", params).fetchone()[0]
                if not obj.empty:
                    con.execute(f"INSERT INTO {qualified} BY NAME SELECT * FROM frame")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("frame")
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

    def _add_new_columns(self, con: duckdb.DuckDBPyConnection, qualified: str, table: str) -> None:
        existing = {
            row[0]
            for row in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                [self.db_schema, table],
            ).fetchall()
        }
        for column, sql_type in _frame_types(con).items():
            if column not in existing:
                con.execute(f'ALTER TABLE {qualified} ADD COLUMN "{column}" {_storable(sql_type)}')

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        upstream = context.upstream_output
        table = self._table(context)
        expr = upstream.definition_metadata.get("partition_expr") if upstream is not None else None
        if context.has_asset_partitions and not context.asset_partition_keys:
            return pd.DataFrame()
        where, params, _ = _slice(context, expr)
        order = f" ORDER BY {expr}" if expr else ""
        missing = dg.DagsterInvariantViolationError(
            f"table {self.db_schema}.{table} does not exist in {self.database}: "
            f"materialize {context.asset_key.to_user_string()} first"
        )
        try:
            with connect(self.database, read_only=True, log=context.log) as con:
                if not table_exists(con, self.db_schema, table):
                    raise missing
                return _query(con, f"SELECT * FROM {self.db_schema}.{table} WHERE {where}{order}", params)
        except FileNotFoundError:
            raise missing from None


def read_table(database: str, table: str, where: str = "TRUE", params: Sequence[Any] = (), schema: str = "main") -> pd.DataFrame:
    """Read rows of a warehouse table outside Dagster (the CLI summary, notebooks, tests), read-only."""
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
