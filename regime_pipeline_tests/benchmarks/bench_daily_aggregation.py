"""Daily aggregation of the minute lake: DuckDB (`MinuteLake.daily_aggregate`) vs pandas `resample`.

Generates 13 assets x 593 UTC days of seeded 1-minute bars (~11.1 million rows), stores them
with `MinuteLake.write_days` (one Parquet file per symbol-month: 260 files), then times

(a) ``MinuteLake.daily_aggregate(start, end)`` over all of it: the first (cold) call in this
    process, then the best of ``--runs`` further calls;
(b) the baseline, in the same process: read the same rows from the lake with pandas/pyarrow,
    then ``groupby("symbol").resample("1D")`` with first/max/min/last/sum/count.

Both results must agree (prices and minute counts exactly, volume to 1e-9 relative). Goal:
DuckDB best <= 0.5 s and >= 10x faster than pandas read+resample (both start from the same
Parquet files). Run: ``python -m regime_pipeline_tests.benchmarks daily_aggregation [-- --help]``.

Note: the lake was just written, so its files are in the OS page cache: "cold" means the first
call in the process (no DuckDB/pyarrow state yet), not a cold disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from regime_pipeline.core.data.bars import OHLCV_COLUMNS, PRICE_COLUMNS
from regime_pipeline.core.data.lake import MinuteLake
from regime_pipeline_tests.benchmarks import best_of, cpu_seconds, peak_rss_mib, print_table, timer

GOAL_SECONDS = 0.5
GOAL_SPEEDUP = 10.0
MINUTES_PER_DAY = 1440
DAY_MS = 86_400_000
# (symbol, price on the first day, annualised volatility, beta to the common market factor,
#  price decimals (Binance tick size), volume decimals (lot size))
ASSETS = [
    ("BTCUSDT", 67_000.0, 0.50, 1.0, 2, 5),
    ("ETHUSDT", 3_100.0, 0.65, 0.85, 2, 4),
    ("BNBUSDT", 590.0, 0.55, 0.7, 2, 3),
    ("XRPUSDT", 0.52, 0.85, 0.6, 4, 0),
    ("ADAUSDT", 0.45, 0.85, 0.7, 4, 1),
    ("SOLUSDT", 170.0, 0.90, 0.75, 2, 3),
    ("DOGEUSDT", 0.16, 1.00, 0.7, 5, 0),
    ("TRXUSDT", 0.12, 0.55, 0.4, 4, 1),
    ("LTCUSDT", 82.0, 0.75, 0.7, 2, 3),
    ("LINKUSDT", 17.0, 0.90, 0.75, 2, 2),
    ("DOTUSDT", 7.2, 0.90, 0.75, 3, 2),
    ("AVAXUSDT", 36.0, 0.95, 0.75, 2, 2),
    ("XLMUSDT", 0.10, 0.85, 0.6, 4, 0),
]
FIRST_DAY = dt.date(2024, 5, 18)
N_DAYS = 593  # 2024-05-18 .. 2025-12-31
# Exchange maintenance: these days lose 07:00-08:59 on every pair (like Binance on 2021-09-29).
MAINTENANCE_DAYS = (dt.date(2024, 9, 25), dt.date(2025, 3, 12), dt.date(2025, 10, 8))
DATA_VERSION = 3  # bump when the generator changes, so a kept --lake is rewritten
MANIFEST = ".bench-manifest.json"  # dot-prefixed: invisible to the lake's globs and to pyarrow


# ---------------------------------------------------------------------------- data generation


def generate_minutes(
    rng: np.random.Generator,
    market: np.ndarray,
    daily_vol: np.ndarray,
    price0: float,
    annual_vol: float,
    beta: float,
    decimals: int,
    volume_decimals: int,
) -> pd.DataFrame:
    """One asset's minutes: a geometric random walk with consistent OHLC and positive volume.

    Log returns are ``sigma * (beta * market + sqrt(1 - beta^2) * own)`` shocks, with an
    intraday volatility profile (busiest around the US open) and a persistent per-day volatility
    factor. ``open`` is the previous minute's ``close``; ``high``/``low`` extend beyond
    ``max/min(open, close)`` by a half-normal excursion; prices are rounded to the pair's tick
    and volume to its lot size, as exchange data is.
    """
    n = market.size
    minute_of_day = np.arange(n) % MINUTES_PER_DAY
    hour = minute_of_day / 60.0
    intraday = 0.7 + 0.8 * np.exp(-(((hour - 14.5) / 3.0) ** 2))
    sigma = annual_vol / np.sqrt(365.0 * MINUTES_PER_DAY) * intraday * np.repeat(daily_vol, MINUTES_PER_DAY)[:n]
    shocks = beta * market + np.sqrt(1.0 - beta * beta) * rng.standard_normal(n)
    log_returns = sigma * shocks - 0.5 * sigma * sigma
    tick = 10.0 ** -decimals
    close = np.maximum(np.round(price0 * np.exp(np.cumsum(log_returns)), decimals), tick)
    open_ = np.empty_like(close)
    open_[0] = round(price0, decimals)
    open_[1:] = close[:-1]
    top, bottom = np.maximum(open_, close), np.minimum(open_, close)
    high = np.maximum(np.round(top * np.exp(np.abs(rng.standard_normal(n)) * sigma * 0.6), decimals), top)
    low = np.minimum(np.maximum(np.round(bottom * np.exp(-np.abs(rng.standard_normal(n)) * sigma * 0.6), decimals), tick), bottom)
    # Base-asset volume: ~$1M a minute for the biggest pair, more when the minute moves a lot.
    usd = 1e6 * (0.3 + 0.7 * beta) * intraday * rng.lognormal(0.0, 0.8, n) * (1.0 + 2.0 * np.abs(shocks))
    lot = 10.0 ** -volume_decimals
    volume = np.maximum(np.round(usd / close, volume_decimals), lot)
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume})


def generate_lake(lake: MinuteLake, seed: int, n_days: int, log) -> dict:
    """Write the whole synthetic lake; one pass per asset so memory stays at one asset's rows."""
    rng = np.random.default_rng(seed)
    n = n_days * MINUTES_PER_DAY
    first_ms = pd.Timestamp(FIRST_DAY).value // 1_000_000
    open_time_ms = first_ms + np.arange(n, dtype="int64") * 60_000
    keep = np.ones(n, dtype=bool)
    for day in MAINTENANCE_DAYS:
        offset = (day - FIRST_DAY).days
        if 0 <= offset < n_days:
            keep[offset * MINUTES_PER_DAY + 7 * 60: offset * MINUTES_PER_DAY + 9 * 60] = False
    open_time = open_time_ms[keep].astype("datetime64[ms]")
    market = rng.standard_normal(n)
    daily_vol = np.exp(_ar1(rng, n_days, phi=0.92, sd=0.12))
    rows = files = 0
    for symbol, *params in ASSETS:
        began = time.perf_counter()
        frame = generate_minutes(rng, market, daily_vol, *params)[keep].reset_index(drop=True)
        frame.insert(0, "open_time", open_time)
        check_ohlc(frame, symbol)
        written = lake.write_days(symbol, frame)
        rows += len(frame)
        files += len(written)
        log(f"  {symbol:<9} {len(frame):>9,} rows, {len(written)} files, {time.perf_counter() - began:5.1f}s")
    return {"version": DATA_VERSION, "seed": seed, "n_days": n_days, "symbols": [a[0] for a in ASSETS], "rows": rows, "files": files,
            "first_day": FIRST_DAY.isoformat(), "end_day": (FIRST_DAY + dt.timedelta(days=n_days)).isoformat()}


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    out = np.empty(n)
    out[0] = rng.normal(0.0, sd / np.sqrt(1 - phi * phi))
    eps = rng.normal(0.0, sd, n)
    for i in range(1, n):
        out[i] = phi * out[i - 1] + eps[i]
    return out


