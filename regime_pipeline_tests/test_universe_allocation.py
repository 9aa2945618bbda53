"""Allocation and trading on the point-in-time universe: the policy's fixed shape over slots
filled by each decision's members, the accounting of a collapse inside an episode, and the 2025
weekly rebalance trading the members of each Sunday with the paper ledger tracking the backtest."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.policy import AllocationPolicy, slot_table
from regime_pipeline.core.allocation.portfolio import simulate
from regime_pipeline.core.allocation.strategies import settings
from regime_pipeline.core.allocation.survivorship import UniverseRun, comparison_table, paired_block_interval
from regime_pipeline.core.trading.ledger import Ledger
from regime_pipeline.definitions import all_assets
from regime_pipeline.partitions import POLICY_ORIGIN_NAMES
from regime_pipeline.resources import build_resources
from regime_pipeline_tests.conftest import (
    check_results, embedded_daily_bars, embedded_daily_closes, embedded_universe, synthetic_probabilities, universe_mode,
    write_table,
)

D = dt.date


@pytest.fixture(scope="module")
def point_in_time():
    with universe_mode("point_in_time") as config:
        bars = embedded_daily_bars(config.symbols)
        rows = embedded_universe(bars)
        probabilities = synthetic_probabilities(classes=(4, 4, 3), symbols=config.symbols)
        data = allocation.allocation_data(bars, probabilities, embedded_daily_closes(), rows)
        yield config, bars, rows, probabilities, data


def test_a_member_keeps_its_slot_and_a_newcomer_takes_a_free_one() -> None:
    members = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(slot_table(members, 3), [[0, 1, -1], [0, 2, -1], [1, 2, 3]])
    with pytest.raises(ValueError, match="4 members for 3 slots"):
        slot_table(np.ones((1, 4), dtype=bool), 3)


def test_the_policy_sees_13_slots_and_weighs_only_the_members_of_each_decision(point_in_time) -> None:
    config, _, _, _, data = point_in_time
    assert len(data.prices.symbols) == len(config.symbols) > config.size
    start, end = D(2021, 6, 1), D(2022, 12, 31)
    env = allocation.make_env(data, start, end)
    # The same shape as the fixed universe's: 13 slots of 4 + 4 class probabilities, 3 cross ones,
    # 13 weights + cash, 3 portfolio features, 13 listed flags.
    assert env.observation_space.shape == (13 * 8 + 3 + 14 + 3 + 13,) and env.action_space.shape == (14,)
    rng = np.random.default_rng(5)
    obs, _ = env.reset(options={"start": 0})
    targets = []
    for k in range(env.decision_days.size):
        obs, _, done, _, info = env.step(rng.uniform(-1, 1, size=14))
        targets.append(info["target"])
        d = int(env.decision_days[k]) + data.index(start) - 1  # env rows start the day before `start`
        weighed = np.flatnonzero(info["target"][:-1] > 0)
        assert set(weighed) <= set(np.flatnonzero(data.prices.members[d]))
        assert obs.shape == env.observation_space.shape
    # The environment's equity is simulate()'s for the same targets, collapses included.
    first = data.index(start) - 1
    rows = slice(first, data.index(end) + 1)
    result = simulate(data.prices.open[rows], data.prices.close[rows], np.stack(targets), env.decision_days,
                      settings().costs, symbols=data.prices.symbols)
    assert env._value == pytest.approx(result.equity[-1], rel=1e-12)
    luna = data.prices.symbols.index("LUNAUSDT")
    after = np.flatnonzero(data.prices.dates[rows] > D(2022, 5, 13))
    assert (result.weights[after, luna] == 0).all()  # nothing held, nothing priced, after its last bar
    assert result.weights[:, luna].max() > 0  # and the random policy did hold it before


def test_without_the_universe_table_the_point_in_time_policy_is_refused(point_in_time) -> None:
    _, bars, _, probabilities, _ = point_in_time
    data = allocation.allocation_data(bars, probabilities)
    with pytest.raises(ValueError, match="needs the `universe` table"):
        allocation.make_env(data, D(2024, 1, 1), D(2024, 3, 1))


def test_the_2025_weekly_rebalance_trades_the_members_of_each_sunday(point_in_time, tmp_path, instance) -> None:
    config, bars, rows, probabilities, data = point_in_time
    data_dir = tmp_path / "data"
    (data_dir / "models").mkdir(parents=True)
    database = str(data_dir / "warehouse.duckdb")
    write_table(database, "daily_bars", bars)
    # The walk-forward's out-of-sample probabilities the deployed policy observes (origin = the day's year).
    walked = probabilities.loc[pd.to_datetime(probabilities["date"]).dt.year >= 2020]
    write_table(database, "walk_forward_probabilities",
                walked.assign(origin=pd.to_datetime(walked["date"]).dt.year.astype(str), target="forward"))
    write_table(database, "universe", rows)
    write_table(database, "daily_closes", embedded_daily_closes())
    dim = allocation.make_env(data, D(2025, 1, 1), D(2025, 2, 1)).observation_space.shape[0]
    # A zero action head: equal actions, so equal weights over the members of the decision and cash.
    layers = ((np.zeros((16, dim)), np.zeros(16)), (np.zeros((14, 16)), np.zeros(14)))
    policy = AllocationPolicy(layers, np.zeros(dim), np.ones(dim), 10.0, 1e-8)
    deployed = data_dir / "models" / "walk_forward_policy" / f"{POLICY_ORIGIN_NAMES[-1]}.json"
    deployed.parent.mkdir(parents=True)
    deployed.write_text(json.dumps({"policy": policy.to_dict(), "profile": "light", "origin": int(POLICY_ORIGIN_NAMES[-1])}))
    # EOS joins the members on 2025-04-06 and leaves on 2025-05-18, before its delisting (05-24).
    result = dg.materialize(
        all_assets, selection=["weekly_rebalance"], resources=build_resources(str(data_dir)), instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: "2025-03-31", ASSET_PARTITION_RANGE_END_TAG: "2025-06-02"},
    )
    assert result.success
    assert check_results(result) == {"paper_ledger_tracks_backtest": True}
    ledger = Ledger(data_dir / "ledger" / "paper.duckdb", initial_cash=10_000)
    members = rows.loc[rows["member"].astype(bool)]
    bought, sold = set(), set()
    for week in [D(2025, 3, 31) + dt.timedelta(days=7 * i) for i in range(10)]:
        sunday = week - dt.timedelta(days=1)
        allowed = set(members.loc[members["date"] == sunday, "symbol"])
        target = dict(zip(data.prices.symbols, ledger.plan(week).details["target"]))
        held = {s for s, w in target.items() if w > 0}
        assert held == allowed, f"{week}: weights on {held ^ allowed}, members {allowed}"
        orders = ledger.orders(week)
        assert set(orders.loc[orders["side"] == "buy", "symbol"]) <= allowed
        bought |= {(week, s) for s in orders.loc[orders["side"] == "buy", "symbol"]}
        sold |= {(week, s) for s in orders.loc[orders["side"] == "sell", "symbol"]}
    # EOS is bought the week it joins and sold the week it leaves, six days before its delisting.
    assert (D(2025, 4, 7), "EOSUSDT") in bought and (D(2025, 5, 19), "EOSUSDT") in sold


def _flat_forecasts(bars: pd.DataFrame) -> pd.DataFrame:
    keys = bars[["date", "symbol"]]
    return pd.concat([keys.assign(horizon_days=h, naive=0.03, garch=0.03, har=0.03, lgbm=0.03) for h in (1, 7)],
                     ignore_index=True)


def test_the_survivorship_comparison_pairs_the_same_days(point_in_time) -> None:
    config, bars, rows, _, pit_data = point_in_time
    fixed_bars = embedded_daily_bars()
    with universe_mode("fixed"):
        fixed_data = allocation.allocation_data(fixed_bars, synthetic_probabilities(classes=(4, 4, 3)),
                                                embedded_daily_closes(), embedded_universe(fixed_bars))
    fixed = UniverseRun("fixed", fixed_data, _flat_forecasts(fixed_bars))
    pit = UniverseRun("point_in_time", pit_data, _flat_forecasts(bars))
    table = comparison_table(fixed, pit, {"2022": (D(2022, 1, 1), D(2022, 12, 31))}, resamples=200).set_index("strategy")
    assert set(table.index) >= {"btc_buy_and_hold", "equal_weight", "inverse_volatility", "momentum_inverse_vol"}
    # BTC is BTC in both universes; equal weight differs, since LUNA and FTT collapse inside 2022.
    assert table.loc["btc_buy_and_hold", "cagr_difference"] == pytest.approx(0.0, abs=1e-12)
    row = table.loc["equal_weight"]
    assert row["cagr_difference"] != 0.0
    assert row["cagr_difference_low"] <= row["cagr_difference"] <= row["cagr_difference_high"]
    same = np.random.default_rng(0).normal(0, 0.02, 365)
    assert paired_block_interval(same, same) == (0.0, 0.0)
