"""Shared fixtures: a throw-away data directory and a Dagster instance per test.

Tests run on the fixed universe (the 13 survivors) unless they choose the point-in-time one
(:func:`universe_mode`), so the behaviour of each stage is tested on the data it always had, and
the point-in-time universe by the tests written for it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("REGIME_UNIVERSE", "fixed")

from regime_pipeline.configs import PROJECT_ROOT  # noqa: E402

EMBEDDED = PROJECT_ROOT / "data" / "embedded"


@contextlib.contextmanager
def universe_mode(mode: str):
    """Run the enclosed code with configs/universe.yaml's `mode` set to `mode`."""
    from regime_pipeline.configs import UNIVERSE_ENV, universe

    before = os.environ.get(UNIVERSE_ENV)
    os.environ[UNIVERSE_ENV] = mode
    universe.cache_clear()
    try:
        yield universe()
    finally:
        if before is None:
            os.environ.pop(UNIVERSE_ENV, None)
        else:
            os.environ[UNIVERSE_ENV] = before
        universe.cache_clear()


def embedded_universe(bars: pd.DataFrame | None = None) -> pd.DataFrame:
    """The `universe` table of the configured mode on the embedded bars of every candidate
    (or on `bars`), as the `universe` asset stores it."""
    from regime_pipeline.configs import history_start, load_yaml, universe
    from regime_pipeline.core.data.universe import membership

    bars = embedded_daily_bars(universe().symbols) if bars is None else bars
    last = max(bars["date"]) + dt.timedelta(days=1)
    return membership(bars, history_start(), last, universe(), int(load_yaml("backtest")["rebalance_weekday"]))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty project data directory (lake, warehouse, models) for one test."""
    path = tmp_path / "data"
    path.mkdir()
    return path


STORAGE_KEYS = ("run_storage", "event_log_storage", "schedule_storage")


def write_instance_yaml(home: Path, storage: str = "project") -> Path:
    """Write ``home/dagster.yaml``: the project root's settings with every folder moved from
    ``data/dagster`` into `home`, and `storage` ``"project"`` (its batching event log, as
    configured there) or ``"stock"`` (Dagster's default SQLite storage, in the same folders)."""
    import yaml

    home.mkdir(parents=True, exist_ok=True)
    text = (PROJECT_ROOT / "dagster.yaml").read_text().replace("data/dagster", str(home))
    config = yaml.safe_load(text)
    if storage == "stock":
        for key in STORAGE_KEYS:
            config.pop(key)
        config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    elif storage != "project":
        raise ValueError(f"storage must be 'project' or 'stock', not {storage!r}")
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def materialize_range(assets, first: str, last: str, resources: dict, instance: dg.DagsterInstance, **kwargs):
    """Materialize daily-partitioned `assets` over ``first..last`` (inclusive) in one run,
    as a single-run backfill or ``--partition-range`` does."""
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    return dg.materialize(
        assets,
        resources=resources,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        **kwargs,
    )


def _seeds_then_ensemble(assets, seed_asset: str, first: str, last: str, ensemble: str, partition_key: str | None,
                         resources: dict, instance: dg.DagsterInstance, profile: str):
    """`seed_asset` over the seed partitions ``first..last`` (one run, as the command line trains
    them), then `ensemble` (its `partition_key`): both results, and the seeds' training jobs."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from regime_pipeline.core.allocation import ppo

    config = {"config": {"profile": profile}}
    jobs: list[ppo.TrainingJob] = []
    train_seeds = ppo.train_seeds

    def recording(job_list, workers, log=None):
        jobs.extend(job_list)
        return train_seeds(job_list, workers, log)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppo, "train_seeds", recording)
        trained = dg.materialize(
            assets, selection=[seed_asset], resources=resources, instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
            run_config={"ops": {seed_asset: config}},
        )
    deployed = dg.materialize(assets, selection=[ensemble], partition_key=partition_key, resources=resources,
                              instance=instance, run_config={"ops": {ensemble: config}})
    return trained, deployed, jobs


def materialize_walk_forward_policy(assets, origin: str, resources: dict, instance: dg.DagsterInstance,
                                    profile: str = "fast"):
    """`walk_forward_seed_policy` for the seeds of PPO `profile` of `origin`, then the ensemble
    `walk_forward_policy[origin]`: both results, and the seeds' training jobs (what each was
    given to see)."""
    from regime_pipeline.core.allocation import ppo

    seeds = ppo.settings(profile).seeds
    return _seeds_then_ensemble(assets, "walk_forward_seed_policy", f"{origin}|{seeds[0]}", f"{origin}|{seeds[-1]}",
                                "walk_forward_policy", origin, resources, instance, profile)


def materialize_ppo_policy(assets, resources: dict, instance: dg.DagsterInstance, profile: str = "fast"):
    """`ppo_seed_policy` for the seeds of PPO `profile`, then the fixed split's ensemble
    `ppo_policy`: both results, and the seeds' training jobs."""
    from regime_pipeline.core.allocation import ppo

    seeds = ppo.settings(profile).seeds
    return _seeds_then_ensemble(assets, "ppo_seed_policy", str(seeds[0]), str(seeds[-1]), "ppo_policy", None,
                                resources, instance, profile)


