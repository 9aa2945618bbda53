"""`ppo_policy` and `allocation_backtest` materialized in-process (fast profile) on the embedded
daily bars and synthetic regime probabilities in a temporary warehouse."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from regime_pipeline.configs import splits
from regime_pipeline.core.allocation import bootstrap, comparison, rules
from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.strategies import (
    forecast_table,
    inverse_vol_forecast_strategy,
    run_benchmarks,
    run_strategy,
    wide_prices,
)
from regime_pipeline.definitions import all_assets
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.artifacts import sha256_file
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline_tests.conftest import (
    embedded_daily_bars,
    materialize_ppo_policy,
    synthetic_probabilities,
    write_table,
    write_universe_tables,
)


def _forecasts() -> pd.DataFrame:
    """Random positive `vol_forecasts` rows (both horizons, the four models) from mid-2018."""
    keys = embedded_daily_bars()[["date", "symbol"]]
    keys = keys.loc[keys["date"] >= pd.Timestamp("2018-06-01").date()].reset_index(drop=True)
    rng = np.random.default_rng(3)
    frames = [keys.assign(horizon_days=h, **{m: rng.uniform(0.01, 0.08, len(keys)) for m in ("naive", "garch", "har", "lgbm")})
              for h in (1, 7)]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    database = str(data_dir / "warehouse.duckdb")
    write_table(database, "daily_bars", embedded_daily_bars())
    write_table(database, "regime_probabilities", synthetic_probabilities())
    write_table(database, "vol_forecasts", _forecasts())
    write_universe_tables(database)
    resources = build_resources(str(data_dir))
    with dg.instance_for_test() as instance:
        _, policy, _ = materialize_ppo_policy(all_assets, resources, instance)
        backtest = dg.materialize(all_assets, selection=["allocation_backtest"], partition_key="test",
                                  resources=resources, instance=instance)
    return data_dir, policy, backtest


def test_ppo_policy_deploys_the_ensemble_of_every_seed_and_reports_each(materialized) -> None:
    data_dir, result, _ = materialized
    assert result.success
    artifact = json.loads((data_dir / "models" / "ppo_policy.json").read_text())
    assert sorted(int(s) for s in artifact["seeds"]) == [0, 1]
    assert artifact["deployed"] == "ensemble" and artifact["policy"]["kind"] == "ensemble"
    assert len(artifact["policy"]["members"]) == 2 and "chosen_seed" not in artifact
    for seed, info in artifact["seeds"].items():
        assert info["sb3_model"]["sha256"] == sha256_file(data_dir / "models" / "ppo_policy" / f"seed_{seed}.zip")
        assert info["history"] and info["train_curve"]
        assert info["kept_step"] in [h[0] for h in info["history"] if h[3]]  # an eligible evaluation
    # Each seed is a partition of ppo_seed_policy; the ensemble's members are their kept actors.
    records = [json.loads((data_dir / "models" / "ppo_seed_policy" / f"{seed}.json").read_text()) for seed in (0, 1)]
    assert [r["policy"] for r in records] == artifact["policy"]["members"]
    assert all(r["profile"] == "fast" and r["val"] == ["2023-01-01", "2023-12-31"] for r in records)
    metadata = result.asset_materializations_for_node("ppo_policy")[0].metadata
    assert "data:image/png;base64" in metadata["learning_curves"].value
    assert "±" in metadata["val_score_seeds"].value and "ensemble of 2 seeds" in metadata["deployed"].value


def test_allocation_backtest_compares_the_ensemble_with_benchmarks_and_rules_on_one_accounting(materialized) -> None:
    data_dir, _, result = materialized
    assert result.success
    table = read_table(str(data_dir / "warehouse.duckdb"), "allocation_backtest")
    assert set(table["split"]) == {"test"}
    assert list(table["strategy"]) == [
        "ppo_ensemble", "ppo_seeds_mean (n=2)", "ppo_seeds_sd", "btc_buy_and_hold", "equal_weight",
        "inverse_volatility", "momentum_inverse_vol", "inverse_vol_forecast", "trend_risk_off_detector",
        "trend_risk_off_momentum", "vol_target_detector", "vol_target_trailing",
    ]
    split, train = splits()["test"], splits()["train"]
    bars = embedded_daily_bars()
    expected = run_benchmarks(bars, split.start, split.end)
    rows = table.set_index("strategy")
    data = allocation.allocation_data(bars, synthetic_probabilities())
    prices = wide_prices(bars)
    forecast = inverse_vol_forecast_strategy(forecast_table(_forecasts(), "lgbm", 7), prices)
    expected["inverse_vol_forecast"] = run_strategy(forecast, prices, split.start, split.end)
    for name, strategy in rules.rule_strategies(data, rules.calibrate(data, train.start, train.end)).items():
        expected[name] = run_strategy(strategy, data.prices, split.start, split.end)
    for name, r in expected.items():
        assert rows.loc[name, "total_return"] == pytest.approx(r.summary()["total_return"], abs=1e-12)
        assert rows.loc[name, "sortino"] == pytest.approx(r.summary()["sortino"], abs=1e-12)
    artifact = json.loads((data_dir / "models" / "ppo_policy.json").read_text())
    deployed = allocation.load_policy(artifact["policy"])
    mine = allocation.backtest_policy(deployed, data, split.start, split.end)
    assert rows.loc["ppo_ensemble", "cagr"] == pytest.approx(mine.summary()["cagr"], abs=1e-12)
    seeds = [allocation.backtest_policy(m, data, split.start, split.end).summary()["sharpe"] for m in deployed.members]
    assert rows.loc["ppo_seeds_mean (n=2)", "sharpe"] == pytest.approx(np.mean(seeds), abs=1e-12)
    assert rows.loc["ppo_seeds_sd", "sharpe"] == pytest.approx(np.std(seeds, ddof=1), abs=1e-12)
    # Every difference to equal weight and BTC carries its bootstrap interval, recomputable from the returns.
    ew, btc = expected["equal_weight"].period_returns, expected["btc_buy_and_hold"].period_returns
    again = bootstrap.compare({"ppo_ensemble": mine.period_returns, "equal_weight": ew, "btc_buy_and_hold": btc},
                              ["equal_weight"]).set_index("strategy")
    assert rows.loc["ppo_ensemble", "sharpe_vs_ew"] == pytest.approx(again.loc["ppo_ensemble", "sharpe_diff"], abs=1e-12)
    assert rows.loc["ppo_ensemble", "sharpe_vs_ew_low"] == pytest.approx(again.loc["ppo_ensemble", "sharpe_low"], abs=1e-12)
    assert rows.loc["ppo_ensemble", "cagr_vs_ew_high"] == pytest.approx(again.loc["ppo_ensemble", "cagr_high"], abs=1e-12)
    assert (rows["sharpe_vs_btc_low"].dropna() <= rows["sharpe_vs_btc_high"].dropna()).all()
    assert rows.loc["equal_weight", "sharpe_vs_ew"] == 0.0
    metadata = result.asset_materializations_for_node("allocation_backtest")[0].metadata
    assert "data:image/png;base64" in metadata["equity"].value
    assert metadata["variants_tried"].value == comparison.variants_tried() >= 10
    report = (data_dir / "reports" / "allocation_test.md").read_text()
    assert f"{comparison.variants_tried()} variants tried" in report and "Δ" in report
