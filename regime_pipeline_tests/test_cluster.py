"""The `cluster` deployment on this machine: a throw-away PostgreSQL and an S3 server (moto) on
127.0.0.1 in place of the cluster's (skipped when they cannot be had, except under CI, where
the tests fail), Dagster's storage on that Postgres, runs on the
multiprocess executor with two steps at once.

* a week of the pipeline (1-minute bars -> daily bars -> features -> regime probabilities -> a
  rebalance) stores exactly the rows the `local` profile stores;
* two runs writing disjoint days of the same month and tables while a third reads them: all
  succeed, nothing is lost;
* two walk-forward PPO seeds trained as two runs at once, then their ensemble: every model on
  the object store;
* the Kubernetes side (no cluster here): the instance file parses, the run launcher and the
  step executor are built, the heavy steps carry their pod sizes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from regime_pipeline.configs import PROJECT_ROOT, splits
from regime_pipeline.core.features import daily as F
from regime_pipeline.core.paths import storage_path, write_bytes_atomic
from regime_pipeline.core.regimes import detectors as D
from regime_pipeline.core.regimes.models.gnn import GraphSAGEClassifier
from regime_pipeline.core.regimes.models.lstm import AttentionLSTMClassifier
from regime_pipeline.core.regimes.models.training import set_seed
from regime_pipeline.core.regimes.windows import Standardizer, class_names_for
from regime_pipeline.resources.warehouse import read_table
from regime_pipeline.resources.warehouse_postgres import write_postgres_table
from regime_pipeline_tests import cluster_jobs
from regime_pipeline_tests.cluster_services import ServiceUnavailable, local_postgres, local_s3
from regime_pipeline_tests.conftest import (
    embedded_daily_bars, embedded_daily_closes, embedded_universe, synthetic_probabilities, write_instance_yaml, write_table,
)
from regime_pipeline_tests.test_trading_assets import LATEST as DEPLOYED_ORIGIN
from regime_pipeline_tests.test_trading_assets import _policy, _walk_forward_probabilities

pytestmark = pytest.mark.cluster

CLUSTER_INSTANCE = PROJECT_ROOT / "deploy" / "cluster" / "dagster.yaml"
FIRST, LAST = "2021-09-27", "2021-10-03"  # a week with embedded 1-minute bars
REBALANCE_WEEK = "2021-10-04"
DAY = dt.timedelta(days=1)
# The columns the detectors read (the feature selection an earlier stage would have made).
COLUMNS = {"vol": ["realized_vol_20d", "garch_sigma", "vol_ratio"], "trend": ["momentum_50d", "rate_of_change", "trend_strength"]}


@pytest.fixture(scope="module")
def services():
    """A PostgreSQL and an S3 server for the module, stopped at its end."""
    try:
        with local_postgres() as postgres, local_s3() as s3:
            yield postgres, s3
    except ServiceUnavailable as exc:
        reason = f"the cluster services cannot be had here: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; under CI the cluster tests must run")
        pytest.skip(reason)


def cluster_home(home: Path, dagster_url: str) -> Path:
    """A Dagster home with deploy/cluster/dagster.yaml, less the Kubernetes run launcher (no
    cluster here: runs are executed by the test, as `dagster job execute` would)."""
    config = yaml.safe_load(CLUSTER_INSTANCE.read_text())
    config.pop("run_launcher")
    config["storage"]["postgres"]["postgres_url"] = dagster_url
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    # The deployment's one-time step (README, "How to start it"): the pool's limit set explicitly,
    # so that two runs using the pool for the first time do not both insert its default limit
    # (Dagster's Postgres storage fails the second with a UniqueViolation, dagster-io/dagster #33552).
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots("warehouse", config["concurrency"]["pools"]["default_limit"])
    return home


def cluster_env(monkeypatch, url: str, data_dir: str, endpoint: str) -> None:
    monkeypatch.setenv("REGIME_DEPLOYMENT", "cluster")
    monkeypatch.setenv("REGIME_POSTGRES_URL", url)
    monkeypatch.setenv("REGIME_DATA_DIR", data_dir)
    monkeypatch.setenv("REGIME_S3_ENDPOINT_URL", endpoint)


# -------------------------------------------------------------------------------- the stages before


def _random_detectors(tables: dict[str, pd.DataFrame]) -> dict[str, D.Detector]:
    """Untrained detectors of the fast profile with seeded weights: the files the detector
    stage leaves, without the minutes of training (what is compared is where rows go, not skill)."""
    window = (dt.date(2021, 1, 1), dt.date(2021, 9, 1))
    dets = {}
    for kind in D.SEQUENCE_KINDS:
        settings = D.settings_for(kind, "fast")
        classes = class_names_for(f"{kind}_regime")
        hparams = {"n_features": 3, "n_classes": len(classes), "hidden": settings["hidden"],
                   "hidden2": settings["hidden2"], "dropout": settings["dropout"], "window": settings["window"]}
        set_seed(1)
        scaler = Standardizer.fit(tables[f"{kind}_features"], COLUMNS[kind], window)
        dets[kind] = D.Detector(kind, AttentionLSTMClassifier(hparams), scaler, COLUMNS[kind], classes, dict(settings))
    settings = D.settings_for("cross", "fast")
    columns = [COLUMNS["vol"][0], COLUMNS["trend"][0]]
    nodes = D.node_features(tables["vol_features"], tables["trend_features"], columns)
    classes = class_names_for("cross_regime")
    hparams = {"n_features": len(columns), "n_classes": len(classes), "hidden": settings["hidden"],
               "layers": settings["layers"], "dropout": settings["dropout"], "readout": settings["readout"],
               "node_strength": settings.get("node_strength", True)}
    set_seed(1)
    dets["cross"] = D.Detector("cross", GraphSAGEClassifier(hparams), Standardizer.fit(nodes, columns, window),
                               columns, classes, dict(settings))
    return dets


def _named_probabilities() -> pd.DataFrame:
    """Synthetic probabilities of every day under the detectors' column names (``vol_low``, ...)."""
    names = {kind: class_names_for(f"{kind}_regime") for kind in D.KINDS}
    frame = synthetic_probabilities(classes=tuple(len(names[k]) for k in D.KINDS))
    return frame.rename(columns={f"{k}_{i}": f"{k}_{c}" for k in D.KINDS for i, c in enumerate(names[k])})


