"""The DuckDB IO manager: atomic slice replacement, by-name inserts, refusal of stray rows and of
empty outputs over stored rows; read-only readers and the bounded wait for another process's lock."""

import subprocess
import sys

import dagster as dg
import pandas as pd
import pytest

from regime_pipeline.core.dbfile import DatabaseBusyError
from regime_pipeline.resources.warehouse import DuckDBTableIOManager, connect, read_table

DAYS = dg.DailyPartitionsDefinition(start_date="2024-01-01")
SPLITS = dg.StaticPartitionsDefinition(["train", "test"])


def _frame(days: list[str], value: float) -> pd.DataFrame:
    return pd.DataFrame({"date": pd.to_datetime(days).date, "x": value})


def _asset(frame_fn, partitions_def=DAYS, expr="date"):
    @dg.asset(partitions_def=partitions_def, metadata={"partition_expr": expr}, backfill_policy=dg.BackfillPolicy.single_run())
    def table(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return frame_fn(context)

    return table


def _run(asset, db, key=None, instance=None, **kw):
    return dg.materialize([asset], resources={"io_manager": DuckDBTableIOManager(database=db)}, partition_key=key, instance=instance, **kw)


def test_partition_slice_is_replaced_not_appended(tmp_path):
    db = str(tmp_path / "w.duckdb")
    value = {"x": 1.0}
    asset = _asset(lambda ctx: _frame([ctx.partition_key], value["x"]))
    _run(asset, db, "2024-01-01")
    _run(asset, db, "2024-01-02")
    value["x"] = 2.0
    _run(asset, db, "2024-01-01")
    stored = read_table(db, "table").sort_values("date")
    assert stored["x"].tolist() == [2.0, 1.0]


def test_stray_rows_are_refused_and_the_slice_is_kept(tmp_path):
    db = str(tmp_path / "w.duckdb")
    _run(_asset(lambda ctx: _frame([ctx.partition_key], 1.0)), db, "2024-01-01")
    bad = _asset(lambda ctx: _frame(["2024-01-01", "2024-01-05"], 9.0))
    with pytest.raises(ValueError, match=r"1 rows fall outside the partitions being written"):
        _run(bad, db, "2024-01-01")
    assert read_table(db, "table")["x"].tolist() == [1.0]


def test_failed_insert_rolls_back_the_delete(tmp_path):
    db = str(tmp_path / "w.duckdb")
    _run(_asset(lambda ctx: _frame([ctx.partition_key], 1.0)), db, "2024-01-01")
    # A value DuckDB cannot cast into the existing DOUBLE column fails the insert after the delete.
    bad = _asset(lambda ctx: _frame([ctx.partition_key], 0.0).assign(x="not a number"))
    with pytest.raises(Exception):
        _run(bad, db, "2024-01-01")
    assert read_table(db, "table")["x"].tolist() == [1.0]


def test_columns_insert_by_name_and_new_columns_are_added(tmp_path):
    db = str(tmp_path / "w.duckdb")
    _run(_asset(lambda ctx: _frame([ctx.partition_key], 1.0)), db, "2024-01-01")
    reordered = _asset(lambda ctx: _frame([ctx.partition_key], 3.0).assign(y=7)[["y", "x", "date"]])
    _run(reordered, db, "2024-01-02")
    stored = read_table(db, "table").sort_values("date")
    assert stored["x"].tolist() == [1.0, 3.0]
    assert stored["y"].isna().tolist() == [True, False]


def test_static_partitions_and_downstream_load(tmp_path):
    db = str(tmp_path / "w.duckdb")
    split_asset = _asset(lambda ctx: pd.DataFrame({"split": [ctx.partition_key] * 2, "v": [1, 2]}), SPLITS, "split")

    @dg.asset(partitions_def=SPLITS)
    def total(table: pd.DataFrame) -> None:
        assert set(table["split"]) == {"test"}
        assert table["v"].sum() == 3

    with dg.instance_for_test() as instance:
        for key in ("train", "test"):
            _run(split_asset, db, key, instance)
        result = dg.materialize(
            [split_asset, total],
            resources={"io_manager": DuckDBTableIOManager(database=db)},
            partition_key="test",
            instance=instance,
            selection=[total],
        )
    assert result.success
    assert len(read_table(db, "table")) == 4


def test_loading_a_table_never_materialized_says_what_to_do(tmp_path):
    db = str(tmp_path / "w.duckdb")
    upstream = _asset(lambda ctx: _frame([ctx.partition_key], 1.0))

    @dg.asset(partitions_def=DAYS)
    def downstream(table: pd.DataFrame) -> None: ...

    with pytest.raises(dg.DagsterInvariantViolationError, match="materialize table first"):
        dg.materialize([upstream, downstream], resources={"io_manager": DuckDBTableIOManager(database=db)},
                       partition_key="2024-01-01", selection=[downstream])


def test_a_column_first_written_all_null_takes_values_later(tmp_path):
    db = str(tmp_path / "w.duckdb")
    note = {"value": None}
    asset = _asset(lambda ctx: _frame([ctx.partition_key], 1.0).assign(note=[note["value"]]))
    _run(asset, db, "2024-01-01")
    note["value"] = "no support"
    _run(asset, db, "2024-01-02")
    stored = read_table(db, "table").sort_values("date")
    assert stored["note"].tolist()[1] == "no support" and pd.isna(stored["note"].tolist()[0])


def test_an_empty_output_never_replaces_stored_rows(tmp_path):
    db = str(tmp_path / "w.duckdb")
    rows = {"days": ["2024-01-01"]}
    asset = _asset(lambda ctx: _frame(rows["days"], 1.0))
    _run(asset, db, "2024-01-01")
    rows["days"] = []
    with pytest.raises(ValueError, match=r"empty but 1 rows are stored there; refusing"):
        _run(asset, db, "2024-01-01")
    assert read_table(db, "table")["x"].tolist() == [1.0]
    # An empty output where nothing is stored is fine (e.g. days before a look-back is available).
    assert _run(asset, db, "2024-01-02").success


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args) -> None:
        self.lines.append(msg)


