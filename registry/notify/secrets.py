"""Endpoint secrets: made here, shown once, stored only encrypted.

Each generic endpoint gets its own signing secret, `whsec_` + base64 of 32 random bytes (the
Standard Webhooks serialization). The secret and the endpoint's URL (which may itself carry a
token: a Slack incoming-webhook URL is one) are stored AES-256-GCM encrypted, bound to the
endpoint's id and to what they are (a ciphertext moved to another row or column does not
decrypt). The key is SHA-256 of FTDEPLOY_NOTIFY_ENCRYPTION_KEY; on the embedded database,
without that setting, a random key is generated once into `notify.key` (mode 0600) in the data
directory. Nothing here logs, and no error message carries a plaintext.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import uuid
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from registry.notify.errors import EncryptionKeyMissing
from registry.settings import Settings, get_settings

SECRET_PREFIX = "whsec_"
FORMAT = "v1"
KEY_FILE = "notify.key"


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_` secret."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def _key(settings: Settings) -> bytes:
    configured = settings.notify_encryption_key
    if configured is not None and configured.get_secret_value():
        material = configured.get_secret_value().encode()
    elif settings.is_embedded_database:
        material = _key_file(settings.data_dir / KEY_FILE)
    else:
        raise EncryptionKeyMissing()
    return hashlib.sha256(b"ftdeploy-notify\0" + material).digest()


def _key_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    material = base64.b64encode(secrets.token_bytes(32))
    try:
        # Exclusive create: two processes starting at once agree on the first one's key.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(material)
    return material


def _context(endpoint_id: uuid.UUID, purpose: str) -> bytes:
    return f"ftdeploy-notify:{purpose}:{endpoint_id}".encode()


def encrypt(
    plaintext: str, endpoint_id: uuid.UUID, purpose: str, settings: Settings | None = None
) -> str:
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_key(settings or get_settings())).encrypt(
        nonce, plaintext.encode(), _context(endpoint_id, purpose)
    )
    return f"{FORMAT}:" + base64.b64encode(nonce + sealed).decode()


def decrypt(
    stored: str, endpoint_id: uuid.UUID, purpose: str, settings: Settings | None = None
) -> str | None:
    """The plaintext, or None when it does not decrypt (another key, or a tampered value)."""
    version, _, payload = stored.partition(":")
    if version != FORMAT:
        return None
    try:
        raw = base64.b64decode(payload)
        opened = AESGCM(_key(settings or get_settings())).decrypt(
            raw[:12], raw[12:], _context(endpoint_id, purpose)
        )
    except (InvalidTag, ValueError):
        return None
    return opened.decode()
