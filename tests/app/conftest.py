"""Fixtures for the labeling app tests: SQLite-backed apps and a real PostgreSQL server."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))  # app_support

from argon2 import PasswordHasher  # noqa: E402

from rlhf.feedback.app import accounts, create_app  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """Argon2 with production cost takes ~0.2 s per hash here (seconds on a loaded machine); tests
    create many users and fail many logins (an unknown user is checked against the dummy hash)."""
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(accounts, "_hasher", cheap)
    monkeypatch.setattr(accounts, "_DUMMY_HASH", cheap.hash("not anyone's password"))


class Server:
    """`rlhf label serve` in a subprocess on a free loopback port."""

    def __init__(self, db: str, *options: str):
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhf.feedback.label_cli", "serve", "--db", db,
                                      "--host", "127.0.0.1", "--port", str(self.port), *options])
        deadline = time.monotonic() + 120  # a loaded 2-core machine can take this long to start python
        while True:
            try:
                if httpx.get(f"{self.url}/login", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"label server did not start (exit code {self.proc.returncode})")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, exactly like a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_server():
    servers = []

    def start(db: str, *options: str) -> Server:
        servers.append(Server(db, *options))
        return servers[-1]
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def db_path(tmp_path) -> str:
    return str(tmp_path / "labels.db")


@pytest.fixture
def app(db_path):
    return create_app(db_path)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture
def make_client(app):
    """More logged-in users at once: each client has its own cookie jar."""
    clients = []

    def make():
        c = TestClient(app)
        clients.append(c)
        return c
    yield make
    for c in clients:
        c.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL 15 cluster on a free loopback port; yields a URL prefix."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (scripts/setup.sh test installs them)")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("starting PostgreSQL needs root (to run initdb as the postgres user)")
    # Not under pytest's tmp dir: its parents are private to root, and postgres must reach this one.
    base = Path(tempfile.mkdtemp(prefix="rlhf-pg-"))
    data = base / "data"
    shutil.chown(base, "postgres", "postgres")
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_postgres + [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(as_postgres + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
                                  f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_postgres + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the shared server for one test."""
    import psycopg2

    name = f"labels_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(f"{postgres_server}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{postgres_server}/{name}"