def _hold(db: str, read_only: bool, seconds: float) -> subprocess.Popen:
    """Another process that opens `db` and keeps it open for `seconds`."""
    code = (
        "import duckdb, sys, time\n"
        f"con = duckdb.connect({db!r}, read_only={read_only})\n"
        "print('open', flush=True)\n"
        f"time.sleep({seconds})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_readers_open_read_only_and_share_the_file(tmp_path):
    db = str(tmp_path / "w.duckdb")
    _run(_asset(lambda ctx: _frame([ctx.partition_key], 1.0)), db, "2024-01-01")
    holder = _hold(db, read_only=True, seconds=5)
    try:
        log = _Log()
        with connect(db, read_only=True, wait_s=0.5, log=log) as con:
            assert con.execute("SELECT x FROM main.table").fetchall() == [(1.0,)]
        assert log.lines == []  # no wait: readers do not block each other
        assert read_table(db, "table")["x"].tolist() == [1.0]
    finally:
        holder.kill()
        holder.wait()


def test_a_reader_waits_for_a_writer_with_a_bounded_logged_wait(tmp_path):
    db = str(tmp_path / "w.duckdb")
    _run(_asset(lambda ctx: _frame([ctx.partition_key], 1.0)), db, "2024-01-01")
    holder = _hold(db, read_only=False, seconds=1.5)
    try:
        log = _Log()
        with connect(db, read_only=True, wait_s=30, log=log) as con:
            assert con.execute("SELECT x FROM main.table").fetchall() == [(1.0,)]
        assert len(log.lines) == 2
        assert "is locked by another process; waiting up to 30s to open it read-only" in log.lines[0]
        assert "opened read-only after waiting" in log.lines[1]
    finally:
        holder.wait()
    holder = _hold(db, read_only=False, seconds=10)
    try:
        expected = rf"{db}: gave up opening it read-only after waiting 1s.*PID {holder.pid}"
        with pytest.raises(DatabaseBusyError, match=expected), connect(db, read_only=True, wait_s=1.0):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_reading_a_warehouse_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such DuckDB file"):
        read_table(str(tmp_path / "none.duckdb"), "daily_bars")
    assert not (tmp_path / "none.duckdb").exists()
