"""The process side of the test servers: started as an unprivileged user when the tests run as
root, on a free port kept across restarts, signalled to death with the test session
(PR_SET_PDEATHSIG), in temporary directories that a later session cleans up if this one could not.
`tests.services` builds PostgreSQL and Redis on it."""

from __future__ import annotations

import ctypes
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

_TMP_PREFIX = "ftdeploy-test-"
_PR_SET_PDEATHSIG = 1
_SHM = Path("/dev/shm")
_SHM_MIN_FREE = 1 << 30  # Docker's default 64 MB /dev/shm is too small to hold a growing AOF
_LOCK = threading.Lock()  # guards the spawner thread's creation

_T = TypeVar("_T")


class ServerProcess:
    """One server process: started on a free port (kept across restarts), stopped by signal."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        argv: Callable[[int], list[str]],
        *,
        ready: Callable[[int], bool],
        user: pwd.struct_passwd | None,
        stop_signal: signal.Signals,
        death_signal: signal.Signals,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.argv = argv
        self.ready = ready
        self.user = user
        self.stop_signal = stop_signal
        self.death_signal = death_signal
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # A fresh port can be taken between our probe and the server's bind: try another one.
        # A restart keeps its port (both servers bind with SO_REUSEADDR).
        for _ in range(1 if self.port else 5):
            port = self.port or free_port()
            self.process = spawn(
                self.argv(port),
                user=self.user,
                cwd=self.workdir,
                log=self.workdir / "server.log",
                death_signal=self.death_signal,
            )
            if self._wait_ready(port):
                self.port = port
                return
        raise RuntimeError(
            f"{self.name} exited at start on {HOST}:{port}; its log ends with:\n"
            + tail(self.workdir / "server.log")
        )

    def _wait_ready(self, port: int) -> bool:
        """True once the server answers, False if it exited; raises after START_TIMEOUT."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self.ready(port):
                return True
            time.sleep(0.05)
        self.halt()
        raise RuntimeError(
            f"{self.name} did not answer on {HOST}:{port} within {START_TIMEOUT:.0f}s; "
            "its log ends with:\n" + tail(self.workdir / "server.log")
        )

    def halt(self) -> None:
        """Stop the process (signal, then SIGKILL after STOP_TIMEOUT) and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                process.send_signal(self.stop_signal)
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def spawn(
    argv: Sequence[str],
    *,
    user: pwd.struct_passwd | None,
    cwd: Path,
    log: Path,
    death_signal: signal.Signals,
) -> subprocess.Popen[bytes]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def die_with_parent() -> None:
        # Runs in the child after the uid switch (a uid change would clear the setting).
        prctl(_PR_SET_PDEATHSIG, int(death_signal))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    def popen() -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=child_env(user, cwd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                **as_user(user),
            )

    return _in_spawner_thread(popen)


_spawner: tuple[int, queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]] | None = None


def _in_spawner_thread(call: Callable[[], _T]) -> _T:
    """Run `call` in one daemon thread that lives as long as the process.

    The kernel sends the death signal when the *thread* that forked the server ends, so a
    restart() from a short-lived thread (a fault injector, say) must not fork from that thread.
    """
    global _spawner
    with _LOCK:
        if _spawner is None or _spawner[0] != os.getpid():  # none yet, or we are a fork
            calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
            threading.Thread(
                target=_serve_calls, args=(calls,), name="test-services-spawner", daemon=True
            ).start()
            _spawner = (os.getpid(), calls)
        calls = _spawner[1]
    future: Future[_T] = Future()
    calls.put((call, future))
    return future.result()


def _serve_calls(calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
    while True:
        call, future = calls.get()
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)


def run_command(
    argv: Sequence[str], *, user: pwd.struct_passwd | None, cwd: Path, log: Path
) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(
            list(argv),
            cwd=cwd,
            env=child_env(user, cwd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT * 4,
            check=False,
            **as_user(user),
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}); its output ends with:\n"
            + tail(log)
        )


def as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen arguments that run the command as `user`, without root's supplementary groups."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def child_env(user: pwd.struct_passwd | None, home: Path) -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) of the caller must not steer initdb or the server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if user is not None:
        env.update(HOME=str(home), USER=user.pw_name, LOGNAME=user.pw_name)
    return env


def unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
        check=True,
    )
    return pwd.getpwnam("postgres")


def make_workdir(kind: str, user: pwd.struct_passwd | None, *, in_memory: bool = False) -> Path:
    base = Path(tempfile.gettempdir())
    if user is not None and not _reachable(base, user):
        base = Path("/tmp")  # e.g. TMPDIR under /root, which the server's user cannot enter
    if in_memory and _roomy_tmpfs(_SHM):
        base = _SHM
    for directory in {base, _SHM}:
        _remove_abandoned(directory)
    workdir = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-{kind}-", dir=base))
    if user is not None:
        os.chown(workdir, user.pw_uid, user.pw_gid)
    return workdir


def _roomy_tmpfs(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize >= _SHM_MIN_FREE


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    for directory in [path, *path.parents]:
        st = directory.stat()
        if not (st.st_mode & 0o001 or (st.st_uid == user.pw_uid and st.st_mode & 0o100)):
            return False
    return True


def _remove_abandoned(base: Path) -> None:
    """Remove the temporary directories of sessions whose process is gone."""
    for path in base.glob(f"{_TMP_PREFIX}*"):
        match = re.match(rf"{_TMP_PREFIX}(\d+)-", path.name)
        if match is None or not path.is_dir():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path} unreadable: {exc})"
