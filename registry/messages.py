"""Follow-up messages: tasks to hand to the broker once the unit of work that asked for them has
committed, so no worker ever sees an uncommitted row.

Registry code records a message as plain data (`send_after_commit(session, "ftdeploy.…", args,
kwargs)`); it knows nothing of Celery. The worker's Celery app installs the sender
(`set_sender`) in every process that has it (worker, CLI, HTTP receiver). After the commit
(`registry.db.after_commit`) each message is delivered: sent, then its `on_sent` registry step
committed in a unit of work of its own. A send that fails is logged and leaves the row that made
the message (an event not marked enqueued, a queued operation) for a reconciler to find; a
rollback drops the message unsent.

A door that must answer before sending (the webhook receiver answers OpenAI first) calls
`hold_messages(session)`: the unit of work's messages are then appended to the returned list at
its commit, not sent, and the door delivers them with `deliver` when it is ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from registry.db import after_commit

log = logging.getLogger("ftdeploy.messages")

HELD_KEY = "ftdeploy.held_messages"


@dataclass(frozen=True)
class Message:
    """One task to send: its dotted name and JSON-serializable arguments."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    # A registry step to commit once the message was handed over (say, note the event as
    # enqueued); it runs in a unit of work of its own, on the database the message came from.
    on_sent: Callable[[Session], object] | None = field(default=None, compare=False, repr=False)
    bind: Engine | Connection | None = field(default=None, compare=False, repr=False)


Sender = Callable[[Message], None]
_sender: Sender | None = None


class NoSender(RuntimeError):
    """No sender is installed in this process (the worker's Celery app installs one)."""

    def __init__(self, message: Message) -> None:
        super().__init__(f"no message sender installed: {message.task} not sent")


def set_sender(sender: Sender | None) -> Sender | None:
    """Install the process's sender (None: none); returns the previous one."""
    global _sender
    previous, _sender = _sender, sender
    return previous


def send_after_commit(
    session: Session,
    task: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    on_sent: Callable[[Session], object] | None = None,
) -> Message:
    """Send task `task` once the session's transaction commits; never if it rolls back.
    Returns the message (plain data, for tests and logs)."""
    message = Message(task, tuple(args), dict(kwargs or {}), on_sent, session.get_bind())
    held: list[Message] | None = session.info.get(HELD_KEY)
    if held is not None:
        after_commit(session, partial(held.append, message))
    else:
        after_commit(session, partial(_deliver_or_log, message))
    return message


def hold_messages(session: Session) -> list[Message]:
    """Hold this session's messages instead of sending them at the commit: the returned list
    receives them when (and only if) the transaction commits; the caller delivers them."""
    held: list[Message] = session.info.setdefault(HELD_KEY, [])
    return held


def deliver(message: Message) -> None:
    """Send the message, then commit its `on_sent` step. Raises what the sender or the database
    raised (NoSender when none is installed); the caller decides whether that is worth more
    than a log line."""
    if _sender is None:
        raise NoSender(message)
    _sender(message)
    if message.on_sent is not None:
        with Session(bind=message.bind, expire_on_commit=False) as session, session.begin():
            message.on_sent(session)


def deliver_held(held: Sequence[Message]) -> str | None:
    """Send the held messages (`hold_messages`) in order; None when all went, else what stopped
    them (its type only: a broker's error message may name the host and its credentials). Those
    not sent stay for the reconciler."""
    for message in held:
        try:
            deliver(message)
        except Exception as error:
            return type(error).__name__
    return None


def _deliver_or_log(message: Message) -> None:
    try:
        deliver(message)
    except Exception as error:
        # Committed already: the row that asked for the message stays for the reconciler.
        log.warning(
            "message.unsent",
            extra={"ftdeploy_fields": {"task": message.task, "error": type(error).__name__}},
        )
        return
    log.debug("message.sent", extra={"ftdeploy_fields": {"task": message.task}})


# The Celery task names other systems rely on (DESIGN: interfaces); the worker registers each.
JOB_FINISHED = "ftdeploy.job_finished"
EVALUATION_RECORDED = "ftdeploy.evaluation_recorded"
PROMOTE = "ftdeploy.promote"
ROLLBACK = "ftdeploy.rollback"
DELIVER_NOTIFICATIONS = "ftdeploy.deliver_notifications"
