"""`weekly_rebalance` materialized in-process with the paper broker on the embedded bars and
synthetic walk-forward probabilities (both targets, different numbers), the deployed policy being
the latest walk-forward origin's; a change of the deployed policy; the two schedules' ticks."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from regime_pipeline.core.allocation import policy as allocation
from regime_pipeline.core.allocation.policy import AllocationPolicy, BookStart
from regime_pipeline.core.trading import book as books
from regime_pipeline.core.trading.ledger import Ledger
from regime_pipeline.core.trading.orders import current_weights
from regime_pipeline.core.trading.risk import RiskLimits, StaleDataError
from regime_pipeline.definitions import all_assets, defs
from regime_pipeline.partitions import POLICY_ORIGIN_NAMES
from regime_pipeline.resources import build_resources
from regime_pipeline_tests.conftest import (
    check_results, embedded_daily_bars, embedded_daily_closes, synthetic_probabilities, write_table, write_universe_tables,
)

D = dt.date
N = 13
LATEST = POLICY_ORIGIN_NAMES[-1]


def _walk_forward_probabilities(keep=None):
    """Stand-in rows of `walk_forward_probabilities`: the forward target from seed 0 (what the
    policies observe), the same_day target from seed 1, origin = the day's year."""
    parts = []
    for seed, target in ((0, "forward"), (1, "same_day")):
        frame = synthetic_probabilities(seed=seed)
        frame = frame.loc[pd.to_datetime(frame["date"]).dt.year >= 2020]
        if keep is not None:
            frame = frame.loc[keep(frame)]
        parts.append(frame.assign(origin=pd.to_datetime(frame["date"]).dt.year.astype(str), target=target))
    return pd.concat(parts, ignore_index=True)


def _deploy(data_dir, policy: AllocationPolicy, profile: str = "light") -> None:
    path = data_dir / "models" / "walk_forward_policy" / f"{LATEST}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"policy": policy.to_dict(), "profile": profile, "origin": int(LATEST)}))


def _policy(dim: int, seed: int = 0) -> AllocationPolicy:
    rng = np.random.default_rng(seed)
    sizes = [dim, 16, N + 1]
    layers = tuple((rng.normal(0, 0.4, size=(o, i)), rng.normal(0, 0.2, size=o)) for i, o in zip(sizes[:-1], sizes[1:]))
    return AllocationPolicy(layers, np.zeros(dim), np.ones(dim), 10.0, 1e-8)


@pytest.fixture()
def book(tmp_path):
    """A data directory with bars, probabilities and a deployed policy, as earlier stages leave it."""
    data_dir = tmp_path / "data"
    database = str(data_dir / "warehouse.duckdb")
    data_dir.mkdir()
    write_table(database, "daily_bars", embedded_daily_bars())
    write_table(database, "walk_forward_probabilities", _walk_forward_probabilities())
    universe = write_universe_tables(database)
    forward = synthetic_probabilities(seed=0)
    data = allocation.allocation_data(embedded_daily_bars(), forward.loc[pd.to_datetime(forward["date"]).dt.year >= 2020],
                                      embedded_daily_closes(), universe)
    dim = allocation.make_env(data, D(2025, 1, 1), D(2025, 2, 1)).observation_space.shape[0]
    policy = _policy(dim)
    _deploy(data_dir, policy)
    return data_dir, data, policy


def _rebalance(data_dir, first: str, last: str, instance):
    return dg.materialize(
        all_assets, selection=["weekly_rebalance"], resources=build_resources(str(data_dir)), instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
    )


