"""What an operator's action would do to a tenant's split, before it is queued: the registry's
own promote or rollback, run for real in a savepoint that is always rolled back, so the preview
is exactly the change the worker would make now (or the error it would end with)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from registry import validation, versions
from registry.errors import FtdeployError
from registry.views.splits import Share, shares


@dataclass(frozen=True)
class Preview:
    before: list[Share]
    after: list[Share] | None  # None when the action would fail
    error: str | None  # the registry's own message, when it would fail


class _Undo(Exception):
    """Raised inside the savepoint so that it is rolled back."""


def preview(
    session: Session,
    tenant_id: uuid.UUID,
    kind: str,
    version: int | None = None,
    percent: int = 100,
) -> Preview:
    """The split before and after `kind` ("promote", "switch": promote to 100, "rollback").

    Locks the tenant for the rest of the caller's transaction, which the caller must roll back,
    never commit: the change was undone, but what the registry noted for after a commit (routing
    invalidations, messages) must not be acted on. Raises nothing for a refused action: the
    error's message is in the preview."""
    before = shares(versions.current_split(session, tenant_id))
    outcome: list[Share] | None = None
    error: str | None = None
    try:
        with session.begin_nested():
            if kind == "rollback":
                change = versions.rollback(session, tenant_id, actor="preview")
            else:
                number = validation.version_number(version)
                target = 100 if kind == "switch" else percent
                change = versions.promote(session, tenant_id, number, target, actor="preview")
            outcome = shares(change.after)
            raise _Undo
    except _Undo:
        pass
    except FtdeployError as refused:
        error = str(refused)
    session.expire_all()
    return Preview(before, outcome, error)