@pytest.fixture(scope="module")
def earlier_stages():
    """What the stages before the week leave: the warehouse tables (daily bars, features, the
    detectors' and the walk-forward's probabilities of every day), GARCH parameters, detectors
    and the deployed walk-forward policy."""
    bars = embedded_daily_bars()
    train = splits()["train"]
    params = F.fit_garch(bars, train.start, train.end + DAY)
    first, end = bars["date"].min(), bars["date"].max() + DAY
    tables = {
        "daily_bars": bars,
        "vol_features": F.vol_features(bars, params, first, end),
        "trend_features": F.trend_features(bars, first, end),
        "cross_features": F.cross_features(bars, first, end),
        "regime_probabilities": _named_probabilities(),
        "walk_forward_probabilities": _walk_forward_probabilities(),
        "universe": embedded_universe(bars),
        "daily_closes": embedded_daily_closes(),
    }
    dets = _random_detectors(tables)
    from regime_pipeline.core.allocation import policy as allocation

    forward = synthetic_probabilities(seed=0)
    data = allocation.allocation_data(bars, forward.loc[pd.to_datetime(forward["date"]).dt.year >= 2020],
                                      tables["daily_closes"], tables["universe"])
    dim = allocation.make_env(data, dt.date(2025, 1, 1), dt.date(2025, 2, 1)).observation_space.shape[0]
    deployed = {"policy": _policy(dim).to_dict(), "profile": "light", "origin": int(DEPLOYED_ORIGIN)}
    models = {
        "garch_params.json": json.dumps({s: p.to_dict() for s, p in params.items()}).encode(),
        f"walk_forward_policy/{DEPLOYED_ORIGIN}.json": json.dumps(deployed).encode(),
    }
    return tables, dets, models


def seed(earlier_stages, write_table_fn, models_dir) -> None:
    tables, dets, models = earlier_stages
    for name, frame in tables.items():
        write_table_fn(name, frame)
    for kind, det in dets.items():
        det.save(models_dir / f"{kind}_detector.pt")
    for name, payload in models.items():
        write_bytes_atomic(models_dir / name, payload)


