"""The README's main command, end to end on the full embedded history (slow: run with -m slow)."""

from __future__ import annotations

import json

import pytest

from regime_pipeline import cli
from regime_pipeline.resources.warehouse import read_table


@pytest.mark.slow
def test_make_run_materializes_every_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REGIME_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "home").mkdir()
    cli.main(["run"])
    out = capsys.readouterr().out
    for stage in cli.STAGES:
        assert f"==> {stage.name}:" in out
    database = str(tmp_path / "data" / "warehouse.duckdb")
    assert len(read_table(database, "daily_bars")) == 33_957
    labels = read_table(database, "regime_labels")
    assert set(labels["split"]) == {"train", "val", "test", "holdout"}
    chosen = json.loads((tmp_path / "data" / "models" / "selected_features.json").read_text())
    assert all(chosen[group]["selected"] for group in ("vol", "trend", "cross"))
    assert "Selected features:" in out and "vol regime days per split" in out
    assert "Allocation backtests" in out
    backtest = read_table(database, "allocation_backtest")
    assert set(backtest["split"]) == {"train", "val", "test", "holdout"}
    assert {"ppo_ensemble", "btc_buy_and_hold", "equal_weight", "inverse_volatility", "momentum_inverse_vol",
            "trend_risk_off_detector", "vol_target_trailing"} <= set(backtest["strategy"])
    policy = json.loads((tmp_path / "data" / "models" / "ppo_policy.json").read_text())
    assert len(policy["seeds"]) >= 10 and policy["policy"]["kind"] == "ensemble"
    assert set(read_table(database, "vol_forecast_report")["split"]) == {"train", "val", "test", "holdout"}
    assert "Vol forecasts, pooled across assets" in out
    walked = read_table(database, "walk_forward_probabilities")
    assert set(walked["origin"]) == {"2020", "2021", "2022", "2023", "2024", "2025"}
    assert "Walk-forward (origin Y" in out
    allocated = read_table(database, "walk_forward_allocation")
    assert set(allocated["origin"]) == {"2022", "2023", "2024", "2025", "pooled"}
    assert {"ppo_ensemble", "equal_weight", "btc_buy_and_hold"} <= set(allocated["strategy"])
    deployed = json.loads((tmp_path / "data" / "models" / "walk_forward_policy" / "2025.json").read_text())
    assert deployed["profile"] == "light" and deployed["train"][1] == "2023-12-31"
    assert "Walk-forward allocation (origin Y" in out
