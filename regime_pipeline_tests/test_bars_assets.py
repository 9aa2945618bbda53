"""`minute_bars` and `daily_bars` materialized in-process on the real embedded data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from regime_pipeline.assets.bars import daily_bars, minute_bars
from regime_pipeline.configs import universe
from regime_pipeline.core.errors import DataError
from regime_pipeline.core.data.lake import MinuteLake
from regime_pipeline.definitions import defs
from regime_pipeline.resources import build_resources
from regime_pipeline.resources.market_data import MarketData
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline_tests.conftest import EMBEDDED, check_results, materialize_range

BARS = [minute_bars, daily_bars]


def _bars(data_dir: Path) -> pd.DataFrame:
    frame = read_table(str(data_dir / "warehouse.duckdb"), "daily_bars")
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame.sort_values(["date", "symbol"]).reset_index(drop=True)


@pytest.fixture
def resources(data_dir: Path) -> dict:
    return build_resources(str(data_dir), MarketData(source="embedded"))


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    for key in ("minute_bars", "daily_bars"):
        assert defs.resolve_assets_def(key).backfill_policy == dg.BackfillPolicy.single_run()


def test_minute_window_builds_daily_bars_that_match_the_exchange(resources, data_dir, instance):
    result = materialize_range(BARS, "2021-09-15", "2021-10-20", resources, instance)
    assert result.success
    assert all(check_results(result).values()), check_results(result)

    bars = _bars(data_dir)
    btc = bars[bars.symbol == "BTCUSDT"].set_index("date")
    from_minutes = btc.index[btc.source == "minutes"]
    # The raw window is 2021-09-17 22:23 .. 2021-10-17 22:21: its first and last days are partial.
    assert min(from_minutes) == dt.date(2021, 9, 18) and max(from_minutes) == dt.date(2021, 10, 16)
    assert len(from_minutes) == 29
    assert btc.loc[dt.date(2021, 9, 17), "source"] == "klines"
    # The real maintenance gap 07:00-08:59 leaves 1,320 bars, and the day is still exact.
    assert btc.loc[dt.date(2021, 9, 29), "n_minutes"] == 1320
    klines = pd.read_parquet(EMBEDDED / "daily_klines.parquet")
    klines["date"] = pd.to_datetime(klines["date"]).dt.date
    merged = bars.merge(klines, on=["symbol", "date"], suffixes=("", "_k"))
    assert len(merged) == len(bars)
    for column in ("open", "high", "low", "close"):
        assert (merged[column] == merged[f"{column}_k"]).all(), column
    assert ((merged.volume - merged.volume_k).abs() <= 1e-9 * merged.volume_k).all()
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "minutes_match_klines")
    assert evaluation.metadata["days_compared"].value == 8 * 29 + 1  # AVAX's window runs a day longer


def test_late_listings_are_absent_not_filled(resources, data_dir, instance):
    assert materialize_range(BARS, "2020-08-01", "2020-09-30", resources, instance).success
    bars = _bars(data_dir)
    first = bars.groupby("symbol").date.min()
    assert first["SOLUSDT"] == dt.date(2020, 8, 11)
    assert first["DOTUSDT"] == dt.date(2020, 8, 18)
    assert first["AVAXUSDT"] == dt.date(2020, 9, 22)
    assert first["BTCUSDT"] == dt.date(2020, 8, 1)
    assert not bars[["open", "high", "low", "close", "volume"]].isna().any().any()
    per_day = bars.groupby("date").symbol.nunique()
    # The 13 survivors have 10 and 13 assets on these days; the candidates 18 and 23.
    assert per_day[dt.date(2020, 8, 1)] == 18 and per_day[dt.date(2020, 9, 30)] == 23
    assert first["LUNAUSDT"] == dt.date(2020, 8, 21)


def test_an_assets_bars_end_with_its_data(resources, data_dir, instance):
    """LUNA's last bar is its collapse (2022-05-13); LUNAUSDT rows after it are another asset and
    never appear. The coverage check counts no missing day after an asset's last bar."""
    result = materialize_range(BARS, "2022-05-10", "2022-05-16", resources, instance)
    assert result.success and all(check_results(result).values())
    bars = _bars(data_dir)
    luna = bars[bars.symbol == "LUNAUSDT"].set_index("date")
    assert luna.index.max() == dt.date(2022, 5, 13)
    assert luna.loc[dt.date(2022, 5, 13), "close"] == 0.00005
    assert set(bars[bars.date == dt.date(2022, 5, 16)].symbol) == set(universe().trading(dt.date(2022, 5, 16), dt.date(2022, 5, 17)))


