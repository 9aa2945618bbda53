"""The DuckDB IO manager: atomic slice replacement, by-name inserts, refusal of stray rows."""


import dagster as dg
import pandas as pd
import pytest

from regime_pipeline.resources.warehouse import DuckDBTableIOManager, read_table

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
