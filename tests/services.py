"""Throwaway PostgreSQL and Redis servers on 127.0.0.1 for one test session.

Plain functions, not fixtures: conftest.py decides their scope. Each `start_*` returns a
`Service` (also a context manager) whose server is stopped, and its temporary directory removed,
by `stop()`, by leaving the `with` block, or at interpreter exit. If the test process dies without
running its exit handlers (SIGKILL, a crash), the kernel signals the servers for us
(PR_SET_PDEATHSIG), so no server outlives the session that started it; the next session removes
the temporary directories such a session left behind.

The servers bind 127.0.0.1 only (PostgreSQL also listens on a unix socket inside its temporary
directory). `FTDEPLOY_TEST_POSTGRES_URL` / `FTDEPLOY_TEST_REDIS_URL` point the tests at servers
that already run; nothing is started then, and such a service cannot be restarted.

PostgreSQL refuses to run as root. When the tests run as root (as CI does), initdb and postgres run
as an unprivileged system user (`postgres` if it exists, else `nobody`) that owns the temporary
directory; the servers are our child processes either way, so we signal and reap them directly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.server_process import (
    HOST,
    ServerProcess,
    make_workdir,
    run_command,
    unprivileged_user,
)

POSTGRES_URL_ENV = "FTDEPLOY_TEST_POSTGRES_URL"
REDIS_URL_ENV = "FTDEPLOY_TEST_REDIS_URL"
DATABASE = "ftdeploy_test"
SUPERUSER = "postgres"

_OWNER_PID = os.getpid()
_LOCK = threading.Lock()  # guards _LIVE
_LIVE: list[Service] = []


class Service:
    """A server for the tests: `.url`, `.pid`, `.stop()`, `.restart()`, `.down()`; a context
    manager.

    `stop()` is final and idempotent. `restart()` stops the server (gracefully; a server already
    killed is just reaped) and starts it again on the same port with the same data; `down()`
    does the same around a `with` block.
    """

    def __init__(self, name: str, url: str, server: ServerProcess | None = None) -> None:
        self.name = name
        self.url = url
        self._server = server
        self._stopped = False

    @property
    def external(self) -> bool:
        """True when the URL came from the environment and nothing was started."""
        return self._server is None

    @property
    def pid(self) -> int | None:
        """The server's process id, None for an external or stopped service."""
        if self._server is None or self._server.process is None:
            return None
        return self._server.process.pid

    @property
    def workdir(self) -> Path | None:
        """The temporary directory holding the data, socket and `server.log`."""
        return None if self._server is None else self._server.workdir

    def restart(self, downtime: float = 0.0) -> None:
        """Stop the server, leave it down for `downtime` seconds (an outage), start it again."""
        if self._server is None:
            raise RuntimeError(f"external {self.name} cannot be restarted")
        if self._stopped:
            raise RuntimeError(f"{self.name} was stopped for good")
        self._server.halt()
        time.sleep(downtime)
        self._server.start()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped (gracefully) for the `with` block, an outage that lasts as long as
        the test decides; started again on the same port with the same data when it ends."""
        if self._server is None:
            raise RuntimeError(f"external {self.name} cannot be stopped")
        if self._stopped:
            raise RuntimeError(f"{self.name} was stopped for good")
        self._server.halt()
        try:
            yield
        finally:
            self._server.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with _LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
        if self._server is not None:
            try:
                self._server.halt()
            finally:
                shutil.rmtree(self._server.workdir, ignore_errors=True)

    def __enter__(self) -> Service:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "external" if self.external else f"pid={self.pid}"
        return f"<Service {self.name} {self.url} {state}>"


# --------------------------------------------------------------------------- PostgreSQL


def start_postgres() -> Service:
    """A PostgreSQL server with an empty database `ftdeploy_test`, trust auth, no password.

    `.url` is `postgresql+psycopg://postgres@127.0.0.1:PORT/ftdeploy_test`. Durability is off
    (fsync, full_page_writes, synchronous_commit): the data is thrown away anyway.
    """
    external = os.environ.get(POSTGRES_URL_ENV)
    if external:
        return Service("postgres", external)
    bindir = postgres_bindir()
    user = unprivileged_user() if os.geteuid() == 0 else None
    workdir = make_workdir("pg", user)
    data, sockets = workdir / "data", workdir / "sockets"
    try:
        sockets.mkdir()
        if user is not None:
            os.chown(sockets, user.pw_uid, user.pw_gid)
        run_command(
            [
                str(bindir / "initdb"),
                f"--pgdata={data}",
                f"--username={SUPERUSER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            user=user,
            cwd=workdir,
            log=workdir / "initdb.log",
        )

        def argv(port: int) -> list[str]:
            settings = {
                "listen_addresses": HOST,
                "unix_socket_directories": str(sockets),
                "fsync": "off",
                "full_page_writes": "off",
                "synchronous_commit": "off",
                "max_connections": "300",
                # Docker gives /dev/shm 64 MB; parallel queries must not depend on it.
                "dynamic_shared_memory_type": "mmap",
            }
            options = [part for k, v in settings.items() for part in ("-c", f"{k}={v}")]
            return [str(bindir / "postgres"), "-D", str(data), "-p", str(port), *options]

        server = ServerProcess(
            "postgres",
            workdir,
            argv,
            ready=_postgres_ready,
            user=user,
            stop_signal=signal.SIGINT,  # fast shutdown: disconnect clients, then exit
            death_signal=signal.SIGQUIT,  # immediate shutdown, also ends the backends
        )
        server.start()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    service = _register(Service("postgres", _pg_url(server.port, "postgres"), server))
    try:
        create_database(service.url, DATABASE)
    except BaseException:
        service.stop()
        raise
    service.url = _pg_url(server.port, DATABASE)
    return service


def postgres_bindir() -> Path:
    """The directory of initdb and postgres: the newest /usr/lib/postgresql/*/bin, else PATH."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    found = [
        p
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if (p / "initdb").is_file() and (p / "postgres").is_file()
    ]
    if found:
        return max(found, key=version)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return Path(initdb).parent
    raise RuntimeError(
        "PostgreSQL server binaries not found (initdb, postgres): install them "
        f"(apt-get install postgresql) or set {POSTGRES_URL_ENV}"
    )


def libpq_url(url: str) -> str:
    """The URL without SQLAlchemy's driver suffix, as psycopg.connect() takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create database `name` on the server of `admin_url`; return its URL (same form)."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(statement)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` if it exists, closing its connections first."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    admin = make_url(admin_url)
    if admin.database == name:  # cannot drop the database we are connected to
        admin = admin.set(database="postgres")
    conninfo = libpq_url(admin.render_as_string(hide_password=False))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(statement)


def _pg_url(port: int, database: str) -> str:
    return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{port}/{database}"


def _postgres_ready(port: int) -> bool:
    try:
        conninfo = f"host={HOST} port={port} user={SUPERUSER} dbname=postgres connect_timeout=2"
        with psycopg.connect(conninfo) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


# --------------------------------------------------------------------------- Redis


def start_redis(appendonly: bool = True) -> Service:
    """A Redis server; `.url` is `redis://127.0.0.1:PORT/0`.

    With `appendonly` every write is in the AOF, fsynced, before Redis answers it, so what a
    client was told is stored survives `restart()` and even a SIGKILL of the server. No RDB
    snapshots are taken.
    """
    external = os.environ.get(REDIS_URL_ENV)
    if external:
        return Service("redis", external)
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError(
            "redis-server not found: install it (apt-get install redis-server) "
            f"or set {REDIS_URL_ENV}"
        )
    # In memory when /dev/shm has room: fsync is then free, and the AOF still survives a killed
    # server, which is all a test session needs (on disk each write would cost milliseconds).
    workdir = make_workdir("redis", None, in_memory=True)

    def argv(port: int) -> list[str]:
        return [
            executable,
            "--bind", HOST,
            "--port", str(port),
            "--dir", str(workdir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "always",
            "--logfile", "",
        ]  # fmt: skip

    server = ServerProcess(
        "redis",
        workdir,
        argv,
        ready=_redis_ready,
        user=None,
        stop_signal=signal.SIGTERM,  # Redis flushes the AOF and exits
        death_signal=signal.SIGTERM,
    )
    try:
        server.start()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return _register(Service("redis", f"redis://{HOST}:{server.port}/0", server))


def _redis_ready(port: int) -> bool:
    client = redis.Redis(host=HOST, port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False
    finally:
        client.close()


def _register(service: Service) -> Service:
    with _LOCK:
        _LIVE.append(service)
    return service


@atexit.register
def _stop_all() -> None:
    # A process forked from the test session (a worker pool, say) inherits this handler; only
    # the session that started the servers may stop them.
    if os.getpid() != _OWNER_PID:
        return
    with _LOCK:
        live = list(_LIVE)
    for service in reversed(live):
        with contextlib.suppress(Exception):  # exiting anyway: stop the others
            service.stop()
