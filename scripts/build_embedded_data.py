"""Build the embedded daily data of the candidate assets from the public copies of Binance's klines.

    python scripts/build_embedded_data.py RAW_DIR [--out data/embedded]

RAW_DIR holds the copied files as described in ``data/PROVENANCE.md`` (folders named
``<owner>-<repo>``, files under their original names). The script parses every file listed in
:data:`SOURCES`, marks the rows known to be bad with their reason (:func:`exclusions`),
reconciles and merges the sources (``regime_pipeline.core.data.merge``) and writes:

* ``daily_klines.parquet``: the merged full daily bars of every candidate, through
  ``LAST_DAY`` (columns ``symbol, date, open, high, low, close, volume``);
* ``daily_closes.parquet``: the close-only days (``symbol, date, close``);
* ``candidate_sources.parquet``: every parsed source row with its file, priority and exclusion
  reason, so the merge can be re-run and checked without RAW_DIR (the tests do).

Run twice, it writes the same bytes. It stops with an error naming the file and the day where
two sources disagree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from regime_pipeline.core.data import merge  # noqa: E402
from regime_pipeline.core.data.bars import OHLCV_COLUMNS, validate_ohlcv  # noqa: E402
from regime_pipeline.core.errors import DataError  # noqa: E402

LAST_DAY = dt.date(2025, 12, 31)  # the last day shipped
PRICE_RTOL, VOLUME_RTOL = 1e-9, 1e-6  # as configs/data.yaml `reconciliation`

Y = "yanniedog-binance-historical-ohlcv-data"
J = "juancodex42-binarias-clasico-alto-winrate"
K = "damiankluk-freqtrade"
D = "delisted"

# Every candidate's sources, highest priority first. A file's format follows from its folder.
SOURCES: dict[str, list[str]] = {
    **{s: [f"{Y}/{s}_1d.csv", f"{J}/{s}_1d.csv"] for s in (
        "BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "SOLUSDT", "DOGEUSDT", "TRXUSDT", "LTCUSDT",
        "LINKUSDT", "DOTUSDT")},
    **{s: [f"{Y}/{s}_1d.csv"] for s in ("AVAXUSDT", "XLMUSDT", "ATOMUSDT", "ETCUSDT", "BCHUSDT", "UNIUSDT", "SHIBUSDT")},
    "LUNAUSDT": [f"{D}/yodumini-bdse27no4/LUNAUSDT.csv", f"{D}/Haydn-King-Algorithmic-Trading-Crypto-Bot/LUNA_USDT-1d.json",
                 f"{D}/soneyjohnt-binance_trading_bot/LUNAUSDT_1d.csv", f"{D}/jonasreycian-freqtrade_strategy/LUNA_USDT-1d.json",
                 f"{D}/maxklimes-Freqtrade/LUNA_USDT-1d.json", f"{D}/SauloHenriqueAguiar-freqtrades/LUNA_USDT-1d.json",
                 f"{D}/samgermain-binance_usdt/LUNA_USDT-1d.json",
                 f"{D}/vdegenne-CryptoVortex/reconstructed/LUNAUSDT_1d_reconstructed.csv",
                 f"{D}/vdegenne-CryptoVortex/LUNAUSDT.json", f"{D}/RobBudaghyan-mark6/LUNAUSDT.csv"],
    "FTTUSDT": [f"{D}/djienne-3EMA_SRSI_ATR/FTT_USDT-1d.json", f"{D}/yodumini-bdse27no4/FTTUSDT.csv",
                f"{D}/samgermain-binance_usdt/FTT_USDT-1d.json",
                f"{D}/vdegenne-CryptoVortex/reconstructed/FTTUSDT_1d_reconstructed.csv",
                f"{D}/vdegenne-CryptoVortex/FTTUSDT.json", f"{D}/RobBudaghyan-mark6/FTTUSDT.csv",
                f"{D}/derived/FTTUSDT_daily_close_from_mark6_hourly.csv", f"{D}/nhatruong1009-CryptoPrediction/FTTUSDT.csv"],
    "EOSUSDT": [f"{D}/djienne-3EMA_SRSI_ATR/EOS_USDT-1d.json", f"{D}/alwaysbetter1314-time-series-datasets/EOS-USDT.csv",
                f"{D}/C1PR14N055-bot/EOS_USDT-1d.json", f"{D}/Haydn-King-Algorithmic-Trading-Crypto-Bot/EOS_USDT-1d.json",
                f"{D}/yodumini-bdse27no4/EOSUSDT.csv", f"{D}/samgermain-binance_usdt/EOS_USDT-1d.json",
                f"{D}/vdegenne-CryptoVortex/reconstructed/EOSUSDT_1d_reconstructed.csv",
                f"{D}/vdegenne-CryptoVortex/EOSUSDT.json", f"{D}/nhatruong1009-CryptoPrediction/EOSUSDT.csv"],
    "XMRUSDT": [f"{D}/djienne-3EMA_SRSI_ATR/XMR_USDT-1d.json", f"{Y}/XMRUSDT_1d.csv",
                f"{D}/danielarroyave28-principia-bot/XMR_USDT-1d.json", f"{D}/alwaysbetter1314-time-series-datasets/XMR-USDT.csv",
                f"{D}/C1PR14N055-bot/XMR_USDT-1d.json", f"{D}/yodumini-bdse27no4/XMRUSDT.csv",
                f"{D}/samgermain-binance_usdt/XMR_USDT-1d.json",
                f"{D}/vdegenne-CryptoVortex/reconstructed/XMRUSDT_1d_reconstructed.csv",
                f"{D}/vdegenne-CryptoVortex/XMRUSDT.json", f"{D}/nhatruong1009-CryptoPrediction/XMRUSDT.csv"],
    "MATICUSDT": [f"{Y}/MATICUSDT_1d.csv", f"{D}/djienne-3EMA_SRSI_ATR/MATIC_USDT-1d.json",
                  f"{D}/danielarroyave28-principia-bot/MATIC_USDT-1d.json", f"{D}/C1PR14N055-bot/MATIC_USDT-1d.json",
                  f"{D}/Haydn-King-Algorithmic-Trading-Crypto-Bot/MATIC_USDT-1d.json",
                  f"{D}/jonasreycian-freqtrade_strategy/MATIC_USDT-1d.json", f"{D}/soneyjohnt-binance_trading_bot/MATICUSDT_1d.csv",
                  f"{D}/yodumini-bdse27no4/MATICUSDT.csv", f"{D}/SauloHenriqueAguiar-freqtrades/MATIC_USDT-1d.json",
                  f"{D}/samgermain-binance_usdt/MATIC_USDT-1d.json", f"{D}/imsatoshi-GeneTrader/MATIC_USDT-1d.feather",
                  f"{D}/vdegenne-CryptoVortex/reconstructed/MATICUSDT_1d_reconstructed.csv",
                  f"{D}/vdegenne-CryptoVortex/MATICUSDT.json", f"{D}/nhatruong1009-CryptoPrediction/MATICUSDT.csv"],
    "WAVESUSDT": [f"{D}/soneyjohnt-binance_trading_bot/WAVESUSDT_1d.csv", f"{D}/yodumini-bdse27no4/WAVESUSDT.csv",
                  f"{D}/maxklimes-Freqtrade/WAVES_USDT-1d.json", f"{D}/samgermain-binance_usdt/WAVES_USDT-1d.json",
                  f"{D}/vdegenne-CryptoVortex/reconstructed/WAVESUSDT_1d_reconstructed.csv",
                  f"{D}/vdegenne-CryptoVortex/WAVESUSDT.json", f"{D}/nhatruong1009-CryptoPrediction/WAVESUSDT.csv"],
    "FILUSDT": [f"{D}/danielarroyave28-principia-bot/FIL_USDT-1d.json", f"{D}/Haydn-King-Algorithmic-Trading-Crypto-Bot/FIL_USDT-1d.json",
                f"{D}/jonasreycian-freqtrade_strategy/FIL_USDT-1d.json", f"{D}/yodumini-bdse27no4/FILUSDT.csv",
                f"{D}/samgermain-binance_usdt/FIL_USDT-1d.json",
                f"{D}/vdegenne-CryptoVortex/reconstructed/FILUSDT_1d_reconstructed.csv",
                f"{D}/vdegenne-CryptoVortex/FILUSDT.json", f"{D}/RobBudaghyan-mark6/FILUSDT.csv",
                f"{D}/nhatruong1009-CryptoPrediction/FILUSDT.csv"],
    "SRMUSDT": [f"{D}/yodumini-bdse27no4/SRMUSDT.csv", f"{D}/vdegenne-CryptoVortex/reconstructed/SRMUSDT_1d_reconstructed.csv",
                f"{D}/samgermain-binance_usdt/SRM_USDT-1d.json", f"{D}/vdegenne-CryptoVortex/SRMUSDT.json"],
    "ICPUSDT": [f"{D}/vdegenne-CryptoVortex/reconstructed/ICPUSDT_1d_reconstructed.csv",
                f"{D}/imsatoshi-GeneTrader/ICP_USDT-1d.feather", f"{D}/vdegenne-CryptoVortex/ICPUSDT.json",
                f"{D}/RobBudaghyan-mark6/ICPUSDT.csv", f"{D}/nhatruong1009-CryptoPrediction/ICPUSDT.csv"],
    "LUNCUSDT": [f"{D}/vdegenne-CryptoVortex/reconstructed/LUNCUSDT_1d_reconstructed.csv",
                 f"{D}/vdegenne-CryptoVortex/LUNCUSDT.json", f"{D}/RobBudaghyan-mark6/LUNCUSDT.csv",
                 f"{D}/nhatruong1009-CryptoPrediction/LUNCUSDT.csv"],
    "USTCUSDT": [f"{D}/vdegenne-CryptoVortex/reconstructed/USTCUSDT_1d_reconstructed.csv",
                 f"{D}/vdegenne-CryptoVortex/USTCUSDT.json", f"{D}/RobBudaghyan-mark6/USTCUSDT.csv"],
    "BTTUSDT": [f"{D}/vdegenne-CryptoVortex/reconstructed/BTTUSDT_1d_reconstructed.csv",
                f"{D}/samgermain-binance_usdt/BTT_USDT-1d.json", f"{D}/vdegenne-CryptoVortex/BTTUSDT.json"],
    "ANCUSDT": [f"{D}/vdegenne-CryptoVortex/reconstructed/ANCUSDT_1d_reconstructed.csv",
                f"{D}/vdegenne-CryptoVortex/ANCUSDT.json", f"{D}/nhatruong1009-CryptoPrediction/ANCUSDT.csv"],
}
# The survivors' 1-minute window (Sept.-Oct. 2021), aggregated to complete UTC days: a third copy.
for _base in ("ADA", "AVAX", "BTC", "DOGE", "DOT", "ETH", "LTC", "SOL", "UNI"):
    SOURCES[f"{_base}USDT"].append(f"{K}/{_base}_USDT-1m.json")

# Known-bad rows: (symbol or "*", source folder or file fragment or "*", first day, last day, reason).
# Each is excluded with its reason; every other row must agree with every other source.
KNOWN_BAD = [
    ("*", Y, dt.date(2026, 1, 6), None, "partial candle: the day the file was downloaded"),
    ("*", "*", LAST_DAY + dt.timedelta(days=1), None, f"after {LAST_DAY}, the last day shipped"),
    ("LUNAUSDT", "*", dt.date(2022, 5, 14), None,
     "LUNAUSDT from 2022-05-31 is Terra 2.0, a different asset from the Terra Classic LUNA that collapsed; never joined"),
    ("FTTUSDT", "*", dt.date(2022, 11, 15), None,
     "FTT after the 2022-11-15..2023-09-21 hole that every source has (a halt or relisting, unconfirmed): not joined"),
]
# soneyjohnt's files were appended in increments, and some intraday bars were never refreshed.
_STALE = {
    "LUNAUSDT": ["2022-03-26", "2022-03-27", "2022-03-28", "2022-04-09", "2022-04-15", "2022-06-04", "2022-06-05"],
    "MATICUSDT": ["2022-03-22", "2022-03-26", "2022-03-27", "2022-03-28", "2022-04-09", "2022-04-15", "2022-05-30",
                  "2022-06-04", "2022-06-05"],
    "WAVESUSDT": ["2022-03-22", "2022-03-26", "2022-03-27", "2022-03-28", "2022-04-09", "2022-04-15", "2022-05-30",
                  "2022-06-04", "2022-06-05"],
}
for _symbol, _days in _STALE.items():
    for _day in _days:
        day = dt.date.fromisoformat(_day)
        KNOWN_BAD.append((_symbol, "soneyjohnt-binance_trading_bot", day, day,
                          "stale partial bar: an incremental download never refreshed it (disagrees with every other source)"))


# -- parsers: each returns date, open, high, low, close, volume (NaN where the file has no such field) --


def _frame(dates: pd.Series, values: dict[str, object], path: Path) -> pd.DataFrame:
    stamps = pd.to_datetime(dates)
    if (stamps != stamps.dt.normalize()).any():
        i = int(np.flatnonzero((stamps != stamps.dt.normalize()).to_numpy())[0])
        raise DataError(str(path), f"bar at {stamps.iloc[i]} does not open at 00:00 UTC", row=i + 1, field="date")
    out = pd.DataFrame({"date": stamps.dt.date.to_numpy()})
    for column in OHLCV_COLUMNS:
        out[column] = pd.to_numeric(pd.Series(values[column]), errors="raise").astype("float64").to_numpy() \
            if values.get(column) is not None else np.nan
    return out


def _ms(values: pd.Series) -> pd.Series:
    return pd.to_datetime(pd.to_numeric(values).astype("int64"), unit="ms")


def parse(path: Path) -> pd.DataFrame:
    """The daily rows of one file (closes only for hourly and minute files)."""
    name = path.name
    if name.endswith("-1m.json"):  # freqtrade 1-minute: complete UTC days aggregated
        records = pd.DataFrame(json.loads(path.read_text()), columns=["t", *OHLCV_COLUMNS])
        records["time"] = _ms(records["t"])
        return _complete_minute_days(records, path)
    if name.endswith(".json"):
        raw = json.loads(path.read_text())
        frame = pd.DataFrame([r[:6] for r in raw], columns=["t", *OHLCV_COLUMNS])
        return _frame(_ms(frame["t"]), {c: frame[c] for c in OHLCV_COLUMNS}, path)
    if name.endswith(".feather"):
        frame = pd.read_feather(path)
        return _frame(frame["date"].dt.tz_convert("UTC").dt.tz_localize(None), {c: frame[c] for c in OHLCV_COLUMNS}, path)
    frame = pd.read_csv(path)
    columns = set(frame.columns)
    if "timestamp" in columns and "time" not in columns:  # yanniedog: UTC dates
        return _frame(pd.to_datetime(frame["timestamp"]), {c: frame[c] for c in OHLCV_COLUMNS}, path)
    if "time" in columns and "timestamp" in columns:  # soneyjohnt: ms in `timestamp`
        return _frame(_ms(frame["timestamp"]), {c: frame[c] for c in OHLCV_COLUMNS}, path)
    if "时间戳" in columns:  # alwaysbetter: ms in column 1 (its `time` column is UTC+8)
        names = ["时间戳", "开盘价", "最高价", "最低价", "收盘价", "成交量"]
        return _frame(_ms(frame[names[0]]), dict(zip(OHLCV_COLUMNS, (frame[n] for n in names[1:]))), path)
    if "Kline open time" in columns:  # nhatruong 1-minute: the close of a 23:59 bar is its day's close
        times = _ms(frame["Kline open time"])
        last = frame.loc[(times.dt.hour == 23) & (times.dt.minute == 59)]
        return _frame(_ms(last["Kline open time"]).dt.normalize(), {"close": last["Close price"]}, path)
    if "date_utc" in columns:  # derived daily closes
        return _frame(pd.to_datetime(frame["date_utc"]), {"close": frame["close_of_23h_UTC_hourly_bar"]}, path)
    if list(frame.columns) == ["open_time", "close"]:  # mark6 hourly closes: the 23:00 bar closes the day
        times = pd.to_datetime(frame["open_time"])
        last = frame.loc[times.dt.hour == 23]
        return _frame(pd.to_datetime(last["open_time"]).dt.normalize(), {"close": last["close"]}, path)
    if "open_time" in columns:  # Binance 12-column layout, ms
        return _frame(_ms(frame["open_time"]), {c: frame[c] for c in OHLCV_COLUMNS}, path)
    raise ValueError(f"{path}: unknown layout {list(frame.columns)}")


def _complete_minute_days(records: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Days with every minute, or missing only the 2021-09-29 07:00-08:59 maintenance (configs/data.yaml)."""
    from regime_pipeline.configs import known_gaps
    from regime_pipeline.core.data import quality

    gaps = [(g.start, g.end) for g in known_gaps()]
    days = []
    for day, group in records.groupby(records["time"].dt.floor("D")):
        minutes = group.rename(columns={"time": "open_time"})
        if quality.minute_day_problem(day.date(), minutes, None, gaps, price_rtol=0, volume_rtol=0) is None:
            ordered = minutes.sort_values("open_time")
            days.append({"date": day, "open": ordered["open"].iloc[0], "high": ordered["high"].max(),
                         "low": ordered["low"].min(), "close": ordered["close"].iloc[-1], "volume": ordered["volume"].sum()})
    frame = pd.DataFrame(days)
    return _frame(frame["date"], {c: frame[c] for c in OHLCV_COLUMNS}, path)