def codecs(root: Path) -> str:
    """Compression codec(s) of the lake's files, from a few footers."""
    found = set()
    for path in sorted(root.glob("symbol=*/month=*/data.parquet"))[::37]:
        meta = pq.read_metadata(path)
        found.update(meta.row_group(0).column(i).compression for i in range(meta.num_columns))
    return "/".join(sorted(found))


def check_ohlc(frame: pd.DataFrame, symbol: str) -> None:
    prices = frame[PRICE_COLUMNS].to_numpy()
    assert (prices > 0).all(), symbol
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all(), symbol
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all(), symbol
    assert (frame["volume"] > 0).all(), symbol


def prepare_lake(root: Path, seed: int, n_days: int, log) -> tuple[MinuteLake, dict, float | None]:
    """Reuse `root` if it holds this very data set, else (re)write it."""
    lake = MinuteLake(root)
    manifest_path = root / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") == DATA_VERSION and manifest.get("seed") == seed and manifest.get("n_days") == n_days:
            log(f"reusing the lake at {root} ({manifest['rows']:,} rows, {manifest['files']:,} files)")
            return lake, manifest, None
    if root.exists() and any(root.iterdir()):
        if not manifest_path.exists():
            raise SystemExit(f"{root} is not empty and holds no benchmark lake; refusing to overwrite it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    log(f"writing the lake at {root} ...")
    with timer() as elapsed:
        manifest = generate_lake(lake, seed, n_days, log)
    seconds = elapsed()
    manifest_path.write_text(json.dumps(manifest))
    return lake, manifest, seconds


# ---------------------------------------------------------------------------- the two contenders


def pandas_read(lake: MinuteLake) -> pd.DataFrame:
    """The rows of the lake, as a pandas user reads a hive-partitioned directory."""
    return pd.read_parquet(lake.root, columns=["symbol", "open_time", *OHLCV_COLUMNS])


def pandas_resample(minutes: pd.DataFrame) -> pd.DataFrame:
    """UTC daily bars per symbol the way a pandas user writes them: groupby + resample('1D')."""
    daily = (
        minutes.set_index("open_time")
        .groupby("symbol", observed=True)[OHLCV_COLUMNS]
        .resample("1D")
        .agg(
            open=("open", "first"),
            high=("high", "max"),
            low=("low", "min"),
            close=("close", "last"),
            volume=("volume", "sum"),
            n_minutes=("open", "count"),
        )
    )
    daily = daily[daily["n_minutes"] > 0].reset_index()  # resample also emits the empty days in between
    daily["date"] = daily.pop("open_time").dt.date
    return daily


def pandas_grouper(minutes: pd.DataFrame) -> pd.DataFrame:
    """The faster pandas idiom (informational, not the baseline): one groupby on symbol + pd.Grouper('1D')."""
    daily = minutes.groupby(["symbol", pd.Grouper(key="open_time", freq="1D")], observed=True, sort=True).agg(
        open=("open", "first"),
        high=("high", "max"),
        low=("low", "min"),
        close=("close", "last"),
        volume=("volume", "sum"),
        n_minutes=("open", "count"),
    )
    daily = daily[daily["n_minutes"] > 0].reset_index()
    daily["date"] = daily.pop("open_time").dt.date
    return daily


def compare(duck: pd.DataFrame, ref: pd.DataFrame, expected_days: int, start: dt.date, end: dt.date) -> None:
    assert list(duck.columns) == ["symbol", "date", *OHLCV_COLUMNS, "n_minutes"], list(duck.columns)
    ref = ref.assign(symbol=ref["symbol"].astype(str))
    merged = duck.merge(ref, on=["symbol", "date"], how="outer", suffixes=("", "_pd"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged.loc[merged["_merge"] != "both", ["symbol", "date", "_merge"]].head()
    assert len(merged) == len(duck) == len(ref) == expected_days, (len(merged), len(duck), len(ref), expected_days)
    for column in (*PRICE_COLUMNS, "n_minutes"):
        bad = merged[column].to_numpy() != merged[f"{column}_pd"].to_numpy()
        assert not bad.any(), (column, merged.loc[bad, ["symbol", "date", column, f"{column}_pd"]].head())
    np.testing.assert_allclose(merged["volume"], merged["volume_pd"], rtol=1e-9, atol=0)
    short = merged[merged["n_minutes"] < MINUTES_PER_DAY]
    assert set(short["date"]) == {d for d in MAINTENANCE_DAYS if start <= d < end} and (short["n_minutes"] == MINUTES_PER_DAY - 120).all()


# ---------------------------------------------------------------------------- driver


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_daily_aggregation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed DuckDB runs after the cold one (best is reported)")
    parser.add_argument("--seed", type=int, default=20240518)
    parser.add_argument("--days", type=int, default=N_DAYS, help="days per asset (593 gives ~11.1M rows)")
    parser.add_argument("--lake", type=Path, default=None,
                        help="keep the generated lake in this directory and reuse it next time (default: a temp dir, deleted)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-lake-") as tmp:
        root = args.lake if args.lake is not None else Path(tmp) / "minute_bars"
        lake, manifest, write_seconds = prepare_lake(root, args.seed, args.days, log)
        rss_after_write = peak_rss_mib()
        start, end = dt.date.fromisoformat(manifest["first_day"]), dt.date.fromisoformat(manifest["end_day"])
        expected_days = len(manifest["symbols"]) * manifest["n_days"]
        size_mib = sum(p.stat().st_size for p in root.glob("symbol=*/date=*/data.parquet")) / 2**20
        codec = codecs(root)

        # (a) DuckDB over the Parquet lake: the first call in the process, then the best of N.
        log("timing MinuteLake.daily_aggregate ...")
        with timer() as elapsed:
            lake.daily_aggregate(start, end)
        duck_cold = elapsed()
        cpu_before = cpu_seconds()
        duck_best, duck_runs, duck = best_of(lambda: lake.daily_aggregate(start, end), runs=args.runs, warmup=0)
        duck_cpu = (cpu_seconds() - cpu_before) / args.runs
        rss_after_duck = peak_rss_mib()

        # (b) pandas baseline, same process, same files.
        log("timing pandas read + groupby/resample ...")
        with timer() as elapsed:
            minutes = pandas_read(lake)
        read_seconds = elapsed()
        assert len(minutes) == manifest["rows"], (len(minutes), manifest["rows"])
        with timer() as elapsed:
            ref = pandas_resample(minutes)
        resample_seconds = elapsed()
        with timer() as elapsed:
            grouper = pandas_grouper(minutes)
        grouper_seconds = elapsed()
        del minutes
        compare(duck, ref, expected_days, start, end)
        compare(duck, grouper, expected_days, start, end)
        rss_end = peak_rss_mib()

    pandas_total = read_seconds + resample_seconds
    speedup_total = pandas_total / duck_best
    speedup_resample = resample_seconds / duck_best
    time_ok = duck_best <= GOAL_SECONDS
    speed_ok = speedup_total >= GOAL_SPEEDUP
    passed = time_ok and speed_ok
    print()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"daily aggregation, {os.cpu_count()} cores (load avg {load}), duckdb {__import__('duckdb').__version__}, pandas {pd.__version__}, pyarrow {pa.__version__}")
    print_table([
        ("rows", f"{manifest['rows']:,} ({len(manifest['symbols'])} symbols x {manifest['n_days']} days)"),
        ("files", f"{manifest['files']:,} ({size_mib:,.1f} MiB Parquet, {codec})"),
        ("daily bars out", f"{len(duck):,} (DuckDB == pandas: prices exact, volume rtol 1e-9)"),
        ("lake write", "reused" if write_seconds is None else f"{write_seconds:.1f} s (generate + write)"),
        ("DuckDB cold (1st call)", f"{duck_cold:.3f} s"),
        (f"DuckDB best of {args.runs}", f"{duck_best:.3f} s  (median {statistics.median(duck_runs):.3f}; runs {', '.join(f'{t:.3f}' for t in duck_runs)})"),
        ("DuckDB CPU per call", f"{duck_cpu:.3f} s user+sys (all threads; / {os.cpu_count()} cores = {duck_cpu / (os.cpu_count() or 1):.3f} s if idle)"),
        ("pandas read", f"{read_seconds:.3f} s  (pd.read_parquet of the lake)"),
        ("pandas resample", f"{resample_seconds:.3f} s  (groupby('symbol').resample('1D'))"),
        ("pandas read+resample", f"{pandas_total:.3f} s"),
        ("  (info) pd.Grouper idiom", f"{grouper_seconds:.3f} s  (groupby(['symbol', pd.Grouper(freq='1D')]) instead of .resample; "
                                      f"DuckDB is {(read_seconds + grouper_seconds) / duck_best:.1f}x read+that)"),
        ("ratio pandas/DuckDB", f"{speedup_total:.1f}x vs read+resample, {speedup_resample:.1f}x vs resample only"),
        ("goal DuckDB <= 0.5 s", f"{'PASS' if time_ok else 'FAIL'} ({duck_best:.3f} s)"),
        ("goal >= 10x pandas", f"{'PASS' if speed_ok else 'FAIL'} ({speedup_total:.1f}x read+resample; resample only {speedup_resample:.1f}x)"),
        ("peak RSS", f"{rss_end:,.0f} MiB (after write {rss_after_write:,.0f}, after DuckDB {rss_after_duck:,.0f})"),
        ("RESULT", "PASS" if passed else "FAIL"),
    ])
    return 0 if passed else 1
