"""Registry tests never talk to a broker. By default no sender is installed: a follow-up message
a unit of work sends after its commit is logged as unsent, as when the broker is down, and the
row that asked for it stays for the reconciler. `sent_messages` installs a sender that keeps
them in a list instead."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry import messages


@pytest.fixture(autouse=True)
def _no_broker() -> Iterator[None]:
    previous = messages.set_sender(None)
    yield
    messages.set_sender(previous)


@pytest.fixture
def sent_messages(_no_broker: None) -> list[messages.Message]:
    sent: list[messages.Message] = []
    messages.set_sender(sent.append)
    return sent
