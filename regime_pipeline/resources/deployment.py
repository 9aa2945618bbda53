"""The deployment profile: which storage the same assets run on, chosen by ``REGIME_DEPLOYMENT``.

* ``local`` (the default): one machine. The warehouse and ledgers are DuckDB files, the lake,
  models and reports are files under ``REGIME_DATA_DIR`` (default ``data/``), Dagster's instance
  is the project root's ``dagster.yaml`` (SQLite).
* ``cluster``: many processes on many machines. The warehouse tables, the ledgers, the paper
  account and the lake's manifest are in the Postgres database ``REGIME_POSTGRES_URL``
  (``postgresql+psycopg2://user:password@host:5432/database``); the lake, models and reports
  are objects under ``REGIME_DATA_DIR`` = ``s3://bucket/prefix`` (``REGIME_S3_ENDPOINT_URL`` for an
  S3-compatible server other than AWS; credentials from the usual ``AWS_*`` variables). Dagster's
  instance is ``deploy/cluster/dagster.yaml`` (Postgres storage, queued runs, Kubernetes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

DEPLOYMENT_ENV = "REGIME_DEPLOYMENT"
DEPLOYMENTS = ("local", "cluster")


@dataclass(frozen=True)
class Deployment:
    """Where state lives: see the module docstring."""

    name: Literal["local", "cluster"] = "local"
    postgres_url: str = ""
    s3_endpoint_url: str = ""

    def __post_init__(self) -> None:
        if self.name not in DEPLOYMENTS:
            raise ValueError(f"{DEPLOYMENT_ENV}={self.name!r}: expected one of {list(DEPLOYMENTS)}")
        if self.name == "cluster" and not self.postgres_url.startswith("postgresql"):
            raise ValueError(
                "the cluster deployment needs REGIME_POSTGRES_URL=postgresql+psycopg2://user:password@host:port/database"
            )

    @property
    def cluster(self) -> bool:
        return self.name == "cluster"

    def check_data_dir(self, data_dir: str) -> None:
        from regime_pipeline.core.paths import is_remote

        if self.cluster and not is_remote(data_dir):
            raise ValueError(
                f"the cluster deployment keeps the lake, models and reports on object storage: "
                f"REGIME_DATA_DIR must be s3://bucket/prefix, not {data_dir!r}"
            )


def deployment_from_env() -> Deployment:
    """The profile ``REGIME_DEPLOYMENT`` selects (default ``local``), with its settings."""
    name = os.environ.get(DEPLOYMENT_ENV, "local") or "local"
    if name == "local":
        return Deployment()
    return Deployment(
        name=name,  # type: ignore[arg-type]
        postgres_url=os.environ.get("REGIME_POSTGRES_URL", ""),
        s3_endpoint_url=os.environ.get("REGIME_S3_ENDPOINT_URL", ""),
    )


# -- Kubernetes --------------------------------------------------------------------------

STEP_EXECUTOR_ENV = "REGIME_STEP_EXECUTOR"
K8S_CONFIG_TAG = "dagster-k8s/config"


def _container_resources(size: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": str(size["cpu"]), "memory": str(size["memory"])},
            "limits": {"memory": str(size["memory_limit"])}}


def step_tags(step: str) -> dict[str, dict]:
    """The op tags giving `step` its own CPU and memory requests in its pod when it runs on the
    k8s_job_executor (``configs/deployment.yaml``: ``heavy_steps``); ignored by every other executor."""
    from regime_pipeline.configs import load_yaml

    size = load_yaml("deployment")["heavy_steps"][step]
    return {K8S_CONFIG_TAG: {"container_config": {"resources": _container_resources(size)}}}


def k8s_step_executor():
    """Dagster's k8s_job_executor (one pod per step), with the default step size and the
    number of steps in flight of ``configs/deployment.yaml``."""
    from dagster_k8s import k8s_job_executor

    from regime_pipeline.configs import load_yaml

    settings = load_yaml("deployment")
    return k8s_job_executor.configured(
        {
            "max_concurrent": int(settings["max_concurrent_steps"]),
            "step_k8s_config": {"container_config": {"resources": _container_resources(settings["default_step"])}},
        },
        name="k8s_step_executor",
    )


def executor_from_env():
    """The executor ``REGIME_STEP_EXECUTOR`` selects: ``k8s`` (a pod per step, in the cluster)
    or, by default, Dagster's (a process per step, or in-process)."""
    name = os.environ.get(STEP_EXECUTOR_ENV, "") or "multiprocess"
    if name == "k8s":
        return k8s_step_executor()
    if name != "multiprocess":
        raise ValueError(f"{STEP_EXECUTOR_ENV}={name!r}: expected 'k8s' or 'multiprocess'")
    return None


def training_backfill_policy():
    """How a backfill of walk-forward origins (or of PPO seeds) is split into runs: locally one
    run, whose step trains them in a process pool; in the cluster a run per partition, so each
    origin's (each seed's) training gets a pod of its own (and the run queue's backfill limit
    spreads them)."""
    import dagster as dg

    if (os.environ.get(DEPLOYMENT_ENV, "local") or "local") == "cluster":
        return dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
    return dg.BackfillPolicy.single_run()
