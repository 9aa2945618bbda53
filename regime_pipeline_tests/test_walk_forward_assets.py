"""Walk-forward assets on the real embedded data, origins 2020 and 2021, `fast` detector profile.

Bars and the trend and cross features of the whole history are written to the warehouse
(what the earlier stages leave there); the per-origin models, the out-of-sample probabilities
and a report are materialized in-process, then the first walk-forward allocation policy (origin
2022, `fast` PPO profile) on those probabilities.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.core.features import daily as F
from regime_pipeline.core.regimes import walk_forward as wf
from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline_tests.conftest import (
    check_results, embedded_daily_bars, embedded_daily_closes, embedded_universe, materialize_walk_forward_policy,
    write_table,
)

ORIGINS = ("2020", "2021")
FAST = {"ops": {"walk_forward_models": {"config": {"profile": "fast", "workers": 2}}}}
RANGE = {ASSET_PARTITION_RANGE_START_TAG: ORIGINS[0], ASSET_PARTITION_RANGE_END_TAG: ORIGINS[-1]}


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    bars = embedded_daily_bars()
    first, end = bars["date"].min(), dt.date(2026, 1, 1)
    database = str(data_dir / "warehouse.duckdb")
    write_table(database, "daily_bars", bars)
    write_table(database, "trend_features", F.trend_features(bars, first, end))
    write_table(database, "cross_features", F.cross_features(bars, first, end))
    write_table(database, "universe", embedded_universe(bars))
    write_table(database, "daily_closes", embedded_daily_closes())
    resources = build_resources(str(data_dir), MarketData(source="embedded"))
    with dg.instance_for_test() as instance:
        results = {
            "models": dg.materialize(all_assets, selection=["walk_forward_models"], resources=resources,
                                     instance=instance, run_config=FAST, tags=RANGE),
            "probabilities": dg.materialize(all_assets, selection=["walk_forward_probabilities"], resources=resources,
                                            instance=instance, tags=RANGE),
            "report": dg.materialize(all_assets, selection=["walk_forward_reports"], partition_key="2021",
                                     resources=resources, instance=instance),
        }
        assert all(r.success for r in results.values())
        yield data_dir, results


def test_every_stored_probability_comes_from_models_that_never_saw_its_day(walked):
    data_dir, results = walked
    probs = read_table(str(data_dir / "warehouse.duckdb"), "walk_forward_probabilities")
    assert set(probs["origin"]) == set(ORIGINS) and set(probs["target"]) == set(wf.TARGETS)
    records = pd.concat([wf.model_records(data_dir / "models", int(o)) for o in ORIGINS], ignore_index=True)
    # Every (origin, target) has its three detectors, each with its recorded windows.
    assert len(records) == len(ORIGINS) * len(wf.TARGETS) * len(wf.KINDS)
    merged = probs[["origin", "target", "date"]].merge(records, on=["origin", "target"], how="inner")
    assert len(merged) == len(probs) * len(wf.KINDS)  # each row meets the record of all three detectors
    day = pd.to_datetime(merged["date"])
    fit_end = pd.to_datetime(merged["fit_end"]) + pd.to_timedelta(merged["purge_days"], unit="D")
    val_end = pd.to_datetime(merged["val_end"]) + pd.to_timedelta(merged["horizon_days"], unit="D")
    assert (fit_end < day).all() and (val_end < day).all() and (pd.to_datetime(merged["seen_until"]) < day).all()
    # Origin Y holds the days of Y only, and the shared core check agrees, as the asset's check did.
    assert (day.dt.year == merged["origin"].astype(int)).all()
    assert wf.unseen_violations(probs, records).empty
    assert check_results(results["probabilities"]) == {"no_model_saw_its_day": True}


def test_a_record_that_reaches_into_the_predicted_days_is_caught(walked):
    data_dir, _ = walked
    probs = read_table(str(data_dir / "warehouse.duckdb"), "walk_forward_probabilities")
    records = wf.model_records(data_dir / "models", 2021)
    leaky = records.copy()
    leaky.loc[leaky["kind"] == "trend", "val_end"] = dt.date(2021, 3, 1)
    bad = wf.unseen_violations(probs[probs.origin == "2021"], leaky)
    assert len(bad) and bad["date"].min() <= dt.date(2021, 3, 31)


def test_probabilities_have_the_columns_of_regime_probabilities_plus_origin_and_target(walked):
    data_dir, _ = walked
    probs = read_table(str(data_dir / "warehouse.duckdb"), "walk_forward_probabilities")
    names = {k: wf.regimes.settings()[k]["names"] for k in wf.KINDS}
    expected = ["origin", "target", "date", "symbol"] + [f"{k}_{c}" for k in wf.KINDS for c in names[k]]
    assert list(probs.columns) == expected
    for kind in wf.KINDS:
        np.testing.assert_allclose(probs[[f"{kind}_{c}" for c in names[kind]]].sum(axis=1), 1.0, rtol=1e-6)
    # Stitched, the two origins cover 2020 and 2021 once per target and (date, symbol).
    assert not probs.duplicated(["target", "date", "symbol"]).any()
    assert probs["date"].min() >= dt.date(2020, 1, 1) and probs["date"].max() <= dt.date(2021, 12, 31)


def test_the_report_ladders_every_detector_and_target_against_its_baselines(walked):
    data_dir, results = walked
    table = read_table(str(data_dir / "warehouse.duckdb"), "walk_forward_reports")
    for kind in wf.KINDS:
        for target in wf.TARGETS:
            rungs = table[(table.detector == f"{kind}_detector") & (table.target == target)]
            assert {"majority", "persistence", "hmm_filter", "logistic", "tree", "detector"} <= set(rungs["model"])
            assert rungs["n"].nunique() == 1  # every rung scored on the same rows
            det = rungs[rungs.model == "detector"].iloc[0]
            best = rungs[rungs.model != "detector"]["balanced_accuracy"].max()
            assert det["lift"] == pytest.approx(det["balanced_accuracy"] - best)
            assert np.isfinite([det["lift_low"], det["lift_high"]]).all() and det["lift_low"] <= det["lift_high"]
    jump = table[table.target == "jump"]
    assert set(jump["detector"]) == {"vol_detector", "trend_detector"} and "jump_online" in set(jump["model"])
    meta = results["report"].asset_materializations_for_node("walk_forward_reports")[0].metadata
    assert {"detector_vs_best_baseline", "ladder", "mean_regime_days"} <= set(meta)
    assert any(key.startswith("confusion_vol_forward_detector") for key in meta)
    report = json.loads((data_dir / "reports" / "walk_forward_2021.json").read_text())
    assert {r["detector"] for r in report["summary"]} == {f"{k}_detector" for k in wf.KINDS}


@pytest.fixture(scope="module")
def first_policy(walked):
    """`walk_forward_policy[2022]` (fast profile) on the two origins' real probabilities: the first
    policy origin, trained on 2020 and selected on 2021. The seeds' training jobs are recorded."""
    data_dir, _ = walked
    with dg.instance_for_test() as instance:
        _, result, jobs = materialize_walk_forward_policy(
            all_assets, "2022", build_resources(str(data_dir), MarketData(source="embedded")), instance)
    assert result.success
    return data_dir, jobs