def check_results(result) -> dict[str, bool]:
    """``{check_name: passed}`` for every asset check evaluated in `result`."""
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def embedded_daily_bars(symbols: list[str] | None = None) -> pd.DataFrame:
    """The embedded daily klines of `symbols` (default: the 13 of the fixed universe) in the
    `daily_bars` table's shape (source='klines')."""
    from regime_pipeline.configs import universe
    from regime_pipeline.core.data.bars import DAILY_BAR_COLUMNS

    frame = pd.read_parquet(EMBEDDED / "daily_klines.parquet")
    frame = frame.loc[frame["symbol"].isin(universe().fixed if symbols is None else symbols)]
    frame = frame.assign(source="klines", n_minutes=pd.array([pd.NA] * len(frame), dtype="Int32"))
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame[DAILY_BAR_COLUMNS].sort_values(["date", "symbol"]).reset_index(drop=True)


def embedded_daily_closes() -> pd.DataFrame:
    """The embedded close-only days (``date, symbol, close``), as the `daily_closes` asset stores them."""
    frame = pd.read_parquet(EMBEDDED / "daily_closes.parquet")
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame[["date", "symbol", "close"]].reset_index(drop=True)


def write_universe_tables(database: str, bars: pd.DataFrame | None = None) -> pd.DataFrame:
    """Store the `universe` of the configured mode (on `bars`, default every candidate's embedded
    bars) and the embedded `daily_closes`, as the allocation and trading stages read them; return
    the universe rows."""
    rows = embedded_universe(bars)
    write_table(database, "universe", rows)
    write_table(database, "daily_closes", embedded_daily_closes())
    return rows


def train_window() -> tuple[dt.date, dt.date]:
    """The train split as a half-open window ``[start, end + 1 day)``."""
    from regime_pipeline.configs import splits

    train = splits()["train"]
    return train.start, train.end + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """The embedded daily bars, once per test module."""
    return embedded_daily_bars()


@pytest.fixture(scope="module")
def params(bars):
    """Per-asset GARCH(1,1) parameters fitted on the train window."""
    from regime_pipeline.core.features.daily import fit_garch

    return fit_garch(bars, *train_window())