# Days whose volume Binance restated after first publishing it: copies taken at the time carry
# the first figure, later full downloads the restated one; every price is identical in all of
# them. On these days a copy whose volume differs from the first-ranked copy of the asset (and
# whose prices equal it) is excluded; the first-ranked copies are full re-downloads wherever an
# asset has one (yanniedog 2026, djienne 2022-10, danielarroyave 2023-04, alwaysbetter 2022-08).
VOLUME_RESTATED = [dt.date.fromisoformat(d) for d in (
    "2019-10-01", "2019-12-04", "2020-10-27", "2021-01-11", "2021-01-21", "2021-12-24", "2021-12-27",
    "2022-03-07", "2022-03-08", "2022-03-09", "2022-03-10")]
VOLUME_RESTATED_REASON = (
    "volume as first published; Binance restated this day's volume later (prices identical in every copy): "
    "the asset's first-ranked copy is used"
)
# Two versions of MATIC's listing-day bar: the copies of 2019-2021 have open = low = 0.00263,
# Binance's current data (yanniedog 2026, djienne 2022) open 0.0099, low 0.00481.
KNOWN_BAD += [
    ("MATICUSDT", "C1PR14N055-bot", dt.date(2019, 4, 26), dt.date(2019, 4, 26),
     "listing-day bar as first published (open and low 0.00263); Binance's current data differ"),
    ("MATICUSDT", "soneyjohnt-binance_trading_bot", dt.date(2019, 4, 26), dt.date(2019, 4, 26),
     "listing-day bar as first published (open and low 0.00263); Binance's current data differ"),
]


