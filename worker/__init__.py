"""The doors through which work enters: the Celery app and its tasks, the CLI, the HTTP receiver.

Every door sends the follow-up messages its units of work recorded (`registry.messages`) through
the Celery app; the app is built on the first message, so a command that sends none never pays
for it.
"""

from __future__ import annotations

from registry import messages


def _send_through_the_app(message: messages.Message) -> None:
    from worker.app import send_message  # installs itself as the sender on import

    send_message(message)


messages.set_sender(_send_through_the_app)