# -------------------------------------------------------------------------------- a week, both profiles


def _run(job: str, first: str, last: str) -> subprocess.Popen:
    """Start ``cluster_jobs`` JOB in a process of its own, with this process's environment."""
    return subprocess.Popen([sys.executable, "-m", "regime_pipeline_tests.cluster_jobs", job, first, last],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def _succeeds(*runs: subprocess.Popen) -> None:
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-4000:]


def _run_week(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    _succeeds(_run("week_and_rebalance", FIRST, LAST))
    with dg.DagsterInstance.get() as instance:
        for asset in [*cluster_jobs.WEEK, "weekly_rebalance"]:
            assert instance.fetch_materializations(dg.AssetKey(asset), limit=1).records, asset


def _ledger_tables(db) -> dict[str, pd.DataFrame]:
    """The rows of the ledger's tables in `db`, in key order, without the time each was recorded."""
    orders = {"orders": ["client_order_id"], "fills": ["client_order_id", "trade_id"], "equity": ["week"],
              "positions": ["week", "symbol"]}
    with db.connect(read_only=True) as con:
        frames = {name: con.execute(f"SELECT * FROM {name}").df() for name in orders}
    return {name: frame.drop(columns=["recorded_at"], errors="ignore").sort_values(orders[name]).reset_index(drop=True)
            for name, frame in frames.items()}


def _same(local: pd.DataFrame, cluster: pd.DataFrame, keys: list[str], what: str) -> None:
    local = local.sort_values(keys).reset_index(drop=True)
    cluster = cluster.sort_values(keys).reset_index(drop=True)[list(local.columns)]
    pd.testing.assert_frame_equal(local, cluster, check_exact=True, obj=what)


def _candidate_rows(first: dt.date, last: dt.date) -> int:
    """Daily bars a bars run over ``first..last`` stores: one per day of every candidate with
    embedded data that day (the data cover every candidate, whatever the universe's mode)."""
    from regime_pipeline.configs import universe

    bars = embedded_daily_bars(universe().symbols)
    return int(((bars["date"] >= first) & (bars["date"] <= last)).sum())


def test_a_week_on_the_cluster_profile_stores_what_the_local_profile_stores(services, earlier_stages, tmp_path, monkeypatch):
    postgres, s3 = services
    from regime_pipeline.core.database import DuckDBFile, PostgresSchema

    # local: DuckDB files and folders, the project's instance.
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    seed(earlier_stages, lambda n, f: write_table(str(local_dir / "warehouse.duckdb"), n, f), local_dir / "models")
    monkeypatch.setenv("REGIME_MARKET_DATA", "embedded")
    monkeypatch.setenv("REGIME_DATA_DIR", str(local_dir))
    monkeypatch.delenv("REGIME_DEPLOYMENT", raising=False)
    _run_week(monkeypatch, write_instance_yaml(tmp_path / "local_home").parent)

    # cluster: Postgres and object storage, the cluster's instance on Postgres.
    url = postgres.create_database("week")
    data_dir = s3.create_bucket("week") + "/data"
    seed(earlier_stages, lambda n, f: write_postgres_table(url, n, f),
         storage_path(data_dir + "/models", endpoint_url=s3.endpoint_url))
    cluster_env(monkeypatch, url, data_dir, s3.endpoint_url)
    _run_week(monkeypatch, cluster_home(tmp_path / "cluster_home", postgres.create_database("dagster_week")))

    keys = {"daily_bars": ["date", "symbol"], "vol_features": ["date", "symbol"], "trend_features": ["date", "symbol"],
            "cross_features": ["date"], "regime_probabilities": ["date", "symbol"]}
    for table, order in keys.items():
        stored_locally = read_table(str(local_dir / "warehouse.duckdb"), table)
        stored_in_cluster = read_table(url, table)
        assert len(stored_locally) == len(stored_in_cluster) > 0, table
        _same(stored_locally, stored_in_cluster, order, table)
    # The week's rows are the pipeline's, not the seeded ones.
    week = read_table(url, "daily_bars", "date BETWEEN ? AND ?", [dt.date(2021, 9, 27), dt.date(2021, 10, 3)])
    from_minutes = int((week["source"] == "minutes").sum())
    assert len(week) == _candidate_rows(dt.date(2021, 9, 27), dt.date(2021, 10, 3)) and from_minutes > 0

    from regime_pipeline.resources import build_resources

    lake = build_resources()["storage"].lake()
    assert len(lake.stored_days()) == from_minutes
    minutes = lake.read(dt.date(2021, 9, 27), dt.date(2021, 10, 4))
    from regime_pipeline.core.data.lake import MinuteLake

    local_minutes = MinuteLake(local_dir / "lake" / "minute_bars").read(dt.date(2021, 9, 27), dt.date(2021, 10, 4))
    pd.testing.assert_frame_equal(local_minutes, minutes, check_exact=True)

    ledgers = _ledger_tables(DuckDBFile(local_dir / "ledger" / "paper.duckdb")), _ledger_tables(PostgresSchema(url, "ledger_paper"))
    assert len(ledgers[0]["orders"]) > 0 and len(ledgers[0]["equity"]) == 1
    for name in ledgers[0]:
        pd.testing.assert_frame_equal(ledgers[0][name], ledgers[1][name], check_dtype=False, obj=name)
    assert storage_path(data_dir + "/reports/weekly_rebalance.md", endpoint_url=s3.endpoint_url).read_text().startswith(
        "# Weekly rebalance, week of 2021-10-04"
    )


# -------------------------------------------------------------------------------- seeds


def test_seeds_train_in_runs_of_their_own_and_deploy_from_object_storage(services, earlier_stages, tmp_path, monkeypatch):
    """Two PPO seeds of one origin, each its own run at the same time (as the cluster's backfill
    launches them, a pod each), then the origin's ensemble: every model in the object store."""
    postgres, s3 = services
    url = postgres.create_database("seeds")
    data_dir = s3.create_bucket("seeds") + "/data"
    models = storage_path(data_dir + "/models", endpoint_url=s3.endpoint_url)
    seed(earlier_stages, lambda n, f: write_postgres_table(url, n, f), models)
    cluster_env(monkeypatch, url, data_dir, s3.endpoint_url)
    monkeypatch.setenv("DAGSTER_HOME", str(cluster_home(tmp_path / "home", postgres.create_database("dagster_seeds"))))

    _succeeds(_run("seed_job", f"{DEPLOYED_ORIGIN}|0", ""), _run("seed_job", f"{DEPLOYED_ORIGIN}|1", ""))
    # The ensemble in this process (a third interpreter would only add its start-up).
    from regime_pipeline.definitions import all_assets
    from regime_pipeline.resources import build_resources

    with dg.DagsterInstance.get() as instance:
        assert dg.materialize(all_assets, selection=["walk_forward_policy"], partition_key=DEPLOYED_ORIGIN,
                              resources=build_resources(), instance=instance,
                              run_config={"ops": {"walk_forward_policy": {"config": {"profile": "fast"}}}}).success

    records = [json.loads((models / "walk_forward_seed_policy" / DEPLOYED_ORIGIN / f"{s}.json").read_text()) for s in (0, 1)]
    deployed = json.loads((models / "walk_forward_policy" / f"{DEPLOYED_ORIGIN}.json").read_text())
    assert deployed["policy"]["members"] == [r["policy"] for r in records] and deployed["profile"] == "fast"
    for r in records:
        assert r["sb3_model"]["path"].startswith("s3://") and storage_path(r["sb3_model"]["path"],
                                                                              endpoint_url=s3.endpoint_url).exists()
    with dg.DagsterInstance.get() as instance:
        runs = {r.run_id for r in instance.fetch_materializations(dg.AssetKey("walk_forward_seed_policy"), limit=10).records}
    assert len(runs) == 2


# -------------------------------------------------------------------------------- concurrency


def test_two_runs_writing_disjoint_days_and_a_reader_at_once_all_succeed_and_lose_nothing(services, earlier_stages, tmp_path, monkeypatch):
    postgres, s3 = services
    url = postgres.create_database("together")
    data_dir = s3.create_bucket("together") + "/data"
    tables, _, _ = earlier_stages
    # The days before, as the reader will find them; the four days of one month are the runs'.
    before = tables["daily_bars"].loc[lambda f: (f["date"] < dt.date(2021, 9, 27)) & (f["date"] >= dt.date(2021, 9, 1))]
    write_postgres_table(url, "daily_bars", before)
    cluster_env(monkeypatch, url, data_dir, s3.endpoint_url)
    monkeypatch.setenv("REGIME_MARKET_DATA", "embedded")
    monkeypatch.setenv("DAGSTER_HOME", str(cluster_home(tmp_path / "home", postgres.create_database("dagster_together"))))

    # Two writers of the same tables and lake month, and a reader of the table, all at once.
    _succeeds(_run("bars_job", "2021-09-27", "2021-09-28"), _run("bars_job", "2021-09-29", "2021-09-30"),
              _run("bars_reader_job", "2021-09-01", "2021-09-01"))

    from regime_pipeline.resources import build_resources

    lake = build_resources()["storage"].lake()
    stored = lake.stored_days()
    bars = read_table(url, "daily_bars")
    assert len(bars) == len(before) + _candidate_rows(dt.date(2021, 9, 27), dt.date(2021, 9, 30))
    written = bars.loc[bars["source"] == "minutes"]
    # Every day either run took from minutes is in the lake, each symbol's four days in one object.
    assert len(stored) == len(written) > 2 * 13
    assert set(stored["date"]) == {dt.date(2021, 9, d) for d in (27, 28, 29, 30)}
    assert stored.groupby("symbol")["date"].nunique().eq(4).all()
    assert len(lake.files()) == stored["symbol"].nunique()
    with dg.DagsterInstance.get() as instance:
        reads = instance.fetch_materializations(dg.AssetKey("daily_bars_count"), limit=1).records
        assert reads and reads[0].asset_materialization.metadata["rows"].value >= len(before)


# -------------------------------------------------------------------------------- Kubernetes


def test_the_kubernetes_configuration_loads_and_sizes_the_heavy_steps(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    # The instance file parses and validates against Dagster's schema, its run launcher too.
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(CLUSTER_INSTANCE.read_text())
    monkeypatch.setenv("REGIME_DAGSTER_POSTGRES_URL", "postgresql+psycopg2://dagster:secret@db:5432/dagster")
    monkeypatch.setenv("REGIME_IMAGE", "registry.example/regime-pipeline:1")
    config, _ = dagster_instance_config(str(home))
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "REGIME_DAGSTER_POSTGRES_URL"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert {"key": "regime/books", "value": "ledger", "limit": 1} in config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert config["run_monitoring"]["enabled"] is True

    # The run launcher is built from that config (against a kubeconfig file: no cluster to reach).
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "users": [{"name": "test", "user": {"token": "x"}}],
    }))
    launcher_config = dict(config["run_launcher"]["config"], load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    launcher_config["job_image"] = os.environ["REGIME_IMAGE"]
    launcher = K8sRunLauncher.from_config_value(None, _validated(launcher_config))
    assert launcher.job_namespace == "regime" and launcher.job_image == "registry.example/regime-pipeline:1"
    assert launcher.run_k8s_config["container_config"]["resources"]["requests"]["memory"] == "1Gi"

    # The definitions on the k8s step executor: a pod per step, the heavy steps with their sizes.
    monkeypatch.setenv("REGIME_STEP_EXECUTOR", "k8s")
    from regime_pipeline.definitions import build_defs

    defs = build_defs()
    job = defs.resolve_job_def("daily_update_job")
    assert job.executor_def.name == "k8s_step_executor"
    sizes = yaml.safe_load((PROJECT_ROOT / "regime_pipeline" / "configs" / "deployment.yaml").read_text())["heavy_steps"]
    for step, size in sizes.items():
        tags = defs.get_assets_def(step).op.tags
        pod = json.loads(tags["dagster-k8s/config"])
        assert pod["container_config"]["resources"]["requests"] == {"cpu": str(size["cpu"]), "memory": size["memory"]}, step
    assert "dagster-k8s/config" not in defs.get_assets_def("daily_bars").op.tags

    # A backfill of walk-forward origins or PPO seeds: one run locally (a process pool inside), a
    # run (a pod) per origin or per seed in the cluster.
    from regime_pipeline.resources.deployment import training_backfill_policy

    assert defs.get_assets_def("walk_forward_models").backfill_policy.max_partitions_per_run is None
    assert defs.get_assets_def("walk_forward_seed_policy").backfill_policy.max_partitions_per_run is None
    monkeypatch.setenv("REGIME_DEPLOYMENT", "cluster")
    assert training_backfill_policy().max_partitions_per_run == 1

    # The workspace names the code location's gRPC server, and validates against Dagster's schema.
    from dagster._core.workspace.config_schema import process_workspace_config

    monkeypatch.setenv("REGIME_CODE_LOCATION_HOST", "regime-code")
    workspace = yaml.safe_load((PROJECT_ROOT / "deploy" / "cluster" / "workspace.yaml").read_text())
    checked = process_workspace_config(workspace)
    assert checked.success, [e.message for e in checked.errors]
    assert workspace["load_from"][0]["grpc_server"]["port"] == 4000


def _validated(launcher_config: dict) -> dict:
    """`launcher_config` checked against K8sRunLauncher's schema, with its defaults filled in."""
    from dagster._config import process_config
    from dagster._config.field import resolve_to_config_type
    from dagster_k8s import K8sRunLauncher

    result = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), launcher_config)
    assert result.success, [e.message for e in result.errors]
    return result.value