def test_rematerializing_is_idempotent(resources, data_dir, instance):
    assert materialize_range(BARS, "2021-09-25", "2021-10-05", resources, instance).success
    before = _bars(data_dir)
    lake_before = sorted(p.stat().st_size for p in (data_dir / "lake").rglob("*.parquet"))
    assert materialize_range(BARS, "2021-09-25", "2021-10-05", resources, instance).success
    pd.testing.assert_frame_equal(before, _bars(data_dir))
    assert sorted(p.stat().st_size for p in (data_dir / "lake").rglob("*.parquet")) == lake_before
    # A neighbouring range adds its own rows and leaves these alone.
    assert materialize_range(BARS, "2021-10-06", "2021-10-07", resources, instance).success
    after = _bars(data_dir)
    assert len(after) == len(before) + 2 * len(universe().trading(dt.date(2021, 10, 6), dt.date(2021, 10, 8)))
    pd.testing.assert_frame_equal(after[after.date <= dt.date(2021, 10, 5)].reset_index(drop=True), before)


def test_one_partition_can_be_materialized_alone(resources, data_dir, instance):
    result = dg.materialize(BARS, resources=resources, instance=instance, partition_key="2024-02-29")
    assert result.success
    bars = _bars(data_dir)
    assert list(bars.date.unique()) == [dt.date(2024, 2, 29)]
    assert sorted(bars.symbol) == sorted(universe().trading(dt.date(2024, 2, 29), dt.date(2024, 3, 1)))
    assert "MATICUSDT" in set(bars.symbol) and "LUNAUSDT" not in set(bars.symbol)


def test_bad_input_fails_naming_the_file_and_keeps_stored_bars(data_dir, instance, tmp_path):
    good = build_resources(str(data_dir), MarketData(source="embedded"))
    assert materialize_range(BARS, "2021-09-28", "2021-09-30", good, instance).success
    stored = _bars(data_dir)
    lake_days = MinuteLake(data_dir / "lake" / "minute_bars").stored_days()

    folder = tmp_path / "drop"
    folder.mkdir()
    # A day not stored yet (stored days are kept, not fetched again); high < low on line 1.
    row = "1632700800000,41000.0,40000.0,41500.0,41100.0,12.5,1632700859999,0,10,0,0,0\n"
    (folder / "BTCUSDT-1m-2021-09-27.csv").write_text(row)
    bad = build_resources(str(data_dir), MarketData(source="binance_files", files_dir=str(folder)))
    with pytest.raises(DataError, match=r"BTCUSDT-1m-2021-09-27\.csv, row 1.*high") as info:
        materialize_range(BARS, "2021-09-27", "2021-09-30", bad, instance, selection=["minute_bars"])
    assert "high < low" in str(info.value)
    pd.testing.assert_frame_equal(stored, _bars(data_dir))
    pd.testing.assert_frame_equal(lake_days, MinuteLake(data_dir / "lake" / "minute_bars").stored_days())


