"""The Celery app: broker, delivery guarantees and beat schedule, from `registry.settings`.

At-least-once delivery with an exactly-once effect: a message is acknowledged only after its task
returned (`acks_late`), is redelivered if the worker process dies (`task_reject_on_worker_lost`),
and a worker holds at most one unstarted message per process (`prefetch_multiplier=1`). The
effect is made once by the database (unique job id, one version per run, operation status).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler
from kombu import Exchange, Queue

from registry import messages
from registry.settings import Settings, get_settings
from worker import embedded_broker
from worker.startup import settings_or_exit  # also: the worker's checks at worker_init

QUEUE = "ftdeploy"
# Notification deliveries: a queue of their own (see worker.notify_tasks).
NOTIFY_QUEUE = "notifications"


def broker_options(settings: Settings) -> dict[str, Any]:
    url = settings.broker_url_value
    if url.startswith("filesystem"):
        # The embedded broker: message files under the data directory, no server to run.
        embedded_broker.install()
        folder = (settings.data_dir / "broker").resolve()
        for sub in ("queue", "control", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # The folder is listed this often (kombu's default, 1 s, adds up to a second to
            # every hop of an event: publish, retry, follow-up task).
            "polling_interval": 0.2,
        }
    # Redis redelivers a message nobody acknowledged within the visibility timeout. It must
    # outlast the longest task and the longest countdown, or a second worker starts the same work
    # (Settings checks this at start).
    visibility = settings.visibility_timeout_seconds
    return {
        "visibility_timeout": visibility,
        # kombu looks for expired unacknowledged messages only every interval x throttle seconds
        # (10 x 10 by default): without these a message of a killed worker waits ~100 s past its
        # visibility timeout. Scan at least five times per timeout, at most once a second.
        "unacked_restore_interval": max(1, min(10, visibility // 5)),
        "unacked_restore_throttle": 1,
    }


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("ftdeploy", include=["worker.tasks", "worker.notify_tasks"])
    transport_options = broker_options(settings)
    app.conf.update(
        broker_url=settings.broker_url_value,
        broker_transport_options=transport_options,
        # Celery reads the visibility timeout from these too (results are unused, but the
        # redis backend and the unacked-restore path each look here).
        result_backend_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        # Also for messages sent by name (`registry.messages`): deliveries keep their own queue.
        task_routes={messages.DELIVER_NOTIFICATIONS: {"queue": NOTIFY_QUEUE}},
        # A worker started without -Q consumes both.
        task_queues=[
            Queue(name, Exchange(name), routing_key=name) for name in (QUEUE, NOTIFY_QUEUE)
        ],
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_seconds,
        # Up to 10 s (a fifth of a short limit) to end an attempt cleanly before the hard kill.
        task_soft_time_limit=settings.task_time_limit_seconds
        - min(10.0, settings.task_time_limit_seconds / 5),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule=beat_schedule(settings),
        beat_schedule_filename=str((settings.data_dir / "celerybeat-schedule").resolve()),
        beat_scheduler="worker.app:Scheduler",
        timezone="UTC",
        enable_utc=True,
    )
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "reconcile-events": {
            "task": "ftdeploy.reconcile_events",
            "schedule": settings.reconcile_seconds,
            "options": {"expires": settings.reconcile_seconds},
        },
        # Delivers what was never sent (a crash after the commit), retries whose time came, and
        # what a dead loop left (its endpoint's lease ran out).
        "deliver-notifications": {
            "task": "ftdeploy.deliver_notifications",
            "schedule": settings.reconcile_seconds,
            "options": {"expires": settings.reconcile_seconds, "queue": NOTIFY_QUEUE},
        },
        # A sweep still queued when the next is due is dropped (it would only repeat the next
        # one); overlapping sweeps are safe anyway (registry.canary.sweep re-checks under the lock).
        "auto-promote-sweep": {
            "task": "ftdeploy.auto_promote_sweep",
            "schedule": settings.sweep_seconds,
            "options": {"expires": settings.sweep_seconds},
        },
    }


class Scheduler(PersistentScheduler):
    """Celery's file-backed beat scheduler, creating the directory of its file first: on a fresh
    machine the Procfile's `beat` runs before anything made the data directory."""

    def setup_schedule(self) -> None:
        Path(self.schedule_filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()


# Unusable settings end the process here with one line per problem (`celery -A worker.app` would
# otherwise print a traceback holding pydantic's message).
app = make_app(settings_or_exit())


def send_message(message: messages.Message) -> None:
    """The sender of `registry.messages`: follow-up messages that units of work send after their
    commits, published as the named task (JSON arguments, the default queue)."""
    app.send_task(message.task, args=message.args, kwargs=dict(message.kwargs))


messages.set_sender(send_message)
