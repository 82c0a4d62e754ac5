"""A real MLflow tracking server on the local PostgreSQL, with proxied artifacts, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.ports import free_port

PG = os.environ.get("AIMASS_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def _admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{PG}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


class MlflowServer:
    def __init__(self, workdir: Path) -> None:
        self.db = f"aimass_test_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend(self) -> str:
        return f"{PG.replace('postgresql://', 'postgresql+psycopg2://')}/{self.db}"

    def start(self, timeout_s: float = 90) -> None:
        log = open(self.workdir / f"mlflow-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend, "--host", "127.0.0.1",
             "--port", str(self.port), "--artifacts-destination", str(self.workdir / "mlflow-artifacts"), "--serve-artifacts",
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.workdir / f'mlflow-{self.port}.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("mlflow server did not become healthy")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        self.proc = None


@contextmanager
def mlflow_on_postgres(workdir: Path):
    srv = MlflowServer(workdir)
    _admin(f"CREATE DATABASE {srv.db}")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        _admin(f"DROP DATABASE IF EXISTS {srv.db} WITH (FORCE)")