def test_a_tampered_minute_fails_the_blocking_reconciliation(resources, data_dir, instance):
    assert materialize_range([minute_bars], "2021-10-01", "2021-10-01", resources, instance).success
    lake = MinuteLake(data_dir / "lake" / "minute_bars")
    minutes = lake.read(dt.date(2021, 10, 1), dt.date(2021, 10, 2), ["ETHUSDT"])
    minutes.loc[100, "volume"] += 1.0
    lake.write_day("ETHUSDT", dt.date(2021, 10, 1), minutes.drop(columns="symbol"))

    result = materialize_range([daily_bars], "2021-10-01", "2021-10-01", resources, instance, raise_on_error=False)
    checks = check_results(result)
    assert checks["minutes_match_klines"] is False
    assert all(passed for name, passed in checks.items() if name != "minutes_match_klines")
    evaluation = next(e for e in result.get_asset_check_evaluations() if e.check_name == "minutes_match_klines")
    assert evaluation.metadata["violations"].value == 1
    assert "ETHUSDT" in evaluation.metadata["examples"].value


@pytest.fixture
def fake_binance():
    from regime_pipeline_tests.fake_binance import FakeBinance

    minutes = pd.read_parquet(EMBEDDED / "minute_bars.parquet")
    minutes["open_time"] = minutes["open_time"].astype("datetime64[ms]")
    daily = pd.read_parquet(EMBEDDED / "daily_klines.parquet")
    daily["date"] = pd.to_datetime(daily["date"]).dt.date
    with FakeBinance(minutes=minutes, daily=daily) as server:
        yield server


