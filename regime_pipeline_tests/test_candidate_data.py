"""The candidate assets' embedded data: merged from several copies of Binance's klines, equal to
every copy on every day they share, and reproducible from the shipped copies alone."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regime_pipeline.core.data import merge
from regime_pipeline.core.data.bars import OHLCV_COLUMNS
from regime_pipeline.core.errors import DataError
from regime_pipeline_tests.conftest import EMBEDDED

TOLERANCES = {"price_rtol": 1e-9, "volume_rtol": 1e-6}


@pytest.fixture(scope="module")
def sources() -> pd.DataFrame:
    return pd.read_parquet(EMBEDDED / "candidate_sources.parquet")


@pytest.fixture(scope="module")
def shipped() -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(EMBEDDED / "daily_klines.parquet"), pd.read_parquet(EMBEDDED / "daily_closes.parquet")


def test_the_merged_series_equal_every_source_on_every_overlapping_day(sources, shipped):
    bars, closes = shipped
    kept = sources.loc[sources["excluded"].isna()]
    full = kept.dropna(subset=["open"])
    both = full.merge(bars, on=["symbol", "date"], suffixes=("", "_merged"), how="left")
    assert both["close_merged"].notna().all(), "a kept full bar of a source is missing from the merged series"
    for field in OHLCV_COLUMNS:
        rtol = TOLERANCES["volume_rtol"] if field == "volume" else TOLERANCES["price_rtol"]
        np.testing.assert_allclose(both[field], both[f"{field}_merged"], rtol=rtol, atol=0, err_msg=field)
    # A closes-only copy (hourly or one-minute closes) agrees with the bar's close, or is the close-only day.
    close_only = kept.loc[kept["open"].isna()]
    every_close = pd.concat([bars[["symbol", "date", "close"]], closes], ignore_index=True)
    matched = close_only.merge(every_close, on=["symbol", "date"], suffixes=("", "_merged"))
    assert len(matched) > 6000
    np.testing.assert_allclose(matched["close"], matched["close_merged"], rtol=1e-9, atol=0)
    # Every merged day comes from at least one kept copy.
    backed = bars.merge(full[["symbol", "date"]].drop_duplicates(), on=["symbol", "date"], how="left", indicator=True)
    assert (backed["_merge"] == "both").all()


def test_merging_the_shipped_sources_gives_the_shipped_files(sources, shipped):
    merged = merge.merge_sources(sources, **TOLERANCES)
    bars, closes = shipped
    pd.testing.assert_frame_equal(merged.bars, bars)
    pd.testing.assert_frame_equal(merged.closes, closes)
    assert merged.comparisons["days"].sum() > 100_000


def test_a_source_that_disagrees_is_refused_naming_the_file_day_and_field(sources):
    tampered = sources.copy()
    file = "delisted/yodumini-bdse27no4/LUNAUSDT.csv"
    row = (tampered["source"] == file) & (tampered["date"] == dt.date(2022, 5, 10))
    assert row.sum() == 1
    tampered.loc[row, "close"] *= 1.001
    with pytest.raises(DataError) as caught:
        merge.merge_sources(tampered, **TOLERANCES)
    message = str(caught.value)
    assert "LUNAUSDT 2022-05-10" in message and "'close'" in message
    assert file in message and "soneyjohnt" in message  # both files named


def test_a_day_no_source_holds_is_refused(sources):
    holed = sources.loc[~((sources["symbol"] == "EOSUSDT") & (sources["date"] == dt.date(2021, 3, 3)))]
    with pytest.raises(DataError, match=r"EOSUSDT: 1 day\(s\) between 2018-05-28 and 2025-05-24 in no source: 2021-03-03"):
        merge.merge_sources(holed, **TOLERANCES)


def test_luna_ends_with_its_collapse_and_terra_2_is_never_joined(sources, shipped):
    bars, closes = shipped
    luna = bars.loc[bars["symbol"] == "LUNAUSDT"].set_index("date")["close"]
    assert luna.index.max() == dt.date(2022, 5, 13)
    assert luna[dt.date(2022, 5, 7)] == 68.13 and luna[dt.date(2022, 5, 13)] == 0.00005
    assert not (closes["symbol"] == "LUNAUSDT").any()
    later = sources.loc[(sources["symbol"] == "LUNAUSDT") & (sources["date"] > dt.date(2022, 5, 13))]
    assert len(later) > 1000 and later["excluded"].str.contains("Terra 2.0").all()
    assert bars.loc[bars["symbol"] == "LUNCUSDT", "date"].min() == dt.date(2022, 9, 9)  # its own candidate


def test_ftt_has_close_only_days_after_its_last_full_bar(shipped):
    bars, closes = shipped
    ftt_bars = bars.loc[bars["symbol"] == "FTTUSDT", "date"]
    assert ftt_bars.max() == dt.date(2022, 10, 10)
    assert set(closes["symbol"]) == {"FTTUSDT"}
    assert closes["date"].min() == dt.date(2022, 10, 11) and closes["date"].max() == dt.date(2022, 11, 14)
    assert len(closes) == 35
    assert closes.set_index("date").loc[dt.date(2022, 11, 8), "close"] == 5.5


def test_every_exclusion_has_a_reason_and_the_survivors_are_unchanged(sources, shipped):
    bars, _ = shipped
    excluded = sources.loc[sources["excluded"].notna(), "excluded"]
    assert (excluded.str.len() > 20).all()
    survivors = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "SOLUSDT", "DOGEUSDT", "TRXUSDT", "LTCUSDT",
                 "LINKUSDT", "DOTUSDT", "AVAXUSDT", "XLMUSDT"]
    assert int(bars["symbol"].isin(survivors).sum()) == 33_957  # the rows shipped before the candidates


@pytest.mark.skipif(not os.environ.get("REGIME_RAW_DATA_DIR"), reason="needs the raw copies (REGIME_RAW_DATA_DIR)")
def test_the_build_script_parses_the_raw_copies_into_the_shipped_sources(sources):
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "build_embedded_data.py"
    spec = importlib.util.spec_from_file_location("build_embedded_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.source_rows(Path(os.environ["REGIME_RAW_DATA_DIR"]))
    pd.testing.assert_frame_equal(rows, sources)
