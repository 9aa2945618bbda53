"""The minute-bar lake: hive-partitioned Parquet, ``<root>/symbol=<S>/date=<YYYY-MM-DD>/data.parquet``.

One file per (symbol, UTC day), written atomically (temporary file, then rename), so a
crash mid-write leaves either the old day or the new one, never half a day. Reads go
through DuckDB, which prunes files by the hive path before opening any of them; the same
layout works unchanged on object storage.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from regime_pipeline.core.bars import OHLCV_COLUMNS

# What a lake file holds; symbol and date live in the path.
FILE_SCHEMA = pa.schema(
    [("open_time", pa.timestamp("ms"))] + [(c, pa.float64()) for c in OHLCV_COLUMNS]
)


def duckdb_connect(database: str | os.PathLike = ":memory:", read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection pinned to UTC, so a DATE cast never shifts a day."""
    con = duckdb.connect(str(database), read_only=read_only)
    con.execute("SET TimeZone = 'UTC'")
    return con


class MinuteLake:
    """Read and write 1-minute bars in the Parquet lake under `root`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def day_dir(self, symbol: str, day: dt.date) -> Path:
        return self.root / f"symbol={symbol}" / f"date={day.isoformat()}"

    def write_day(self, symbol: str, day: dt.date, minutes: pd.DataFrame) -> Path:
        """Replace the stored minutes of (`symbol`, `day`) with `minutes` (columns ``open_time`` + OHLCV)."""
        if not minutes.empty:
            days = minutes["open_time"].dt.floor("D").dt.date.unique()
            if len(days) != 1 or days[0] != day:
                raise ValueError(f"write_day({symbol}, {day}): rows span {sorted(days)}")
        table = pa.Table.from_pandas(
            minutes[["open_time", *OHLCV_COLUMNS]].sort_values("open_time"),
            schema=FILE_SCHEMA,
            preserve_index=False,
        )
        target_dir = self.day_dir(symbol, day)
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp = target_dir / f".tmp-{uuid.uuid4().hex}.parquet"
        pq.write_table(table, tmp, compression="zstd")
        target = target_dir / "data.parquet"
        os.replace(tmp, target)
        return target

    def delete_day(self, symbol: str, day: dt.date) -> None:
        shutil.rmtree(self.day_dir(symbol, day), ignore_errors=True)

    def stored_days(self, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        """``symbol, date`` of every stored day, from the directory names alone."""
        records = []
        if self.root.exists():
            for sym_dir in sorted(self.root.glob("symbol=*")):
                symbol = sym_dir.name.split("=", 1)[1]
                if symbols is not None and symbol not in symbols:
                    continue
                for day_dir in sorted(sym_dir.glob("date=*")):
                    if (day_dir / "data.parquet").exists():
                        records.append((symbol, dt.date.fromisoformat(day_dir.name.split("=", 1)[1])))
        return pd.DataFrame(records, columns=["symbol", "date"])

    def last_stored_day(self, symbol: str) -> dt.date | None:
        days = self.stored_days([symbol])
        return None if days.empty else days["date"].max()

    def _source(self) -> str:
        return f"read_parquet('{self.root.as_posix()}/symbol=*/date=*/data.parquet', hive_partitioning = true, hive_types = {{'symbol': VARCHAR, 'date': DATE}})"

    def read(self, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        """Minutes of days in ``[start, end)`` as columns ``symbol, open_time, OHLCV``."""
        if not any(self.root.glob("symbol=*/date=*/data.parquet")):
            return pd.DataFrame(columns=["symbol", "open_time", *OHLCV_COLUMNS])
        where, params = self._where(start, end, symbols)
        with duckdb_connect() as con:
            return con.execute(
                f"SELECT symbol, open_time, {', '.join(OHLCV_COLUMNS)} FROM {self._source()} {where} ORDER BY symbol, open_time",
                params,
            ).df()

    def daily_aggregate(self, start: dt.date, end: dt.date, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        """UTC daily OHLCV of the stored minutes of days in ``[start, end)``, aggregated in DuckDB.

        :return: columns ``symbol, date, open, high, low, close, volume, n_minutes``; open is the
            first minute's open and close the last minute's close, by ``open_time``.
        """
        if not any(self.root.glob("symbol=*/date=*/data.parquet")):
            return pd.DataFrame(columns=["symbol", "date", *OHLCV_COLUMNS, "n_minutes"])
        where, params = self._where(start, end, symbols)
        query = f"""
            SELECT symbol, date,
                   arg_min(open, open_time) AS open, max(high) AS high, min(low) AS low,
                   arg_max(close, open_time) AS close, sum(volume) AS volume,
                   count(*)::INTEGER AS n_minutes
            FROM {self._source()} {where}
            GROUP BY symbol, date
            ORDER BY date, symbol
        """
        with duckdb_connect() as con:
            out = con.execute(query, params).df()
        out["date"] = pd.to_datetime(out["date"]).dt.date
        return out

    @staticmethod
    def _where(start: dt.date, end: dt.date, symbols: Sequence[str] | None) -> tuple[str, list]:
        clauses, params = ["date >= ? AND date < ?"], [start, end]
        if symbols is not None:
            clauses.append(f"symbol IN ({', '.join('?' for _ in symbols)})")
            params.extend(symbols)
        return "WHERE " + " AND ".join(clauses), params