# -------------------------------------------------------------------------------- the backends alone


def test_the_postgres_warehouse_keeps_the_slice_rules(services):
    from regime_pipeline.resources.warehouse_postgres import PostgresTableIOManager, read_postgres_table
    from regime_pipeline_tests.test_warehouse import _asset, _frame

    postgres, _ = services
    url = postgres.create_database("slices")
    io = {"io_manager": PostgresTableIOManager(url=url)}

    def run(asset, key):
        return dg.materialize([asset], resources=io, partition_key=key)

    value = {"x": 1.0}
    asset = _asset(lambda ctx: _frame([ctx.partition_key], value["x"]))
    run(asset, "2024-01-01")
    run(asset, "2024-01-02")
    value["x"] = 2.0
    run(asset, "2024-01-01")  # replaced, not appended
    assert read_postgres_table(url, "table").sort_values("date")["x"].tolist() == [2.0, 1.0]

    stray = _asset(lambda ctx: _frame(["2024-01-01", "2024-01-05"], 9.0))
    with pytest.raises(ValueError, match=r"1 rows fall outside the partitions being written"):
        run(stray, "2024-01-01")
    failing = _asset(lambda ctx: _frame([ctx.partition_key], 0.0).assign(x="not a number"))
    with pytest.raises(Exception):
        run(failing, "2024-01-01")  # the insert fails after the delete: both roll back
    empty = _asset(lambda ctx: _frame([], 0.0))
    with pytest.raises(ValueError, match=r"empty but 1 rows are stored there; refusing"):
        run(empty, "2024-01-01")
    assert read_postgres_table(url, "table").sort_values("date")["x"].tolist() == [2.0, 1.0]

    wider = _asset(lambda ctx: _frame([ctx.partition_key], 3.0).assign(y=7)[["y", "x", "date"]])
    run(wider, "2024-01-03")  # by name, with a new column
    stored = read_postgres_table(url, "table").sort_values("date")
    assert stored["x"].tolist() == [2.0, 1.0, 3.0] and stored["y"].isna().tolist() == [True, True, False]


def test_the_postgres_ledger_holds_one_rebalance_at_a_time(services):
    from regime_pipeline.core.database import PostgresSchema
    from regime_pipeline.core.trading.ledger import Ledger, LedgerError

    postgres, _ = services
    url = postgres.create_database("books")
    ledger = Ledger(PostgresSchema(url, "ledger_paper"), initial_cash=10_000.0)
    other = Ledger(PostgresSchema(url, "ledger_paper"), initial_cash=1.0)  # as another pod would open it
    assert other.cash() == 10_000.0  # deposited once
    with ledger.exclusive():
        with pytest.raises(LedgerError, match="held by another process"):
            with other.exclusive(wait_s=0.2):
                pass
    with other.exclusive(wait_s=0.2):  # released with the transaction
        pass
    # Another book's lock is its own.
    with ledger.exclusive(), Ledger(PostgresSchema(url, "ledger_binance_testnet"), initial_cash=1.0).exclusive(wait_s=0.2):
        pass
