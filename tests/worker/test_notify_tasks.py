"""The after-commit send: a commit that wrote deliveries sends one delivery task per endpoint,
after the commit and only then (not on a savepoint's release, never after a rollback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry import messages
from registry.notify.outbox import emit
from registry.notify.types import EventType
from registry.settings import get_settings
from tests.factories import make_tenant
from tests.registry.notify.support import add


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    monkeypatch.setenv("FTDEPLOY_NOTIFY_ENCRYPTION_KEY", "test-key-not-a-secret")
    get_settings.cache_clear()
    calls: list[object] = []
    # The outbox's after-commit send goes through the process's message sender.
    previous = messages.set_sender(
        lambda message: calls.append(uuid.UUID(message.kwargs["endpoint_id"]))
    )
    yield calls
    messages.set_sender(previous)
    get_settings.cache_clear()


def test_sent_once_after_the_commit_never_after_a_rollback(
    sessions: sessionmaker[Session], sent: list[object]
) -> None:
    hook = add(sessions, "hook").endpoint
    other = add(sessions, "other").endpoint
    with sessions() as session, session.begin():
        tenant = make_tenant(session, "acme")
        with session.begin_nested():
            emit(session, tenant.id, EventType.TENANT_PAUSED, {})
        assert sent == []  # the savepoint's release is no commit
        emit(session, tenant.id, EventType.TENANT_RESUMED, {})
        assert sent == []
    assert sent == sorted([hook.id, other.id], key=str)  # one task per endpoint

    with pytest.raises(RuntimeError), sessions() as session, session.begin():
        emit(session, None, EventType.TENANT_PAUSED, {})
        raise RuntimeError("rolled back")
    with sessions() as session, session.begin():
        make_tenant(session, "quiet")  # a later commit of the same kind carries nothing over
    assert len(sent) == 2
