"""The Celery app for the notification crash tests (`celery -A tests.faults.notify_fault_app
worker`): ftdeploy's own app, plus crash points chosen through the environment. Test-only: the
production code carries no hook.

`FTDEPLOY_FAULT_NOTIFY` is a comma-separated list of points, each fired once (a marker file
under FTDEPLOY_DATA_DIR remembers it across the pool's processes):

- `after_commit` — the process dies (SIGKILL) right after a commit that wrote deliveries, before
  it sends their delivery task (between the commit and the send);
- `after_send` — it dies after a receiver answered 2xx, before the delivery is recorded as
  delivered (after the send, before recording it).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import registry.notify.delivery
import registry.notify.outbox
import worker.notify_tasks
import worker.tasks  # the app's tasks, as `include` would load them
from registry.settings import get_settings
from worker.app import app

__all__ = ["app"]

POINTS_ENV = "FTDEPLOY_FAULT_NOTIFY"
POINTS = set(filter(None, os.environ.get(POINTS_ENV, "").split(",")))
if POINTS - {"after_commit", "after_send"}:
    raise ValueError(f"{POINTS_ENV}: unknown points {POINTS}")


def die_once(point: str) -> None:
    if point not in POINTS:
        return
    marker = Path(get_settings().data_dir) / f"crashed-notify-{point}"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        with marker.open("x"):
            pass
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap_take_pending(original: Callable[..., Any]) -> Callable[..., Any]:
    def take_pending(session: Any) -> Any:
        pending = original(session)
        if pending:
            die_once("after_commit")  # committed, and the send is the next thing it would do
        return pending

    return take_pending


def _wrap_record_attempt(original: Callable[..., Any]) -> Callable[..., Any]:
    def record_attempt(session: Any, delivery_id: int, sent: Any, *args: Any, **kw: Any) -> Any:
        if sent.status_code is not None and 200 <= sent.status_code < 300:
            die_once("after_send")
        return original(session, delivery_id, sent, *args, **kw)

    return record_attempt


def _install() -> None:
    # The senders look these up through their modules at call time; fail loudly if a
    # refactoring moved them (a fault test that cannot inject its fault must not pass).
    for module, name in (
        (registry.notify.outbox, "take_pending"),
        (registry.notify.outbox, "send_pending"),
        (registry.notify.delivery, "record_attempt"),
    ):
        if not callable(getattr(module, name, None)):
            raise RuntimeError(f"notify fault app: {module.__name__}.{name} is gone")
    if worker.notify_tasks.delivery is not registry.notify.delivery:
        raise RuntimeError("notify fault app: worker.notify_tasks no longer uses the delivery")
    registry.notify.outbox.take_pending = _wrap_take_pending(registry.notify.outbox.take_pending)
    registry.notify.delivery.record_attempt = _wrap_record_attempt(
        registry.notify.delivery.record_attempt
    )


_install()