def test_weeks_trade_in_order_and_a_rerun_sends_nothing(book, instance) -> None:
    data_dir, data, policy = book
    result = _rebalance(data_dir, "2025-01-06", "2025-03-03", instance)
    assert result.success
    assert check_results(result) == {"paper_ledger_tracks_backtest": True}
    ledger = Ledger(data_dir / "ledger" / "paper.duckdb", initial_cash=10_000)
    weeks = [w.date() if hasattr(w, "date") else w for w in ledger.equity_history()["week"]]
    assert weeks == [D(2025, 1, 6) + dt.timedelta(days=7 * i) for i in range(9)]
    orders = ledger.orders()
    assert len(orders) > 9 and orders["client_order_id"].is_unique
    # The first week's target is the policy's own decision at the close of Sunday 2025-01-05.
    decision = allocation.decide_week(policy, data, D(2025, 1, 6), D(2025, 1, 6), RiskLimits.from_config())
    assert decision.data_through == D(2025, 1, 5)
    assert ledger.plan(D(2025, 1, 6)).details["target"] == pytest.approx(decision.target.tolist())
    metadata = result.asset_materializations_for_node("weekly_rebalance")[-1].metadata
    assert metadata["week"].value == "2025-03-03" and "| cash " in metadata["weights"].value

    again = _rebalance(data_dir, "2025-03-03", "2025-03-03", instance)
    assert again.success
    assert len(Ledger(data_dir / "ledger" / "paper.duckdb", initial_cash=10_000).orders()) == len(orders)
    assert again.asset_materializations_for_node("weekly_rebalance")[-1].metadata["orders_sent"].value == 0


def test_a_week_without_sundays_data_is_refused_and_nothing_is_written(book, instance) -> None:
    data_dir, _, _ = book
    database = str(data_dir / "warehouse.duckdb")
    write_table(database, "walk_forward_probabilities", _walk_forward_probabilities(lambda f: f["date"] < D(2025, 2, 1)))
    assert _rebalance(data_dir, "2025-01-27", "2025-01-27", instance).success
    failed = dg.materialize(
        all_assets, selection=["weekly_rebalance"], resources=build_resources(str(data_dir)), instance=instance,
        partition_key="2025-02-03", raise_on_error=False,
    )
    assert not failed.success
    errors = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no regime probabilities for 2025-02-02" in str(errors[0].event_specific_data.error)
    ledger = Ledger(data_dir / "ledger" / "paper.duckdb", initial_cash=10_000)
    assert [str(w)[:10] for w in ledger.equity_history()["week"]] == ["2025-01-27"]


def test_a_new_deployed_policy_starts_a_new_book_from_the_positions_held(book, instance) -> None:
    data_dir, data, first = book
    limits = RiskLimits.from_config()
    assert _rebalance(data_dir, "2025-01-06", "2025-02-03", instance).success
    ledger = Ledger(data_dir / "ledger" / "paper.duckdb", initial_cash=10_000)
    positions, cash = ledger.book()
    held, value = current_weights(data.prices.symbols, positions, cash,
                                  dict(zip(data.prices.symbols, data.prices.close[data.index(D(2025, 2, 9))])))
    marks = ledger.drawdown_history(before=D(2025, 2, 10))

    second = _policy(len(first.obs_mean), seed=1)  # e.g. the origin's policy retrained
    _deploy(data_dir, second, profile="default")
    result = _rebalance(data_dir, "2025-02-10", "2025-03-03", instance)
    assert result.success
    # The check compares the ledger's current book with the policy that traded it, and passes.
    assert check_results(result) == {"paper_ledger_tracks_backtest": True}
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.metadata["weeks"].value == 4 and "since 2025-02-10" in evaluation.metadata["book"].value

    details = ledger.plan_details()
    old_book, new_book = books.book_of(details[D(2025, 2, 3)]), books.book_of(details[D(2025, 2, 10)])
    assert old_book.first_week == D(2025, 1, 6) and old_book.policy == books.fingerprint(first.to_dict())
    assert new_book.first_week == D(2025, 2, 10) and new_book.policy == books.fingerprint(second.to_dict())
    assert books.book_of(details[D(2025, 3, 3)]).to_dict() == new_book.to_dict()  # the later weeks continue it
    # It starts from the positions the account held at the Sunday close, not from cash; the
    # drawdown stop's earlier marks carry over in units of that value.
    np.testing.assert_allclose(new_book.weights, held, atol=1e-12)
    assert new_book.value == pytest.approx(value) and held[:-1].sum() > 0.1
    start = new_book.start(ledger)
    assert start.marks == tuple((m / value, s) for m, s in marks)
    # Its first decision is the new policy's, from those positions.
    decision = allocation.decide_week(second, data, D(2025, 2, 10), D(2025, 2, 10), limits, BookStart(held, start.marks))
    assert ledger.plan(D(2025, 2, 10)).details["target"] == pytest.approx(decision.target.tolist())

    # Compared with the new policy's backtest from the ledger's first week (the book it never
    # traded), the ledger is far off: what the check would have failed on.
    wrong = books.Book(new_book.policy, new_book.label, D(2025, 1, 6), new_book.symbols,
                       np.eye(N + 1)[N], 10_000.0)
    run = allocation.backtest_policy(second, data, D(2025, 1, 6), D(2025, 3, 9), limits)
    at_open = dict(zip(run.dates[run.rebalance_days], run.equity_open[run.rebalance_days]))
    after = ledger.equity_history().set_index("week")["equity_after"]
    gaps = [after[pd.Timestamp(w)] / 10_000 / at_open[w] - 1 for w in (D(2025, 2, 10), D(2025, 3, 3))]
    assert max(abs(g) for g in gaps) > 0.005 and wrong.first_week < new_book.first_week

    # Rerunning every week (both books) sends nothing.
    again = _rebalance(data_dir, "2025-01-06", "2025-03-03", instance)
    assert again.success and again.asset_materializations_for_node("weekly_rebalance")[-1].metadata["orders_sent"].value == 0