def test_live_source_ingests_resumes_after_a_failure_and_reconciles(data_dir, instance, fake_binance):
    from regime_pipeline.core.data.sources.ccxt_source import FetchError
    from regime_pipeline_tests.fake_binance import Scripted, unavailable

    resources = build_resources(str(data_dir), MarketData(source="ccxt", api_url=fake_binance.url, max_retries=0))
    # The daily klines of the symbols trading then come first (one page each, to verify the minute
    # days against); then BTCUSDT's minutes: its first two days (two pages each) arrive, then Binance fails.
    trading = universe().trading(dt.date(2021, 9, 20), dt.date(2021, 9, 24))
    fake_binance.script("/api/v3/klines", *[Scripted()] * (len(trading) + 4), unavailable())
    with pytest.raises(FetchError, match=r"BTCUSDT.*1 attempt"):
        materialize_range([minute_bars], "2021-09-20", "2021-09-23", resources, instance)
    lake = MinuteLake(data_dir / "lake" / "minute_bars")
    assert lake.stored_days()["date"].tolist() == [dt.date(2021, 9, 20), dt.date(2021, 9, 21)]

    before = len(fake_binance.requests_to("/api/v3/klines"))
    result = materialize_range(BARS, "2021-09-20", "2021-09-23", resources, instance)
    assert result.success and all(check_results(result).values())
    resumed = next(r for r in fake_binance.requests_to("/api/v3/klines")[before:] if r.params["interval"] == "1m")
    assert resumed.params["symbol"] == "BTCUSDT"
    assert int(resumed.params["startTime"]) == int(pd.Timestamp("2021-09-22").value // 10**6)

    bars = _bars(data_dir)
    assert (bars[bars.symbol.isin(["BTCUSDT", "ETHUSDT", "AVAXUSDT"])].source == "minutes").all()
    assert (bars[bars.symbol == "BNBUSDT"].source == "klines").all()
    assert len(bars) == 4 * len(trading)


def test_close_only_days_are_stored_apart_and_checked(resources, data_dir, instance):
    from regime_pipeline.assets.bars import daily_closes

    result = dg.materialize([daily_closes], resources=resources, instance=instance)
    assert result.success and check_results(result) == {"closes_only_where_configured": True}
    closes = read_table(str(data_dir / "warehouse.duckdb"), "daily_closes")
    assert set(closes["symbol"]) == {"FTTUSDT"} and len(closes) == 35
    assert pd.to_datetime(closes["date"]).dt.date.min() == universe()["FTTUSDT"].last_bar + dt.timedelta(days=1)


def test_a_symbols_rows_after_its_last_bar_are_never_joined_to_it():
    """A live source asked for LUNAUSDT returns Terra 2.0 after 2022-05-31: those rows are dropped."""
    from regime_pipeline.assets.bars import within_spans

    rows = pd.DataFrame({"symbol": ["LUNAUSDT", "LUNAUSDT", "LUNAUSDT", "BTCUSDT"],
                         "date": [dt.date(2022, 5, 13), dt.date(2022, 5, 31), dt.date(2022, 6, 1), dt.date(2022, 6, 1)],
                         "close": [0.00005, 8.87, 7.1, 31_000.0]})
    warnings = []

    class Log:
        def warning(self, message):
            warnings.append(message)

    kept = within_spans(rows, Log())
    assert kept["date"].tolist() == [dt.date(2022, 5, 13), dt.date(2022, 6, 1)]
    assert kept["symbol"].tolist() == ["LUNAUSDT", "BTCUSDT"]
    assert warnings and "LUNAUSDT 2" in warnings[0]


# A folder of files for 5 of the candidate symbols, each at another interval.
HELD = {"BTCUSDT": "minutes", "ETHUSDT": "5m", "SOLUSDT": "1h", "ADAUSDT": "4h", "XRPUSDT": "klines"}
PARTIAL_DAYS = ("2021-10-01", "2021-10-03")  # intraday files; 1d files reach back over the features' look-back


def _partial_folder(folder: Path) -> None:
    from regime_pipeline_tests.test_intraday_files import bars_of
    from regime_pipeline_tests.test_source_binance_files import (
        bulk_lines, klines, write_csv, write_freqtrade_feather, write_freqtrade_json, write_zip,
    )

    first, end = dt.date(2021, 3, 1), dt.date(2021, 11, 1)
    for symbol in ("BTCUSDT", "ETHUSDT", "XRPUSDT", "SOLUSDT", "ADAUSDT"):
        month = first
        while month < end:
            after = (pd.Timestamp(month) + pd.offsets.MonthBegin(1)).date()
            # SOL and ADA: daily klines only before October, so October's bars come from their files.
            stop = min(after, dt.date(2021, 10, 1)) if symbol in ("SOLUSDT", "ADAUSDT") else after
            if month < stop:
                write_csv(folder / "daily" / f"{symbol}-1d-{month:%Y-%m}.csv",
                          bulk_lines(klines(symbol, month, stop), interval="1d"))
            month = after
    days = [dt.date(2021, 10, d) for d in (1, 2, 3)]
    for day in days:
        write_zip(folder / "minutes" / f"BTCUSDT-1m-{day}.zip", bulk_lines(bars_of("1m", "BTCUSDT", day, day + dt.timedelta(days=1))))
        write_csv(folder / f"ETHUSDT-5m-{day}.csv", bulk_lines(bars_of("5m", "ETHUSDT", day, day + dt.timedelta(days=1)), interval="5m"))
    window = (days[0], days[-1] + dt.timedelta(days=1))
    write_freqtrade_json(folder / "SOL_USDT-1h.json", bars_of("1h", "SOLUSDT", *window))
    write_freqtrade_feather(folder / "ADA_USDT-4h.feather", bars_of("4h", "ADAUSDT", *window))
    # A pair outside the candidates: skipped with a warning, not an error for every read.
    write_csv(folder / "daily" / "PEPEUSDT-1d-2021-10.csv", bulk_lines(klines("BTCUSDT", *window), interval="1d"))


def test_a_folder_with_five_of_the_candidates_builds_their_bars_and_names_the_others(data_dir, instance, tmp_path):
    from regime_pipeline.definitions import all_assets

    folder = tmp_path / "drop"
    _partial_folder(folder)
    resources = build_resources(str(data_dir), MarketData(source="binance_files", files_dir=str(folder)))
    assert materialize_range([minute_bars], *PARTIAL_DAYS, resources, instance).success
    # The features of 2021-10-03 read 189 days of bars.
    result = materialize_range([daily_bars], "2021-03-28", PARTIAL_DAYS[1], resources, instance)
    assert materialize_range(all_assets, "2021-03-28", PARTIAL_DAYS[1], resources, instance, selection=["universe"]).success

    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    coverage = evaluations["coverage"]
    others = [s for s in universe().trading(dt.date(2021, 3, 28), dt.date(2021, 10, 4)) if s not in HELD]
    assert not coverage.passed and coverage.severity == dg.AssetCheckSeverity.WARN
    assert coverage.metadata["no_data_for"].value == ", ".join(others)
    assert coverage.metadata["missing_days"].value == 0
    assert all(e.passed for name, e in evaluations.items() if name != "coverage")
    assert evaluations["minutes_match_klines"].metadata["days_compared"].value == 2 * 3  # BTC and ETH have klines

    bars = _bars(data_dir)
    assert sorted(bars["symbol"].unique()) == sorted(HELD)
    assert len(bars) == 5 * (dt.date(2021, 10, 4) - dt.date(2021, 3, 28)).days
    window = bars[bars["date"] >= dt.date(2021, 10, 1)].set_index(["symbol", "date"])
    assert {s: set(window.loc[s, "source"]) for s in HELD} == {s: {src} for s, src in HELD.items()}
    real = pd.read_parquet(EMBEDDED / "daily_klines.parquet")
    real["date"] = pd.to_datetime(real["date"]).dt.date
    real = real.set_index(["symbol", "date"]).loc[window.index]
    for column in ("open", "high", "low", "close"):
        assert window[column].tolist() == real[column].tolist(), column
    assert ((window["volume"] - real["volume"]).abs() <= 1e-9 * real["volume"]).all()

    # Downstream masks the symbols without data, as before a listing: the day's features cover the five.
    features = dg.materialize(all_assets, selection=["trend_features", "cross_features"], partition_key=PARTIAL_DAYS[1],
                              resources=resources, instance=instance)
    assert features.success
    trend = read_table(str(data_dir / "warehouse.duckdb"), "trend_features")
    cross = read_table(str(data_dir / "warehouse.duckdb"), "cross_features")
    assert sorted(trend["symbol"]) == sorted(HELD)
    assert cross["n_assets"].tolist() == [5]


def test_coverage_warns_only_for_symbols_without_any_data_and_still_blocks_missing_days():
    from regime_pipeline.checks.bars import daily_bar_checks
    from regime_pipeline_tests.conftest import embedded_daily_bars

    start, end = dt.date(2024, 3, 1), dt.date(2024, 3, 4)
    every = embedded_daily_bars(universe().symbols)
    every = every[(every["date"] >= start) & (every["date"] < end)].reset_index(drop=True)
    no_klines = every.iloc[:0][["symbol", "date", "open", "high", "low", "close", "volume"]]
    absent = ["DOGEUSDT", "XLMUSDT"]

    def coverage(bars, absent):
        aggregated = pd.DataFrame(columns=["symbol", "date", "open", "high", "low", "close", "volume", "n_minutes"])
        return next(r for r in daily_bar_checks(bars, aggregated, no_klines, start, end, absent) if r.check_name == "coverage")

    held = every[~every["symbol"].isin(absent)]
    warned = coverage(held, absent)
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert warned.metadata["no_data_for"].value == "DOGEUSDT, XLMUSDT" and "DOGEUSDT, XLMUSDT" in warned.description
    # A day missing for a symbol the source does have: blocking, as ever.
    gap = held[~((held["symbol"] == "BTCUSDT") & (held["date"] == dt.date(2024, 3, 2)))]
    blocked = coverage(gap, absent)
    assert not blocked.passed and blocked.severity == dg.AssetCheckSeverity.ERROR
    assert blocked.metadata["missing_days"].value == 1 and blocked.metadata["no_data_for"].value == "DOGEUSDT, XLMUSDT"
    # No data for any symbol is an empty or wrong source, not a partial one.
    nothing = coverage(every.iloc[:0], universe().symbols)
    assert not nothing.passed and nothing.severity == dg.AssetCheckSeverity.ERROR
    assert nothing.metadata["missing_days"].value == len(universe().trading(start, end)) * 3
    assert coverage(every, []).passed
