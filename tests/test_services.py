"""The session's throwaway PostgreSQL and Redis: they start, answer, restart and go away."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis

from tests.services import (
    POSTGRES_URL_ENV,
    REDIS_URL_ENV,
    create_database,
    drop_database,
    libpq_url,
    start_postgres,
    start_redis,
)

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # an unreaped zombie is dead too


def _wait_dead(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_postgres_round_trip_and_databases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POSTGRES_URL_ENV, raising=False)
    with start_postgres() as pg:
        assert pg.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert pg.url.endswith("/ftdeploy_test")
        with psycopg.connect(libpq_url(pg.url)) as conn:
            conn.execute("CREATE TABLE probe (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO probe VALUES (1, 'hello')")
            assert conn.execute("SELECT note FROM probe").fetchone() == ("hello",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)

        fresh = create_database(pg.url, "ftdeploy_probe")
        assert fresh == pg.url.replace("/ftdeploy_test", "/ftdeploy_probe")
        with psycopg.connect(libpq_url(fresh), autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("ftdeploy_probe",)
            drop_database(pg.url, "ftdeploy_probe")  # forces its connections closed
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with psycopg.connect(libpq_url(pg.url)) as conn:
            rows = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'ftdeploy_probe'")
            assert rows.fetchall() == []

        pid, workdir = pg.pid, pg.workdir
        assert pid is not None and workdir is not None
    assert not _alive(pid)
    assert not workdir.exists()


def test_redis_restart_keeps_aof_persisted_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    with start_redis() as service:
        assert service.url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(service.url)
        client.rpush("queue", "message-1")

        first = service.pid
        service.restart()  # graceful: SIGTERM, then the same port and data directory
        assert service.pid != first
        client.rpush("queue", "message-2")

        assert service.pid is not None
        os.kill(service.pid, signal.SIGKILL)  # a crash: only the fsynced AOF is left
        service.restart()
        assert client.lrange("queue", 0, -1) == [b"message-1", b"message-2"]
        client.close()


def test_restart_from_a_short_lived_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel's parent-death signal follows the thread that forked the server.
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    with start_redis() as service:
        injector = threading.Thread(target=service.restart)
        injector.start()
        injector.join()
        time.sleep(0.3)
        assert service.pid is not None and _alive(service.pid)
        client = redis.Redis.from_url(service.url)
        assert client.ping()
        client.close()


def test_redis_without_appendonly_loses_data_on_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    with start_redis(appendonly=False) as service:
        client = redis.Redis.from_url(service.url)
        client.set("key", "value")
        service.restart()
        assert client.get("key") is None
        client.close()


def test_external_urls_start_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POSTGRES_URL_ENV, "postgresql+psycopg://u@db.example:5432/x")
    monkeypatch.setenv(REDIS_URL_ENV, "redis://cache.example:6379/3")
    pg, cache = start_postgres(), start_redis()
    assert (pg.url, pg.pid, pg.external) == ("postgresql+psycopg://u@db.example:5432/x", None, True)
    assert (cache.url, cache.pid) == ("redis://cache.example:6379/3", None)
    with pytest.raises(RuntimeError, match="external redis cannot be restarted"):
        cache.restart()
    cache.stop()
    pg.stop()


def test_servers_die_with_a_killed_session() -> None:
    env = {k: v for k, v in os.environ.items() if k != REDIS_URL_ENV}
    session = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from tests.services import start_redis\n"
            "print(start_redis().pid, flush=True)\n"
            "time.sleep(120)\n",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert session.stdout is not None
        pid = int(session.stdout.readline())
        assert _alive(pid)
    finally:
        session.kill()  # SIGKILL: no atexit handler runs
        session.wait()
    assert _wait_dead(pid)
    for base in {Path(tempfile.gettempdir()), Path("/dev/shm")}:
        for leftover in base.glob(f"ftdeploy-test-{session.pid}-*"):
            shutil.rmtree(leftover)  # the next session would remove it; do not leave it meanwhile
