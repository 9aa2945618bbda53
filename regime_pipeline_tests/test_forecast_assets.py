"""Forecast assets materialized in-process: models fitted on train, two weeks of daily
forecasts read from their look-back only, and one split's report.

The warehouse holds only what these assets may read: bars and vol features of the train
split, and of the forecast days with their 30-day look-back. Everything is compared with
the same computation done by `core` on the full history.
"""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pandas as pd
import pytest

from regime_pipeline.configs import splits
from regime_pipeline.core.features import daily as F
from regime_pipeline.core.features import vol_forecasts as V
from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline_tests.conftest import check_results, embedded_daily_bars, materialize_range, write_table

DAY = dt.timedelta(days=1)
FIRST, LAST = dt.date(2024, 3, 1), dt.date(2024, 3, 14)


@pytest.fixture(scope="module")
def history() -> dict:
    bars = embedded_daily_bars()
    train = splits()["train"]
    params = F.fit_garch(bars, train.start, train.end + DAY)
    features = F.vol_features(bars, params, bars["date"].min(), dt.date(2026, 1, 1))
    models = V.fit_models(bars, features, train.start, train.end + DAY)
    return {"bars": bars, "params": params, "vol_features": features, "models": models,
            "forecasts": V.forecast(bars, features, params, models, FIRST, LAST + DAY)}


def _between(frame: pd.DataFrame, first: dt.date, last: dt.date) -> pd.Series:
    return (frame["date"] >= first) & (frame["date"] <= last)


def test_vol_forecasts_read_only_their_lookback():
    asset = next(a for a in all_assets if dg.AssetKey("vol_forecasts") in a.keys)
    mapping = asset.get_partition_mapping(dg.AssetKey("daily_bars"))
    assert isinstance(mapping, dg.TimeWindowPartitionMapping) and mapping.start_offset == -V.LOOKBACK_DAYS
    assert asset.backfill_policy == dg.BackfillPolicy.single_run()


def test_forecast_assets_fit_on_train_forecast_and_report(data_dir, instance, history):
    train, test = splits()["train"], splits()["test"]
    bars, features = history["bars"], history["vol_features"]
    database = str(data_dir / "warehouse.duckdb")
    kept_bars = bars[_between(bars, train.start, train.end) | _between(bars, FIRST - V.LOOKBACK_DAYS * DAY, LAST)]
    write_table(database, "daily_bars", kept_bars.reset_index(drop=True))
    write_table(database, "vol_features", features[_between(features, train.start, train.end) | _between(features, FIRST, LAST)])
    (data_dir / "models").mkdir()
    (data_dir / "models" / "garch_params.json").write_text(json.dumps({s: p.to_dict() for s, p in history["params"].items()}))
    resources = build_resources(str(data_dir), MarketData(source="embedded"))

    fitted = dg.materialize(all_assets, selection=["vol_forecast_models"], resources=resources, instance=instance)
    assert fitted.success
    stored = json.loads((data_dir / "models" / "vol_forecast_models.json").read_text())
    assert stored == json.loads(json.dumps(history["models"].to_dict()))  # train rows only, as core fits them
    meta = fitted.asset_materializations_for_node("vol_forecast_models")[0].metadata
    assert {"har_coefficients", "lgbm_gain_share", "path", "sha256"} <= set(meta)

    result = materialize_range(all_assets, FIRST.isoformat(), LAST.isoformat(), resources, instance, selection=["vol_forecasts"])
    assert result.success and check_results(result) == {"valid_forecasts": True}
    forecasts = read_table(database, "vol_forecasts").sort_values(["date", "symbol", "horizon_days"]).reset_index(drop=True)
    forecasts["date"] = pd.to_datetime(forecasts["date"]).dt.date
    assert len(forecasts) == 13 * 2 * 14
    pd.testing.assert_frame_equal(forecasts, history["forecasts"], check_dtype=False, check_exact=True)

    report = dg.materialize(all_assets, selection=["vol_forecast_report"], partition_key="test", resources=resources,
                            instance=instance)
    assert report.success
    scores = read_table(database, "vol_forecast_report")
    expected = V.evaluate(history["forecasts"], V.realized(kept_bars, test.start, test.end + DAY))
    pd.testing.assert_frame_equal(scores.drop(columns="split").reset_index(drop=True), expected, check_dtype=False)
    assert (scores["split"] == "test").all()
    # Scored days: the forecast days whose target lies in the bars stored (h-day targets end on LAST).
    pooled = scores[scores.symbol == "pooled"].set_index(["horizon_days", "model"])["n"]
    assert pooled[(1, "lgbm")] == 13 * 13 and pooled[(7, "lgbm")] == 13 * 7
    text = (data_dir / "reports" / "vol_forecasts_test.md").read_text()
    assert "# Volatility forecasts on test" in text and "0.027" in text
    assert (data_dir / "reports" / "vol_forecasts_test.png").stat().st_size > 10_000
    assert json.loads((data_dir / "reports" / "vol_forecasts_test.json").read_text())[0]["symbol"] == "ADAUSDT"
    meta = report.asset_materializations_for_node("vol_forecast_report")[0].metadata
    assert "plot" in meta and "pooled" in meta
