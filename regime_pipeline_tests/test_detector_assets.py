"""Detector assets on the real embedded data, with the `fast` training profile.

Features and labels for the whole history are computed with `core` and written to the
warehouse (what the earlier stages leave there), then the detectors, their reports and a
week of daily probabilities are materialized in-process.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from regime_pipeline.core.regimes import detectors
from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.artifacts import sha256_file
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline_tests.conftest import materialize_range, write_detector_inputs

DAY = dt.timedelta(days=1)
FAST = {"ops": {name: {"config": {"profile": "fast"}} for name in ("vol_detector", "trend_detector", "cross_detector")}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    tables = write_detector_inputs(data_dir)
    resources = build_resources(str(data_dir), MarketData(source="embedded"))
    with dg.instance_for_test() as instance:
        result = dg.materialize(all_assets, selection=["vol_detector", "trend_detector", "cross_detector"],
                                resources=resources, instance=instance, run_config=FAST)
        assert result.success
        yield data_dir, resources, instance, result, tables


def test_models_are_stored_with_their_hash_and_reload_identically(trained):
    data_dir, _, _, result, tables = trained
    for kind in detectors.KINDS:
        meta = result.asset_materializations_for_node(f"{kind}_detector")[0].metadata
        path = Path(meta["path"].value)
        assert path == data_dir / "models" / f"{kind}_detector.pt"
        assert meta["sha256"].value == sha256_file(path)
        assert 1 <= meta["best_epoch"].value <= meta["epochs_run"].value
    det = detectors.Detector.load(data_dir / "models" / "vol_detector.pt")
    again = detectors.Detector.load(data_dir / "models" / "vol_detector.pt")
    X, _, _ = detectors._sequence_inputs(det, tables["vol_features"], None, (dt.date(2024, 1, 1), dt.date(2024, 1, 31)))
    from regime_pipeline.core.regimes.models.training import predict_proba

    np.testing.assert_array_equal(predict_proba(det.model, X), predict_proba(again.model, X))


def test_reports_give_per_class_recall_and_confusion_for_each_detector(trained):
    data_dir, resources, instance, _, _ = trained
    result = dg.materialize(all_assets, selection=["detector_reports"], partition_key="test", resources=resources, instance=instance)
    assert result.success
    table = read_table(str(data_dir / "warehouse.duckdb"), "detector_reports")
    assert set(table["detector"]) == {"vol_detector", "trend_detector", "cross_detector"}
    classes = table[table.detector == "cross_detector"].set_index("class")
    # The test year has no convergent day: the class is listed, with no support, not hidden.
    assert classes.loc["convergent", "support"] == 0 and classes.loc["convergent", "note"] == "no support"
    report = json.loads((data_dir / "reports" / "vol_detector_test.json").read_text())
    assert len(report["attention_by_lag"]) == 30 and abs(sum(report["attention_by_lag"]) - 1) < 1e-6
    assert np.array(report["confusion_matrix"]).sum() == report["n"]
    assert (data_dir / "reports" / "trend_detector_test.md").read_text().startswith("# trend_detector on test")
    meta = result.asset_materializations_for_node("detector_reports")[0].metadata
    assert {"summary", "confusion_vol", "confusion_trend", "confusion_cross", "attention_by_lag"} <= set(meta)


def test_daily_probabilities_sum_to_one_and_ignore_later_days(trained):
    data_dir, resources, instance, _, tables = trained
    result = materialize_range(all_assets, "2025-06-01", "2025-06-07", resources, instance, selection=["regime_probabilities"])
    assert result.success
    probs = read_table(str(data_dir / "warehouse.duckdb"), "regime_probabilities")
    assert sorted(probs["date"].unique()) == [dt.date(2025, 6, d) for d in range(1, 8)]
    assert len(probs) == 7 * 13
    for kind in detectors.KINDS:
        columns = [c for c in probs.columns if c.startswith(f"{kind}_")]
        np.testing.assert_allclose(probs[columns].sum(axis=1), 1.0, rtol=1e-6)

    # Day d's probabilities from data up to d only: cut everything after d, same numbers.
    dets = {k: detectors.Detector.load(data_dir / "models" / f"{k}_detector.pt") for k in detectors.KINDS}
    day = dt.date(2025, 6, 3)
    cut = {name: frame[frame["date"] <= day] for name, frame in tables.items() if name in ("vol_features", "trend_features", "daily_bars")}
    alone = detectors.probabilities(dets, cut["vol_features"], cut["trend_features"], cut["daily_bars"], day, day + DAY)
    stored = probs[probs.date == day].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone[stored.columns].reset_index(drop=True), stored, check_dtype=False, atol=1e-6)


def test_a_model_file_that_does_not_match_its_config_is_refused(trained, tmp_path):
    import torch

    data_dir = trained[0]
    payload = torch.load(data_dir / "models" / "trend_detector.pt", weights_only=True)
    payload["hparams"]["hidden"] = payload["hparams"]["hidden"] * 2
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="hidden|shape|mismatch"):
        detectors.Detector.load(tmp_path / "bad.pt")
