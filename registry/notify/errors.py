"""Failures of notification endpoints (subclasses of `FtdeployError`: same exit codes and
mapping as the others). Messages never contain an endpoint's URL or secret."""

from __future__ import annotations

from collections.abc import Sequence

from registry.errors import FtdeployError


class EndpointExists(FtdeployError):
    """The name is taken by another endpoint of the same owner (the tenant, or global)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"notification endpoint already exists: {name!r}")


class EndpointAmbiguous(FtdeployError):
    """A name that more than one endpoint the caller sees holds (names are unique per tenant,
    and apart from them among the global endpoints): which one is meant must be said. Only
    owners the caller sees are named."""

    def __init__(self, name: str, tenants: Sequence[str | None]) -> None:
        self.name = name
        self.tenants = list(tenants)  # the owners' slugs; None for the global one
        owners = ", ".join(f"tenant {t!r}" if t else "the global endpoints" for t in tenants)
        super().__init__(
            f"notification endpoint name {name!r} is held by more than one owner ({owners}): "
            "name its tenant (--tenant SLUG; over HTTP ?tenant=SLUG) or ask for the global one "
            "(--global; ?global=true)"
        )


class EndpointNotFound(FtdeployError):
    exit_code = 3

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"notification endpoint not found: {name!r}")


class EncryptionKeyMissing(FtdeployError):
    """No key to encrypt endpoint secrets with, and none may be generated here."""

    exit_code = 2

    def __init__(self) -> None:
        super().__init__(
            "set FTDEPLOY_NOTIFY_ENCRYPTION_KEY (the same on every worker and CLI host) to store "
            "notification endpoints in a database server"
        )


class SecretUnreadable(FtdeployError):
    """A stored URL or secret does not decrypt with the configured key (it changed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"endpoint {name!r}: its stored URL or secret does not decrypt with "
            "FTDEPLOY_NOTIFY_ENCRYPTION_KEY (was the key changed?); remove and add it again"
        )


class EndpointDisabled(FtdeployError):
    """A replay asked of a disabled endpoint: what it queued would only wait."""

    def __init__(self, name: str, reason: str | None) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f"notification endpoint {name!r} is disabled ({reason or 'no reason recorded'}): "
            "enable it, then replay"
        )


class NotificationNotFound(FtdeployError):
    """No notification with this id was meant for the endpoint (or the caller may not see it)."""

    exit_code = 3

    def __init__(self, name: str, event_id: str) -> None:
        self.name = name
        self.event_id = event_id
        super().__init__(f"no notification {event_id} for endpoint {name!r}")


class NotReplayable(FtdeployError):
    """The notification's delivery did not end failed: there is nothing to send again."""

    def __init__(self, name: str, event_id: str, status: str) -> None:
        self.name = name
        self.event_id = event_id
        self.status = status
        super().__init__(
            f"notification {event_id} to {name!r} is {status}: only failed or missed ones are "
            "replayed"
        )
