"""The audit trail of traffic changes, as read by operators."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import TrafficEvent
from registry.tenants import find_tenant


def history(session: Session, tenant_ref: str | uuid.UUID, limit: int = 200) -> list[TrafficEvent]:
    """The tenant's traffic changes, newest first. Reads only."""
    tenant = find_tenant(session, tenant_ref)
    return list(
        session.scalars(
            select(TrafficEvent)
            .where(TrafficEvent.tenant_id == tenant.id)
            .order_by(TrafficEvent.id.desc())
            .limit(limit)
        )
    )
