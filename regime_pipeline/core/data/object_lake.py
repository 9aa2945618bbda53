"""The minute-bar lake on S3-compatible object storage, with a manifest table in Postgres.

The layout is the local lake's (``<root>/symbol=<S>/month=<YYYY-MM>/…parquet``, one object per
(symbol, UTC month) holding that month's stored days), written and found differently, because
object storage has no rename, no lock and a slow, eventually complete listing:

* **One upload per file, no rename.** Storing a day writes the month's merged rows as a new
  object under a fresh name (``<uuid>.parquet``), in one PUT of the whole file (no multipart
  upload), so no reader ever sees half an object and no name is ever overwritten.
* **A manifest instead of listing footers.** The table ``minute_files`` (Postgres schema
  ``lake``) names the current object of each (lake, symbol, month) and the days it holds. A new
  object becomes the month's file when the manifest row pointing to it commits; readers find
  objects through the manifest, never by listing. The replaced object is deleted after the
  commit; a crash in between leaves an unreferenced object, which no reader sees.
* **One writer per month.** A month's read, merge, upload and manifest update run under a
  transaction-scoped advisory lock on (lake, symbol, month), so two runs storing days of one
  month keep each other's days, and a killed writer releases it with its connection.

Reads fetch the month objects the manifest names for the range (concurrently) and aggregate
them with the same DuckDB queries as the local lake, registered from memory: DuckDB's httpfs
extension, which would read ``s3://`` itself, is downloaded at run time and is not relied on.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from regime_pipeline.core.data.bars import OHLCV_COLUMNS
from regime_pipeline.core.data.lake import COMPRESSION, FILE_SCHEMA, MinuteLake, _month, days_by_month, duckdb_connect
from regime_pipeline.core.database import PostgresSchema, advisory_keys, create_tables, transaction

MANIFEST_SCHEMA = "lake"
_MANIFEST = (
    """CREATE TABLE IF NOT EXISTS minute_files (
        lake TEXT NOT NULL, symbol TEXT NOT NULL, month TEXT NOT NULL, key TEXT NOT NULL, days TEXT NOT NULL,
        rows BIGINT NOT NULL, written_at TIMESTAMP NOT NULL DEFAULT now(), PRIMARY KEY (lake, symbol, month))""",
)


# Manifest reads and fetches a read may take when writers keep replacing what it reads.
READ_ATTEMPTS = 5


class ObjectMinuteLake(MinuteLake):
    """The lake under `root` (an ``s3://bucket/prefix`` :class:`UPath`), its manifest in the
    Postgres database at `manifest_url`."""

    def __init__(self, root: UPath, manifest_url: str) -> None:
        self.root = root
        self.manifest = PostgresSchema(manifest_url, MANIFEST_SCHEMA)
        self.name = str(root).rstrip("/")
        self._tables_ready = False

    def __repr__(self) -> str:
        return f"ObjectMinuteLake({self.name!r})"

    @contextmanager
    def _manifest(self, read_only: bool = False):
        with self.manifest.connect(read_only=read_only) as con:
            if not self._tables_ready and not read_only:
                with transaction(con):
                    create_tables(con, self.manifest, _MANIFEST)
                self._tables_ready = True
            yield con

    def _rows(self, symbols: Sequence[str] | None = None, months: tuple[str, str] | None = None) -> list[tuple]:
        """``(symbol, month, key, days)`` of the manifest's current objects."""
        clauses, params = ["lake = ?"], [self.name]
        if symbols is not None and not len(symbols):
            return []
        if symbols is not None:
            clauses.append(f"symbol IN ({', '.join('?' for _ in symbols)})")
            params += list(symbols)
        if months is not None:
            clauses.append("month >= ? AND month <= ?")
            params += list(months)
        with self._manifest() as con:
            return con.execute(
                f"SELECT symbol, month, key, days FROM minute_files WHERE {' AND '.join(clauses)} ORDER BY symbol, month",
                params,
            ).fetchall()

    def _object(self, key: str) -> UPath:
        return self.root / key

    def month_path(self, symbol: str, month: str) -> UPath:
        """The current object of (`symbol`, `month`) as the manifest names it."""
        rows = self._rows([symbol], (month, month))
        if not rows:
            raise FileNotFoundError(f"{self.name}: no object for {symbol} {month} in the manifest")
        return self._object(rows[0][2])

    def files(self) -> list[UPath]:
        return [self._object(key) for _, _, key, _ in self._rows()]

    def stored_days(self, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        records = [
            (symbol, dt.date.fromisoformat(d)) for symbol, _, _, days in self._rows(symbols) for d in days.split(",") if d
        ]
        return pd.DataFrame(records, columns=["symbol", "date"])

    def write_days(self, symbol: str, minutes: pd.DataFrame, replace: Iterable[dt.date] | None = None) -> list[UPath]:
        frame, day_of_row, months = days_by_month(minutes, replace)
        written = []
        for month, new_days in months.items():
            replaced = None
            with self._manifest() as con, transaction(con):
                # One writer per (symbol, month) until this transaction ends.
                con.execute("SELECT pg_advisory_xact_lock(?, ?)", list(advisory_keys(self.name, symbol, month)))
                row = con.execute(
                    "SELECT key FROM minute_files WHERE lake = ? AND symbol = ? AND month = ?", [self.name, symbol, month]
                ).fetchone()
                parts = [frame.loc[day_of_row.isin(new_days)]]
                if row is not None:
                    replaced = row[0]
                    old = pq.read_table(io.BytesIO(self._object(replaced).read_bytes())).to_pandas()
                    parts.append(old.loc[~old["open_time"].dt.floor("D").dt.date.isin(new_days)])
                merged = pd.concat([p for p in parts if len(p)] or [frame.iloc[:0]], ignore_index=True)
                merged = merged.sort_values("open_time", kind="stable")
                if merged.empty:
                    con.execute("DELETE FROM minute_files WHERE lake = ? AND symbol = ? AND month = ?", [self.name, symbol, month])
                    path = self._object(f"symbol={symbol}/month={month}")
                else:
                    key = f"symbol={symbol}/month={month}/{uuid.uuid4().hex}.parquet"
                    path = self._object(key)
                    stored = sorted({d.isoformat() for d in merged["open_time"].dt.floor("D").dt.date})
                    path.fs.pipe_file(path.path, _parquet_bytes(merged, stored))
                    con.execute(
                        "INSERT INTO minute_files (lake, symbol, month, key, days, rows) VALUES (?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (lake, symbol, month) DO UPDATE SET key = excluded.key, days = excluded.days, "
                        "rows = excluded.rows, written_at = now()",
                        [self.name, symbol, month, key, ",".join(stored), len(merged)],
                    )
            if replaced is not None:
                # After the commit: readers that took the old key a moment ago may still fetch it
                # and are told it is gone; readers from now on are sent to the new one.
                old_path = self._object(replaced)
                try:
                    old_path.fs.rm_file(old_path.path)
                except FileNotFoundError:
                    pass
            written.append(path)
        return written

    def _fetch(self, symbols: Sequence[str] | None, months: tuple[str, str]) -> tuple[list[tuple], list[UPath], dict]:
        """The manifest's rows for `symbols` and `months`, their objects and the objects' bytes.

        A writer may replace a month between the manifest read and the fetch, and deletes the
        object it replaced once its manifest row commits: the fetch is then told the object is
        gone, and the manifest, read again, names the new one.
        """
        for _ in range(READ_ATTEMPTS):
            rows = self._rows(symbols, months)
            if not rows:
                return rows, [], {}
            paths = [self._object(key) for _, _, key, _ in rows]
            try:
                return rows, paths, paths[0].fs.cat([p.path for p in paths])
            except FileNotFoundError:
                continue
        raise FileNotFoundError(f"{self.name}: the objects of months {months[0]}..{months[1]} were replaced while "
                                f"being read, {READ_ATTEMPTS} times in a row")

    @contextmanager
    def _scan(self, start: dt.date, end: dt.date, symbols: Sequence[str] | None) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
        last = end - dt.timedelta(days=1)
        rows, paths, contents = self._fetch(symbols, (_month(start), _month(last)))
        tables = []
        if rows:
            for (symbol, month, _, _), path in zip(rows, paths):
                table = pq.read_table(io.BytesIO(contents[path.path]))
                # As DuckDB reads the local files: timestamps in microseconds.
                at = table.schema.get_field_index("open_time")
                table = table.set_column(at, "open_time", table.column(at).cast(pa.timestamp("us")))
                n = table.num_rows
                tables.append(table.append_column("symbol", pa.array([symbol] * n, pa.string()))
                              .append_column("month", pa.array([month] * n, pa.string())))
        scanned = pa.concat_tables(tables) if tables else _empty_scan()
        with duckdb_connect() as con:
            con.register("lake_minutes", scanned)
            yield con, "lake_minutes"


def _empty_scan() -> pa.Table:
    schema = FILE_SCHEMA.append(pa.field("symbol", pa.string())).append(pa.field("month", pa.string()))
    return schema.empty_table()


def _parquet_bytes(frame: pd.DataFrame, stored_days: list[str]) -> bytes:
    """A month file's bytes, as the local lake writes it (schema, day list in the footer, codec)."""
    from regime_pipeline.core.data.lake import DAYS_KEY

    table = pa.Table.from_pandas(frame[["open_time", *OHLCV_COLUMNS]], schema=FILE_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata({DAYS_KEY: ",".join(stored_days).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=COMPRESSION)
    return buffer.getvalue()