def test_a_walk_forward_policy_trains_on_no_day_of_its_selection_or_origin_year(first_policy):
    from regime_pipeline.core.allocation import walk_forward as allocation_walk_forward
    from regime_pipeline.core.allocation.policy import allocation_data

    data_dir, jobs = first_policy
    assert len(jobs) == 2
    probs = read_table(str(data_dir / "warehouse.duckdb"), "walk_forward_probabilities")
    forward = allocation_walk_forward.stitch(probs, target="forward", before=2021)
    expected = allocation_data(embedded_daily_bars(), forward)
    for job in jobs:
        # Its data end on the last day of 2020: no price, return or probability of 2021 (its
        # selection year) or 2022 (its origin year) can reach the training.
        dates = job.train_data.prices.dates
        assert dates[-1] == dt.date(2020, 12, 31) and job.train[1] == dt.date(2020, 12, 31)
        observed = np.isfinite(job.train_data.probs).any(axis=1)
        assert dates[observed].min() >= dt.date(2020, 1, 1)  # origin 2020's out-of-sample probabilities only
        # What it observes is the stored forward-target probabilities of origin 2020, unchanged.
        np.testing.assert_array_equal(job.train_data.probs, expected.probs[: expected.index(dt.date(2020, 12, 31)) + 1])
        assert job.train_data.prob_columns == expected.prob_columns
        # The selection scorer sees 2021 and nothing of 2022.
        assert job.val == (dt.date(2021, 1, 1), dt.date(2021, 12, 31))
        assert job.val_data.prices.dates[-1] == dt.date(2021, 12, 31)
    artifact = json.loads((data_dir / "models" / "walk_forward_policy" / "2022.json").read_text())
    assert artifact["target"] == "forward" and artifact["windows"]["score"] == ["2022-01-01", "2022-12-31"]
