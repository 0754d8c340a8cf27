"""Commit, then send: the one place the HTTP door hands follow-up work to the broker.

Messages collected during the unit of work are sent only after it committed, so no worker ever
sees an uncommitted row; if the commit fails, nothing is sent. (When `registry.db.unit_of_work()`
collects after-commit messages itself, this becomes a thin alias of it.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from registry.db import unit_of_work

Send = Callable[[], object]


@contextmanager
def unit_of_work_then_send() -> Iterator[tuple[Session, list[Send]]]:
    """`with unit_of_work_then_send() as (session, after_commit): …; after_commit.append(send)`."""
    after_commit: list[Send] = []
    with unit_of_work() as session:
        yield session, after_commit
    for send in after_commit:
        send()
