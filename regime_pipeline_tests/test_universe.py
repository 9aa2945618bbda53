"""The point-in-time universe: chosen at each weekly decision from data up to that day only."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from regime_pipeline.configs import universe
from regime_pipeline.core.data.universe import changes, is_decision_day, membership
from regime_pipeline_tests.conftest import embedded_daily_bars

WEEKDAY = 0  # Monday trades: decisions at Sunday's close
START, END = dt.date(2017, 8, 17), dt.date(2026, 1, 1)


@pytest.fixture(scope="module")
def candidate_bars() -> pd.DataFrame:
    return embedded_daily_bars(universe().symbols)


@pytest.fixture(scope="module")
def pit() -> object:
    return universe().with_mode("point_in_time")


@pytest.fixture(scope="module")
def members(candidate_bars, pit) -> pd.DataFrame:
    return membership(candidate_bars, START, END, pit, WEEKDAY)


def _members_on(rows: pd.DataFrame, day: dt.date) -> set[str]:
    return set(rows.loc[(rows["date"] == day) & rows["member"], "symbol"])


@pytest.mark.parametrize("day", [dt.date(2019, 6, 2), dt.date(2021, 5, 12), dt.date(2022, 5, 8), dt.date(2024, 9, 9)])
def test_a_member_at_day_d_is_chosen_from_data_up_to_d_only(candidate_bars, pit, members, day):
    """Every bar after d replaced by a violent, volume-heavy path: nothing up to d changes."""
    rng = np.random.default_rng(3)
    shocked = candidate_bars.copy()
    later = shocked["date"] > day
    factor = rng.uniform(0.01, 100.0, size=int(later.sum()))
    shocked.loc[later, "volume"] *= factor
    shocked.loc[later, ["open", "high", "low", "close"]] = shocked.loc[later, ["open", "high", "low", "close"]].mul(
        rng.uniform(0.2, 5.0, size=int(later.sum())), axis=0)
    after = membership(shocked, START, END, pit, WEEKDAY)
    up_to = members["date"] <= day
    pd.testing.assert_frame_equal(members.loc[up_to].reset_index(drop=True),
                                  after.loc[after["date"] <= day].reset_index(drop=True))
    # ... and the shock does change the membership after d (the test can fail).
    assert not members.loc[~up_to].reset_index(drop=True).equals(after.loc[after["date"] > day].reset_index(drop=True))


def test_volume_on_a_decision_day_moves_the_members_from_that_day_on(candidate_bars, pit, members):
    sunday = dt.date(2023, 4, 30)
    assert is_decision_day([sunday], WEEKDAY)[0]
    assert "XLMUSDT" not in _members_on(members, sunday)
    boosted = candidate_bars.copy()
    hit = (boosted["symbol"] == "XLMUSDT") & (boosted["date"] == sunday)
    boosted.loc[hit, "volume"] *= 10_000
    after = membership(boosted, START, END, pit, WEEKDAY)
    assert "XLMUSDT" in _members_on(after, sunday) and "XLMUSDT" in _members_on(after, sunday + dt.timedelta(days=6))
    saturday = sunday - dt.timedelta(days=1)
    assert _members_on(after, saturday) == _members_on(members, saturday)


def test_members_are_the_largest_by_trailing_quote_volume(candidate_bars, pit, members):
    """Recomputed independently with pandas: on each decision day the members are the 13
    candidates with the largest mean volume x close over the 30 days ending there, among those
    with a bar on each of them."""
    window = pit.quote_volume_window_days
    wide = candidate_bars.assign(qv=candidate_bars["volume"] * candidate_bars["close"]).pivot(
        index="date", columns="symbol", values="qv")
    wide.index = pd.to_datetime(wide.index)
    wide = wide.reindex(pd.date_range(wide.index.min(), wide.index.max(), freq="D"))
    mean = wide.rolling(window, min_periods=window).mean()
    checked = 0
    for day in [dt.date(2018, 12, 30), dt.date(2020, 3, 15), dt.date(2021, 11, 14), dt.date(2022, 5, 8),
                dt.date(2023, 12, 3), dt.date(2025, 12, 28)]:
        expected = set(mean.loc[pd.Timestamp(day)].dropna().nlargest(pit.size).index)
        assert _members_on(members, day) == expected, day
        checked += 1
    assert checked == 6
    per_day = members.loc[members["member"]].groupby("date").size()
    assert per_day.max() == pit.size


def test_a_new_listing_waits_for_a_full_window(members, pit):
    shib = members.loc[(members["symbol"] == "SHIBUSDT") & members["member"], "date"]
    first = shib.min()
    listed = universe()["SHIBUSDT"].listed
    assert first >= listed + dt.timedelta(days=pit.quote_volume_window_days - 1)
    assert is_decision_day([first], WEEKDAY)[0]


def test_a_member_whose_data_end_leaves_after_its_last_bar(members):
    assert "LUNAUSDT" in _members_on(members, dt.date(2022, 5, 13))
    assert not (members["symbol"] == "LUNAUSDT").loc[members["date"] > dt.date(2022, 5, 13)].any()
    # Its place stays empty until the next decision (Sunday 2022-05-15).
    assert len(_members_on(members, dt.date(2022, 5, 14))) == 12
    assert len(_members_on(members, dt.date(2022, 5, 15))) == 13
    assert "MATICUSDT" in _members_on(members, dt.date(2024, 9, 10))
    assert "MATICUSDT" not in set(members.loc[members["date"] > dt.date(2024, 9, 10), "symbol"])


def test_changes_are_recorded_with_their_dates(members):
    table = changes(members)
    luna = table.loc[table["date"] == dt.date(2022, 5, 14)]
    assert luna["left"].item() == "LUNA" and luna["entered"].item() == ""
    # Between two decisions a member only leaves, when its data end; nobody enters.
    off_schedule = table.loc[~is_decision_day(table["date"].tolist(), WEEKDAY)]
    assert (off_schedule["entered"] == "").all()
    assert {dt.date(2022, 5, 14), dt.date(2024, 9, 11)} <= set(off_schedule["date"])


def test_fixed_mode_is_the_survivors_on_every_day_they_trade(candidate_bars):
    fixed = universe().with_mode("fixed")
    rows = membership(candidate_bars, dt.date(2020, 9, 1), dt.date(2020, 10, 1), fixed, WEEKDAY)
    assert _members_on(rows, dt.date(2020, 9, 21)) == set(fixed.fixed) - {"AVAXUSDT"}
    assert _members_on(rows, dt.date(2020, 9, 22)) == set(fixed.fixed)
    assert not rows.loc[rows["member"], "symbol"].isin(["LUNAUSDT", "EOSUSDT"]).any()


def test_the_universe_asset_stores_members_and_plots_them(data_dir, instance):
    from regime_pipeline.definitions import all_assets
    from regime_pipeline.resources import build_resources
    from regime_pipeline.resources.warehouse import read_table
    from regime_pipeline_tests.conftest import materialize_range, universe_mode, write_table

    resources = build_resources(str(data_dir))
    bars = embedded_daily_bars(universe().symbols)
    write_table(str(data_dir / "warehouse.duckdb"), "daily_bars",
                bars.loc[(bars["date"] >= dt.date(2022, 3, 1)) & (bars["date"] <= dt.date(2022, 5, 31))])
    with universe_mode("point_in_time"):
        result = materialize_range(all_assets, "2022-05-01", "2022-05-31", resources, instance, selection=["universe"])
    assert result.success
    stored = read_table(str(data_dir / "warehouse.duckdb"), "universe")
    assert pd.to_datetime(stored["date"]).dt.date.min() == dt.date(2022, 5, 1)
    metadata = next(m.metadata for m in result.asset_materializations_for_node("universe") if "changes" in m.metadata)
    assert "LUNA" in metadata["changes"].value and "plot" in metadata
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {"at_most_size_members": True}


def test_cross_features_are_computed_over_the_days_members(candidate_bars, members):
    from regime_pipeline.core.features import daily as F

    start, end = dt.date(2022, 5, 1), dt.date(2022, 5, 20)
    on_members = F.cross_features(candidate_bars, start, end, members=members.loc[members["member"], ["date", "symbol"]])
    counts = on_members.set_index("date")["n_assets"]
    assert counts.max() <= 13
    assert counts[dt.date(2022, 5, 14)] == 12  # LUNA's data ended the day before; no replacement until Sunday
    every = F.cross_features(candidate_bars, start, end).set_index("date")["n_assets"]
    assert (every > counts).all()  # all candidates would be more than the members
