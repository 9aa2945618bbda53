"""Walk-forward allocation: origin windows, stitching the out-of-sample probabilities, the
lineage each origin may read, and the per-origin assets materialized in-process (fast profile)
on a stored stand-in for `walk_forward_probabilities`.

The stand-in is synthetic detector output relabelled by year (origin Y = the days of Y), once per
target (`forward`, `same_day`, different numbers): it has the real table's shape, not its
meaning, and no figure from it is a result. The real assets are checked by
test_walk_forward_allocation_real.py on the pipeline's own data."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from regime_pipeline.assets import walk_forward_allocation as assets
from regime_pipeline.core.allocation import comparison, ppo, walk_forward
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.definitions import all_assets
from regime_pipeline.partitions import ORIGIN, POLICY_ORIGIN
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline_tests.conftest import (
    embedded_daily_bars,
    materialize_walk_forward_policy,
    synthetic_probabilities,
    write_table,
    write_universe_tables,
)

D = dt.date


def _stand_in(seed: int = 0) -> pd.DataFrame:
    frame = synthetic_probabilities(seed=seed, classes=(4, 4, 3))
    frame = frame.loc[pd.to_datetime(frame["date"]).dt.year >= 2020]
    return frame.assign(origin=pd.to_datetime(frame["date"]).dt.year.astype(str)).reset_index(drop=True)


def _stand_in_targets() -> pd.DataFrame:
    """Both targets, as the real table holds them: forward from seed 0, same_day from seed 1."""
    return pd.concat([_stand_in(0).assign(target="forward"), _stand_in(1).assign(target="same_day")], ignore_index=True)


def test_origin_windows_train_before_the_selection_year_and_score_the_origin_year() -> None:
    w = walk_forward.origin_windows(2024, D(2020, 1, 1))
    assert w.train == (D(2020, 1, 2), D(2022, 12, 31))
    assert w.select == (D(2023, 1, 1), D(2023, 12, 31)) and w.score == (D(2024, 1, 1), D(2024, 12, 31))
    assert w.calibrate == (D(2020, 1, 2), D(2023, 12, 31))
    assert walk_forward.origin_windows(2022, D(2020, 1, 1)).train == (D(2020, 1, 2), D(2020, 12, 31))
    with pytest.raises(ValueError, match="origin 2021.*training days before the selection year 2020"):
        walk_forward.origin_windows(2021, D(2020, 1, 1))
    assert walk_forward.WalkForwardSettings.from_config().policy_origins == (2022, 2023, 2024, 2025)


def test_stitching_checks_each_origin_holds_its_own_year_only() -> None:
    frame = _stand_in()
    stitched = walk_forward.stitch(frame)
    assert "origin" not in stitched.columns and len(stitched) == len(frame)
    assert walk_forward.stitch(frame, before=2023)["date"].max() == D(2022, 12, 31)
    bad = frame.copy()
    bad.loc[bad.index[0], "origin"] = "2021"
    with pytest.raises(ValueError, match="origin 2021 dated 2020-01-01"):
        walk_forward.stitch(bad)
    with pytest.raises(ValueError, match="more than once"):
        walk_forward.stitch(pd.concat([frame, frame.iloc[:1]]))
    two = pd.concat([frame.assign(target="same_day"), frame.assign(target="forward")])
    with pytest.raises(ValueError, match="several targets"):
        walk_forward.stitch(two)
    assert len(walk_forward.stitch(two, target="forward")) == len(frame)


def test_each_origin_reads_only_the_probability_origins_before_it() -> None:
    before = assets.origins_mapping(include_own=False)
    upstream = before.get_upstream_mapped_partitions_result_for_partitions(
        POLICY_ORIGIN.subset_with_partition_keys(["2024"]), POLICY_ORIGIN, ORIGIN
    ).partitions_subset.get_partition_keys()
    assert sorted(upstream) == ["2020", "2021", "2022", "2023"]
    with_own = assets.origins_mapping(include_own=True)
    upstream = with_own.get_upstream_mapped_partitions_result_for_partitions(
        POLICY_ORIGIN.subset_with_partition_keys(["2024"]), POLICY_ORIGIN, ORIGIN
    ).partitions_subset.get_partition_keys()
    assert sorted(upstream) == ["2020", "2021", "2022", "2023", "2024"]


def test_returns_round_trip_through_the_stored_table() -> None:
    data = allocation.allocation_data(embedded_daily_bars(), synthetic_probabilities())
    from regime_pipeline.core.allocation.strategies import benchmark_strategies, benchmark_results

    results = benchmark_results(data.prices, D(2024, 1, 1), D(2024, 12, 31), benchmark_strategies(data.prices.symbols))
    series = comparison.series_from_long(comparison.long_returns(results))
    for name, r in results.items():
        np.testing.assert_array_equal(series[name].returns, r.period_returns)
        assert comparison.metrics(series[name])["annual_turnover"] == pytest.approx(r.summary()["annual_turnover"], rel=1e-12)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    database = str(data_dir / "warehouse.duckdb")
    write_table(database, "daily_bars", embedded_daily_bars())
    write_table(database, "walk_forward_probabilities", _stand_in_targets())  # read in place of the asset's own output
    write_universe_tables(database)
    everything = all_assets
    resources = build_resources(str(data_dir))
    with dg.instance_for_test() as instance:
        _, policy, jobs = materialize_walk_forward_policy(everything, "2024", resources, instance)
        backtest = dg.materialize(everything, selection=["walk_forward_backtest"], partition_key="2024",
                                  resources=resources, instance=instance)
        report = dg.materialize(everything, selection=["walk_forward_allocation"], resources=resources, instance=instance)
    return data_dir, jobs, policy, backtest, report


def test_each_seed_is_a_partition_and_the_policy_deploys_the_profiles_seeds(materialized, tmp_path) -> None:
    data_dir, _, _, _, _ = materialized
    folder = data_dir / "models" / "walk_forward_seed_policy" / "2024"
    assert sorted(p.name for p in folder.glob("*.json")) == ["0.json", "1.json"]
    records = [json.loads((folder / f"{seed}.json").read_text()) for seed in (0, 1)]
    artifact = json.loads((data_dir / "models" / "walk_forward_policy" / "2024.json").read_text())
    assert [r["policy"] for r in records] == artifact["policy"]["members"]
    assert all(r["origin"] == 2024 and r["profile"] == "fast" for r in records)
    assert artifact["training"]["seconds"] == pytest.approx(sum(r["seconds"] for r in records))

    # One seed alone, as a backfill runs it where each partition is a run of its own (a pod in
    # the cluster): the same policy as trained beside the other seed, and only its file rewritten.
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    resources = build_resources(str(copy))
    with dg.instance_for_test() as instance:
        alone = dg.materialize(all_assets, selection=["walk_forward_seed_policy"], resources=resources, instance=instance,
                               partition_key=dg.MultiPartitionKey({"origin": "2024", "seed": "1"}),
                               run_config={"ops": {"walk_forward_seed_policy": {"config": {"profile": "fast"}}}})
        assert alone.success
        again = json.loads((copy / "models" / "walk_forward_seed_policy" / "2024" / "1.json").read_text())
        assert again["policy"] == records[1]["policy"] and again["kept_step"] == records[1]["kept_step"]
        assert (copy / "models" / "walk_forward_seed_policy" / "2024" / "0.json").read_bytes() == (folder / "0.json").read_bytes()

        # The ensemble of a profile whose seeds are not all trained is refused, naming them.
        with pytest.raises(ValueError) as failure:
            dg.materialize(all_assets, selection=["walk_forward_policy"], partition_key="2024", resources=resources,
                           instance=instance, run_config={"ops": {"walk_forward_policy": {"config": {"profile": "light"}}}})
    message = str(failure.value)
    assert "seeds [2, 3, 4, 5, 6, 7, 8, 9] are not trained" in message and "seeds [0, 1] were trained with another profile" in message
    assert "walk_forward_seed_policy [2024|2" in message


def test_a_policy_trains_on_no_day_of_its_selection_or_origin_year(materialized) -> None:
    data_dir, jobs, policy, _, _ = materialized
    assert policy.success and len(jobs) == len(ppo.settings("fast").seeds)
    for job in jobs:
        dates = job.train_data.prices.dates
        assert dates[-1] == D(2022, 12, 31)  # nothing of 2023 (selection) or 2024 (origin) is in its data
        rows = np.isfinite(job.train_data.probs).any(axis=1)
        assert dates[rows].min() == D(2020, 1, 1)  # out-of-sample probabilities only: none before 2020
        assert job.train == (D(2020, 1, 2), D(2022, 12, 31))
        assert job.val_data.prices.dates[-1] == D(2023, 12, 31) and job.val == (D(2023, 1, 1), D(2023, 12, 31))
    # It observes the configured target's probabilities (forward), not the other target's.
    assert walk_forward.WalkForwardSettings.from_config().target == "forward"
    forward = allocation.allocation_data(embedded_daily_bars(), walk_forward.stitch(_stand_in(0)))
    t = forward.index(D(2022, 12, 31))
    np.testing.assert_array_equal(jobs[0].train_data.probs, forward.probs[: t + 1])
    artifact = json.loads((data_dir / "models" / "walk_forward_policy" / "2024.json").read_text())
    assert artifact["origin"] == 2024 and artifact["policy"]["kind"] == "ensemble"
    assert artifact["train"] == ["2020-01-02", "2022-12-31"] and artifact["val"] == ["2023-01-01", "2023-12-31"]
    assert (data_dir / "models" / "walk_forward_policy" / "2024" / "seed_0.zip").exists()


def test_the_origin_backtest_scores_the_origin_year_and_stores_daily_returns(materialized) -> None:
    data_dir, _, _, backtest, _ = materialized
    assert backtest.success
    stored = read_table(str(data_dir / "warehouse.duckdb"), "walk_forward_backtest")
    assert set(stored["origin"]) == {"2024"}
    dates = pd.to_datetime(stored["date"])
    assert dates.min() == pd.Timestamp("2024-01-01") and dates.max() == pd.Timestamp("2024-12-31")
    names = list(dict.fromkeys(stored["strategy"]))
    assert names[0] == "ppo_ensemble" and {"ppo_seed_0", "ppo_seed_1", "equal_weight", "btc_buy_and_hold",
                                            "trend_risk_off_detector", "vol_target_trailing"} <= set(names)
    assert (stored.groupby("strategy").size() == 366).all()
    metadata = backtest.asset_materializations_for_node("walk_forward_backtest")[0].metadata
    assert "ΔSharpe vs EW" in metadata["results"].value
    assert metadata["rule_calibration"].value["train"] == ["2020-01-02", "2023-12-31"]
    # Its report has a name of its own: the regime walk-forward's report of the same origin
    # (walk_forward_2024.*, which regime-pipeline run summarizes) is not overwritten.
    assert (data_dir / "reports" / "walk_forward_allocation_2024.md").exists()
    assert not list((data_dir / "reports").glob("walk_forward_2024.*"))


def test_the_walk_forward_table_recomputes_each_origin_and_the_pooled_days(materialized) -> None:
    data_dir, _, _, _, report = materialized
    assert report.success
    table = read_table(str(data_dir / "warehouse.duckdb"), "walk_forward_allocation")
    assert list(dict.fromkeys(table["origin"])) == ["2024", "pooled"]
    stored = read_table(str(data_dir / "warehouse.duckdb"), "walk_forward_backtest")
    again = comparison.table(comparison.series_from_long(stored))
    mine = table.loc[table["origin"] == "2024"].reset_index(drop=True)
    pd.testing.assert_series_equal(mine["sharpe_vs_ew_low"], again["sharpe_vs_ew_low"], check_names=False)
    metadata = report.asset_materializations_for_node("walk_forward_allocation")[0].metadata
    assert metadata["origins_missing"].value == "2022, 2023, 2025"
    assert "data:image/png;base64" in metadata["differences"].value
    text = (data_dir / "reports" / "walk_forward_allocation.md").read_text()
    assert "Not materialized yet: 2022, 2023, 2025" in text and "## Scorecard" in text
