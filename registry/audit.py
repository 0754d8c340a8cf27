"""The audit trail of traffic changes, as read by operators."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import InvalidInput
from registry.models import TrafficEvent
from registry.tenants import find_tenant


def history(session: Session, tenant_ref: str | uuid.UUID, limit: int = 200) -> list[TrafficEvent]:
    """The tenant's traffic changes, newest first. Reads only. Raises TenantNotFound, and
    InvalidInput for a limit that is not a whole number >= 1."""
    # Checked here: PostgreSQL rejects a negative LIMIT as a database error, SQLite ignores it.
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput("limit", f"{limit!r} is not a whole number >= 1")
    tenant = find_tenant(session, tenant_ref)
    return list(
        session.scalars(
            select(TrafficEvent)
            .where(TrafficEvent.tenant_id == tenant.id)
            .order_by(TrafficEvent.id.desc())
            .limit(limit)
        )
    )
