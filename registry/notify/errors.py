"""Failures of notification endpoints (subclasses of `FtdeployError`: same exit codes and
mapping as the others). Messages never contain an endpoint's URL or secret."""

from __future__ import annotations

from registry.errors import FtdeployError


class EndpointExists(FtdeployError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"notification endpoint already exists: {name!r}")


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
