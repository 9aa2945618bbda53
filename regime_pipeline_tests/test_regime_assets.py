"""Feature, HMM, label and selection assets materialized in-process on the real embedded data.

The feature tables over the whole history are computed with `core` and written to the
warehouse first (what a full backfill would leave there), so the unpartitioned and split
assets run in seconds; the per-day feature assets are materialized through Dagster on a
short range and compared with that full-history computation.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from regime_pipeline.configs import splits
from regime_pipeline.core.features import daily as F
from regime_pipeline.core.regimes import labels as regimes
from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.artifacts import sha256_file
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline_tests.conftest import check_results, embedded_daily_bars, embedded_universe, materialize_range, write_table

DAY = dt.timedelta(days=1)
END = dt.date(2026, 1, 1)


@pytest.fixture(scope="module")
def history() -> dict[str, pd.DataFrame]:
    bars = embedded_daily_bars()
    train = splits()["train"]
    params = F.fit_garch(bars, train.start, train.end + DAY)
    first = bars["date"].min()
    return {
        "daily_bars": bars,
        "garch_params": params,
        "vol_features": F.vol_features(bars, params, first, END),
        "trend_features": F.trend_features(bars, first, END),
        "cross_features": F.cross_features(bars, first, END),
        "universe": embedded_universe(bars),
    }


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, history) -> Path:
    """A data directory whose warehouse holds daily bars and all features over the full history."""
    data_dir = tmp_path_factory.mktemp("data")
    for table in ("daily_bars", "vol_features", "trend_features", "cross_features", "universe"):
        write_table(str(data_dir / "warehouse.duckdb"), table, history[table])
    return data_dir


@pytest.fixture(scope="module")
def regime_run(warehouse):
    """garch_params, hmm_models, regime_labels (every split) and selected_features, materialized."""
    resources = build_resources(str(warehouse), MarketData(source="embedded"))
    with dg.instance_for_test() as instance:
        results = {"garch": dg.materialize(all_assets, selection=["garch_params", "hmm_models"], resources=resources, instance=instance)}
        for split in splits():
            results[split] = dg.materialize(all_assets, selection=["regime_labels"], partition_key=split,
                                            resources=resources, instance=instance)
        results["selection"] = dg.materialize(all_assets, selection=["selected_features"], resources=resources, instance=instance)
        yield warehouse, results


def _metadata(result, asset: str) -> dict:
    event = result.asset_materializations_for_node(asset)[0]
    return {k: v.value for k, v in event.metadata.items()}


def test_hmm_models_are_stored_as_hashed_json_and_pass_their_checks(regime_run):
    data_dir, results = regime_run
    assert all(r.success for r in results.values())
    assert check_results(results["garch"]) == {"no_collapsed_state": True, "spike_is_a_spike": True}
    meta = _metadata(results["garch"], "hmm_models")
    path = data_dir / "models" / "hmm_models.json"
    assert meta["path"] == str(path) and meta["sha256"] == sha256_file(path)
    models = regimes.RegimeModels.from_dict(json.loads(path.read_text()))
    # States are ordered by their means: vol by log realized vol, trend by rate of change.
    assert np.all(np.diff(models.vol.means_[:, 0]) > 0) and np.all(np.diff(models.trend.means_[:, 0]) > 0)
    assert np.exp(models.vol.means_[-1, 0]) > 1.0  # the spike state is above 100% annualised vol


def test_labels_cover_each_split_with_every_class_counted(regime_run, history):
    data_dir, results = regime_run
    labels = read_table(str(data_dir / "warehouse.duckdb"), "regime_labels")
    config = regimes.settings()
    for name, split in splits().items():
        part = labels[labels.split == name]
        assert part.date.min() >= split.start and part.date.max() <= split.end
        counts = _metadata(results[name], "regime_labels")["class_counts"]
        for kind in ("vol", "trend", "cross"):
            for regime in config[kind]["names"]:
                assert re.search(rf"\|\s*{kind}\s*\|\s*{regime}\s*\|", counts), (name, kind, regime)
    # Labels exist exactly where both vol and trend features do.
    both = history["vol_features"].merge(history["trend_features"], on=["date", "symbol"])[["date", "symbol"]]
    train = splits()["train"]
    expected = both[(both.date >= train.start) & (both.date <= train.end)]
    assert len(labels[labels.split == "train"]) == len(expected)


def test_a_rerun_of_a_split_replaces_its_labels(regime_run):
    data_dir, _ = regime_run
    resources = build_resources(str(data_dir), MarketData(source="embedded"))
    before = read_table(str(data_dir / "warehouse.duckdb"), "regime_labels").sort_values(["split", "date", "symbol"]).reset_index(drop=True)
    assert dg.materialize(all_assets, selection=["regime_labels"], partition_key="test", resources=resources).success
    after = read_table(str(data_dir / "warehouse.duckdb"), "regime_labels").sort_values(["split", "date", "symbol"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)


def test_selection_keeps_the_higher_shap_member_of_correlated_pairs(regime_run, history):
    data_dir, results = regime_run
    chosen = json.loads((data_dir / "models" / "selected_features.json").read_text())
    train = splits()["train"]
    for group, columns in (("vol", F.VOL_COLUMNS), ("trend", F.TREND_COLUMNS), ("cross", F.CROSS_COLUMNS)):
        result = chosen[group]
        assert result["selected"] and set(result["selected"]) <= set(columns)
        frame = history[f"{group}_features"]
        frame = frame[(frame.date >= train.start) & (frame.date <= train.end)]
        corr = frame[result["selected"]].corr().abs().to_numpy()
        assert (corr[~np.eye(len(corr), dtype=bool)] <= 0.85).all(), group
        for dropped, kept in result["dropped"].items():
            assert result["importance"][kept] >= result["importance"][dropped]
            assert abs(frame[dropped].corr(frame[kept])) > 0.85
    meta = _metadata(results["selection"], "selected_features")
    assert "shap_plot" in meta and "corr_plot" in meta


def test_feature_assets_read_only_their_lookback_and_match_the_full_history(data_dir, instance, history):
    resources = build_resources(str(data_dir), MarketData(source="embedded"))
    first, last = dt.date(2024, 3, 1), dt.date(2024, 3, 7)
    lookback_start = first - dt.timedelta(days=F.LOOKBACK_DAYS)
    # Bars (and the universe) for exactly the look-back and the range: nothing older exists in this warehouse.
    assert materialize_range(all_assets, lookback_start.isoformat(), last.isoformat(), resources, instance,
                             selection=["daily_bars", "universe"]).success
    (data_dir / "models").mkdir()
    (data_dir / "models" / "garch_params.json").write_text(
        json.dumps({s: p.to_dict() for s, p in history["garch_params"].items()}))
    result = materialize_range(all_assets, first.isoformat(), last.isoformat(), resources, instance,
                               selection=["vol_features", "trend_features", "cross_features"])
    assert result.success and all(check_results(result).values())
    database = str(data_dir / "warehouse.duckdb")
    for table in ("vol_features", "trend_features", "cross_features"):
        stored = read_table(database, table).sort_values(["date", "symbol"] if table != "cross_features" else ["date"])
        full = history[table]
        expected = full[(full.date >= first) & (full.date <= last)]
        pd.testing.assert_frame_equal(stored.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)


def test_class_counts_show_an_absent_class_as_zero():
    labels = pd.DataFrame({
        "date": [dt.date(2024, 1, 1), dt.date(2024, 1, 2)], "symbol": ["BTCUSDT"] * 2,
        "vol_regime": ["low", "low"], "trend_regime": ["bull", "bear"], "cross_regime": ["normal", "normal"],
    })
    counts = regimes.class_counts(labels).set_index(["kind", "regime"])["days"]
    assert counts[("vol", "spike")] == 0 and counts[("vol", "low")] == 2
    assert counts[("cross", "convergent")] == 0 and counts[("cross", "normal")] == 2


def test_labels_are_reproducible_and_hmm_order_is_seed_independent(history):
    train = splits()["train"]
    config = regimes.settings()
    features = history["vol_features"]
    a = regimes.decode(regimes.fit_hmm(features, "vol", train, config), features, "vol", config)
    b = regimes.decode(regimes.fit_hmm(features, "vol", train, config), features, "vol", config)
    pd.testing.assert_frame_equal(a, b)
    other = {**config, "hmm": {**config["hmm"], "random_state": config["hmm"]["random_state"] + 100}}
    c = regimes.decode(regimes.fit_hmm(features, "vol", train, other), features, "vol", other)
    agreement = (a["vol_regime"] == c["vol_regime"]).mean()
    assert agreement > 0.95, agreement
