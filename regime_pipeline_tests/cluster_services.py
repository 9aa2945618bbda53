"""Throw-away services for the `cluster` deployment's tests: a PostgreSQL and an S3 server on 127.0.0.1.

:func:`local_postgres` runs Debian's PostgreSQL binaries (``initdb`` and ``pg_ctl`` of the
newest ``/usr/lib/postgresql/<version>``) on a cluster in a temporary folder and a free port,
as the ``postgres`` system user when the tests run as root (``initdb`` refuses root), and
stops it at the end. :func:`local_s3` runs moto's S3 server in a subprocess. Both raise
:class:`ServiceUnavailable` with the reason when they cannot be had, so the tests skip saying why.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

POSTGRES_ROOT = Path("/usr/lib/postgresql")


class ServiceUnavailable(RuntimeError):
    """A service the cluster tests need cannot be started here (the message says why)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder."""
    versions = sorted(
        (p for p in POSTGRES_ROOT.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name)
    ) if POSTGRES_ROOT.exists() else []
    if not versions:
        raise ServiceUnavailable(
            f"no PostgreSQL server in {POSTGRES_ROOT} (install Debian's `postgresql`; `make test` does as root)"
        )
    return versions[-1]


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable("running as root and there is no `postgres` user to run the server as") from None
    return ["runuser", "-u", "postgres", "--", *command]


@dataclass(frozen=True)
class Postgres:
    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL Dagster's storage takes (and :mod:`regime_pipeline.core.database`)."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        try:
            con.autocommit = True
            with con.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {name}")
        finally:
            con.close()
        return self.url(name)


@contextlib.contextmanager
def local_postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL on 127.0.0.1 (trust authentication, user ``postgres``), removed on exit."""
    bin_dir = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="regime-postgres-"))
    data = folder / "data"
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    port = free_port()
    started = False
    try:
        subprocess.run(
            _as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                             "--no-sync", "-E", "UTF8", "--locale=C"]),
            check=True, capture_output=True, text=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=200"
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"),
                             "-w", "-t", "60", "start"]),
            check=True, capture_output=True, text=True,
        )
        started = True
        yield Postgres(port=port, folder=folder)
    except subprocess.CalledProcessError as exc:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        raise RuntimeError(f"{exc.cmd[-1]} failed: {exc.stderr or exc.stdout}{log}") from exc
    finally:
        if started:
            subprocess.run(
                _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
            )
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def create_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1").create_bucket(Bucket=name)
        return f"s3://{name}"


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def local_s3() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 in a subprocess, stopped on exit. Sets dummy AWS
    credentials in this process's environment (inherited by the runs it starts)."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise ServiceUnavailable("moto[server] is not installed (pip install -e '.[dev]')") from None
    for key, value in S3_ENV.items():
        os.environ.setdefault(key, value)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start on port {port}")
            time.sleep(0.1)
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
