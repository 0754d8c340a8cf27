"""Operators' promote and rollback, queued for the worker.

queued → succeeded | failed | stale | expired | cancelled (`running` while a worker holds it).

An operation is decided against the split it was queued on. Queueing records the tenant's split
then (`queued_split`, {"<version>": percent} of its production versions) and the id of its newest
traffic event (`queued_after_event`). When the worker runs it, under the tenant's lock, it ends
`stale` if the split is not the same, or if any traffic change since then moved the split (even
if a later one moved it back: someone decided in between, say a promotion that was rolled back).
Changes that leave the split as it was (a version staged at 0%, archiving, a promotion to the
split in force) do not make it stale. Queued with `force`, it runs on whatever split it finds.

It ends `expired` when no worker started it before `expires_at` (queueing time plus
FTDEPLOY_OPERATION_TTL_SECONDS); beat's reconciler also expires those still queued by then, and
re-sends those whose message never reached the broker (`registry.stranded_operations`). An
operator may cancel it while it is queued. Every final status is told once
(`notices.operation_finished`) and shown by `activity`.

- `queueing`: queue, submit, send, list, look up;
- `running`: run one under the tenant's lock, and the staleness decision;
- `ending`: the final statuses with their reasons: expire, cancel, fail.
"""

from registry.operations.ending import (
    cancel_operation,
    expire_operation,
    expiry,
    fail_operation,
)
from registry.operations.queueing import (
    default_ttl,
    get_operation,
    list_operations,
    queue_operation,
    send,
)
from registry.operations.running import Asked, run_operation, split_change, split_text

__all__ = [
    "Asked",
    "cancel_operation",
    "default_ttl",
    "expire_operation",
    "expiry",
    "fail_operation",
    "get_operation",
    "list_operations",
    "queue_operation",
    "run_operation",
    "send",
    "split_change",
    "split_text",
]