def restated_volumes(rows: pd.DataFrame) -> pd.Series:
    """:data:`VOLUME_RESTATED_REASON` for the rows of a restated day whose volume differs from
    the first-ranked kept copy of the same (symbol, day) while every price equals it."""
    reason = rows["excluded"].copy()
    kept = rows.loc[rows["excluded"].isna() & rows["date"].isin(VOLUME_RESTATED) & rows["volume"].notna()]
    for _, group in kept.groupby(["symbol", "date"]):
        group = group.sort_values("priority")
        first = group.iloc[0]
        prices = group[["open", "high", "low", "close"]].to_numpy(float)
        reference = first[["open", "high", "low", "close"]].to_numpy(float)
        same_prices = pd.Series((np.abs(prices - reference) <= PRICE_RTOL * np.abs(reference)).all(axis=1), index=group.index)
        other_volume = (group["volume"] - first["volume"]).abs() > VOLUME_RTOL * abs(first["volume"])
        reason[group.index[same_prices & other_volume]] = VOLUME_RESTATED_REASON
    return reason


def exclusions(symbol: str, source: str, frame: pd.DataFrame) -> pd.Series:
    """The reason each row is excluded (None if kept): :data:`KNOWN_BAD`, and a CryptoVortex
    snapshot's newest daily row (in progress when the snapshot was taken)."""
    reason = pd.Series([None] * len(frame), index=frame.index, dtype="object")
    for who, where, first, last, why in KNOWN_BAD:
        if who not in ("*", symbol) or (where != "*" and where not in source):
            continue
        hit = (frame["date"] >= first) & (frame["date"] <= (last or dt.date.max)) & reason.isna()
        reason[hit] = why
    if "vdegenne-CryptoVortex/" in source and "reconstructed" not in source and len(frame):
        newest = frame["date"] == frame["date"].max()
        reason[newest & reason.isna()] = "the snapshot's newest daily bar, in progress when it was taken"
    return reason