def synthetic_probabilities(
    seed: int = 0, classes: tuple[int, int, int] = (2, 2, 3), symbols: list[str] | None = None,
) -> pd.DataFrame:
    """Random detector output shaped like `regime_probabilities` for every embedded daily bar (of
    `symbols`, default the fixed 13): per (date, symbol) `classes[0]` vol and `classes[1]` trend
    class probabilities (``vol_0, ...``, ``trend_0, ...``), and the date's `classes[2]` cross
    probabilities (``cross_0, ...``) repeated on each of its rows."""
    keys = embedded_daily_bars(symbols)[["date", "symbol"]].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    dates = np.array(sorted(set(keys["date"])))
    columns = {}
    for kind, k in zip(("vol", "trend"), classes[:2]):
        values = rng.dirichlet(np.ones(k), size=len(keys))
        columns.update({f"{kind}_{i}": values[:, i] for i in range(k)})
    cross = rng.dirichlet(np.ones(classes[2]), size=dates.size)
    market = pd.DataFrame({"date": dates, **{f"cross_{i}": cross[:, i] for i in range(classes[2])}})
    return keys.assign(**columns).merge(market, on="date")


def shocked_after(data, t: int, rng: np.random.Generator):
    """`data` (an ``AllocationData``) with every row after `t` replaced: opens and closes
    scaled by random factors in [0.5, 2] (closes by the reversed ones), probabilities redrawn.
    Rows up to `t` are the same arrays' values, untouched."""
    import dataclasses

    from regime_pipeline.core.allocation.policy import AllocationData

    shock = rng.uniform(0.5, 2.0, size=data.prices.close[t + 1 :].shape)
    prices = dataclasses.replace(data.prices, open=data.prices.open.copy(), close=data.prices.close.copy())
    prices.open[t + 1 :] *= shock
    prices.close[t + 1 :] *= shock[::-1]
    probs = data.probs.copy()
    probs[t + 1 :] = rng.random(probs[t + 1 :].shape)
    return AllocationData(prices, probs, data.prob_columns)


def write_table(database: str, table: str, frame: pd.DataFrame) -> None:
    """Store `frame` as a warehouse table, as the IO manager would have."""
    from regime_pipeline.resources.warehouse import connect

    with connect(database) as con:
        con.register("frame", frame)
        con.execute(f"CREATE OR REPLACE TABLE main.{table} AS SELECT * FROM frame")


def write_detector_inputs(data_dir: Path, symbols: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Store what the stages before the detectors leave, for `symbols` (default: the fixed 13):
    daily bars, the three feature tables, the universe and regime labels from HMMs fit on the
    train split, in the warehouse, and a fixed feature selection under ``models/``. Returns the
    tables."""
    import json

    from regime_pipeline.configs import splits
    from regime_pipeline.core.features import daily as F
    from regime_pipeline.core.regimes import labels as regimes

    bars = embedded_daily_bars()
    if symbols is not None:
        bars = bars[bars["symbol"].isin(symbols)].reset_index(drop=True)
    train = splits()["train"]
    params = F.fit_garch(bars, train.start, train.end + dt.timedelta(days=1))
    first, end = bars["date"].min(), dt.date(2026, 1, 1)
    tables = {
        "daily_bars": bars,
        "vol_features": F.vol_features(bars, params, first, end),
        "trend_features": F.trend_features(bars, first, end),
        "cross_features": F.cross_features(bars, first, end),
        "universe": embedded_universe(bars),
    }
    config = regimes.settings()
    models = regimes.RegimeModels(
        vol=regimes.fit_hmm(tables["vol_features"], "vol", train, config),
        trend=regimes.fit_hmm(tables["trend_features"], "trend", train, config),
    )
    labels = []
    for split in splits().values():
        window = [regimes.in_window(tables[t], split.start, split.end) for t in ("vol_features", "trend_features", "cross_features")]
        labels.append(regimes.label_window(models, *window, config).assign(split=split.name))
    tables["regime_labels"] = pd.concat(labels, ignore_index=True)
    for name, frame in tables.items():
        write_table(str(data_dir / "warehouse.duckdb"), name, frame)
    selected = {"vol": ["realized_vol_20d", "garch_sigma", "vol_ratio"],
                "trend": ["momentum_50d", "rate_of_change", "trend_strength"],
                "cross": ["avg_pairwise_corr"]}
    (data_dir / "models").mkdir(parents=True, exist_ok=True)
    (data_dir / "models" / "selected_features.json").write_text(json.dumps({g: {"selected": c} for g, c in selected.items()}))
    return tables