def test_a_weekly_decision_ignores_everything_after_sunday(book) -> None:
    _, data, policy = book
    week, limits = D(2025, 3, 3), RiskLimits.from_config()
    t = data.index(D(2025, 3, 2))
    rng = np.random.default_rng(1)
    prices = dataclasses.replace(data.prices, open=data.prices.open.copy(), close=data.prices.close.copy())
    prices.close[t + 1 :] *= rng.uniform(0.5, 2.0, size=prices.close[t + 1 :].shape)
    prices.open[t + 1 :] *= rng.uniform(0.5, 2.0, size=prices.open[t + 1 :].shape)
    probs = data.probs.copy()
    probs[t + 1 :] = rng.random(probs[t + 1 :].shape)
    altered = allocation.AllocationData(prices, probs, data.prob_columns)
    a = allocation.decide_week(policy, data, D(2025, 1, 6), week, limits)
    b = allocation.decide_week(policy, altered, D(2025, 1, 6), week, limits)
    np.testing.assert_array_equal(a.target, b.target)
    with pytest.raises(StaleDataError, match="the decision needs the close of 2025-03-02"):
        allocation.decide_week(policy, data.through(D(2025, 2, 28)), D(2025, 1, 6), week, limits)


@pytest.mark.filterwarnings("ignore:Starting in dagster 1.11", "ignore:Function `JobDefinition.run_request_for_partition`")
def test_schedules_target_the_week_that_starts_and_the_day_that_ended() -> None:
    weekly_rebalance_schedule = defs.get_schedule_def("weekly_rebalance_schedule")
    daily_update_schedule = defs.get_schedule_def("daily_update_schedule")
    monday = dt.datetime(2026, 1, 5, 1, 0, tzinfo=dt.timezone.utc)
    weekly = weekly_rebalance_schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=monday))
    assert weekly_rebalance_schedule.cron_schedule == "0 1 * * 1"
    assert weekly_rebalance_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert [r.partition_key for r in weekly.run_requests] == ["2026-01-05"]
    assert weekly.run_requests[0].tags["dagster/partition"] == "2026-01-05"
    daily = daily_update_schedule.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 1, 5, 0, 15, tzinfo=dt.timezone.utc))
    )
    assert daily_update_schedule.cron_schedule == "15 0 * * *"
    assert daily_update_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert [r.partition_key for r in daily.run_requests] == ["2026-01-04"]
