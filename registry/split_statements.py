"""The statements `registry.splits` sends when a split moves deployments, built once at import:
a prebuilt statement's cache key is memoized, while building one per call costs more than
running it."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.sql.dml import ReturningUpdate

from registry.models import Deployment, DeploymentStatus, ModelVersion, UTCDateTime, VersionStatus

_deployments = Deployment.__table__.c
_versions = ModelVersion.__table__.c

# The deployments of `ids` moved to `status`. A deployment that was rejected or is still awaiting
# its evaluation has no live version; one already in `status` stays as it is.
MOVE_DEPLOYMENTS = (
    update(cast(Table, Deployment.__table__))
    .where(
        _deployments.version_id.in_(bindparam("ids", expanding=True)),
        _deployments.status.not_in([bindparam("status"), DeploymentStatus.REJECTED.value]),
    )
    .values(status=bindparam("status"), updated_at=bindparam("now", type_=UTCDateTime()))
    .returning(_deployments.id)
)


# PostgreSQL: the versions that leave production (`deprecated`, once `update_row`'s UPDATE each)
# written in the same round trip as a move of deployments, as a data-modifying CTE. The main
# statement does not read it: PostgreSQL runs it to completion all the same, and the two touch
# different tables, so neither needs to see the other's rows.
def _deprecate_and_move() -> ReturningUpdate[Any]:
    deprecated = (
        update(cast(Table, ModelVersion.__table__))
        .where(_versions.id.in_(bindparam("deprecated", expanding=True)))
        .values(
            status=VersionStatus.DEPRECATED.value,
            traffic_percent=0,
            deprecated_at=bindparam("now", type_=UTCDateTime()),
        )
        .returning(_versions.id)
        .cte("deprecated")
    )
    return MOVE_DEPLOYMENTS.add_cte(deprecated)


DEPRECATE_AND_MOVE = _deprecate_and_move()