def source_rows(raw_dir: Path) -> pd.DataFrame:
    """Every listed file parsed, one row per (file, day), with priority and exclusion reason."""
    parts = []
    for symbol, files in SOURCES.items():
        for priority, relative in enumerate(files):
            path = raw_dir / relative
            frame = parse(path)
            full = frame[["open", "high", "low"]].notna().all(axis=1)
            if full.any():
                validate_ohlcv(frame.loc[full].assign(symbol=symbol), str(path), "date")
            frame.insert(0, "symbol", symbol)
            frame.insert(0, "priority", priority)
            frame.insert(0, "source", relative)
            frame["excluded"] = exclusions(symbol, relative, frame)
            parts.append(frame)
    rows = pd.concat(parts, ignore_index=True)
    rows["priority"] = rows["priority"].astype("int16")
    rows["excluded"] = restated_volumes(rows)
    return rows[merge.SOURCE_COLUMNS]


def check_exclusions_needed(rows: pd.DataFrame, merged: merge.Merged) -> None:
    """A row excluded as wrong (stale, first published, a listing-day version) must really differ
    from the merged value of its day: an exclusion that removes agreeing data is a mistake."""
    wrong = rows.loc[rows["excluded"].fillna("").str.startswith(("stale", "listing-day", "volume as first"))]
    both = wrong.merge(merged.bars, on=["symbol", "date"], suffixes=("", "_merged"))
    for row in both.itertuples(index=False):
        if all(np.isclose(getattr(row, c), getattr(row, f"{c}_merged"), rtol=PRICE_RTOL, atol=0) for c in OHLCV_COLUMNS):
            raise DataError(row.source, f"{row.symbol} {row.date} is excluded ({row.excluded}) but equals the merged bar")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "embedded")
    args = parser.parse_args(argv)
    rows = source_rows(args.raw_dir)
    merged = merge.merge_sources(rows, price_rtol=PRICE_RTOL, volume_rtol=VOLUME_RTOL)
    check_exclusions_needed(rows, merged)
    args.out.mkdir(parents=True, exist_ok=True)
    write = {"compression": "zstd", "index": False}
    merged.bars.to_parquet(args.out / "daily_klines.parquet", **write)
    merged.closes.to_parquet(args.out / "daily_closes.parquet", **write)
    rows.to_parquet(args.out / "candidate_sources.parquet", **write)
    spans = merged.bars.groupby("symbol")["date"].agg(["min", "max", "size"])
    closes = merged.closes.groupby("symbol")["date"].agg(["min", "max", "size"])
    print(spans.join(closes, rsuffix="_closes").to_string())
    print(merged.comparisons.to_string())
    excluded = rows.loc[rows["excluded"].notna()].groupby(["symbol", "source", "excluded"])["date"].agg(["min", "max", "size"])
    print(excluded.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
