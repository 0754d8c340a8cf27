"""API keys: who may call the HTTP API, with which role, over which tenants.

A key reads `ftd_<key id>_<secret>`: the prefix lets secret scanners recognise a leaked key, the
key id (16 hex digits, not secret) finds its row, the secret is 256 bits from `secrets`. Only the
SHA-256 of the whole key is stored (a hash of a high-entropy key needs no slow KDF), compared in
constant time. A key is shown once, by `create_key`; nothing else ever returns it.

Roles are ordered serve < read < operate < admin: a key may do what its role and every lower role
may. A key is scoped to some tenants or sees all of them; a scoped key whose tenants are all gone
sees none (never all).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import clock
from registry.errors import InvalidInput, KeyExists, KeyNotFound
from registry.models import ApiKey, ApiKeyTenant, KeyRole, Tenant
from registry.tenants import find_tenant

PREFIX = "ftd_"
KEY_ID_HEX = 16
# 43 characters of [A-Za-z0-9]: 256 bits, and no `_` or `-` that would blur the key's parts.
SECRET_CHARS = 43
_ALPHABET = string.ascii_letters + string.digits
ROLE_ORDER: tuple[KeyRole, ...] = (KeyRole.SERVE, KeyRole.READ, KeyRole.OPERATE, KeyRole.ADMIN)
_KEY_PATTERN = re.compile(rf"^{PREFIX}([0-9a-f]{{{KEY_ID_HEX}}})_([A-Za-z0-9_-]{{20,100}})$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$")


@dataclass(frozen=True)
class Principal:
    """A verified key, as a request sees it. `tenant_ids` None: every tenant."""

    key_uuid: uuid.UUID
    name: str
    role: KeyRole
    tenant_ids: frozenset[uuid.UUID] | None

    def allows(self, needed: KeyRole) -> bool:
        return ROLE_ORDER.index(self.role) >= ROLE_ORDER.index(needed)

    def sees(self, tenant_id: uuid.UUID) -> bool:
        return self.tenant_ids is None or tenant_id in self.tenant_ids


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key_id: str
    role: str
    tenants: tuple[str, ...] | None  # slugs; None: every tenant
    created_at: str
    revoked_at: str | None


def check_role(role: object) -> KeyRole:
    if not isinstance(role, str) or role not in set(KeyRole):
        allowed = ", ".join(r.value for r in ROLE_ORDER)
        raise InvalidInput("role", f"{role!r} is not one of {allowed}")
    return KeyRole(role)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise InvalidInput(
            "key name", f"{name!r} must be 1-100 letters, digits or . _ : @ - (no spaces)"
        )
    return name


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def split_key(presented: str) -> str | None:
    """The key id of a well-formed key, else None (nothing is looked up for a malformed one)."""
    matched = _KEY_PATTERN.match(presented)
    return matched.group(1) if matched else None


def create_key(
    session: Session, name: str, role: str, tenant_refs: Sequence[str] = ()
) -> tuple[ApiKey, str]:
    """A new key and its clear text, which only the caller ever sees. Raises InvalidInput,
    KeyExists, TenantNotFound (nothing written). Not idempotent."""
    name, key_role = check_name(name), check_role(role)
    tenants = [find_tenant(session, ref) for ref in tenant_refs]
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise KeyExists(name)
    key_id = secrets.token_hex(KEY_ID_HEX // 2)
    clear = f"{PREFIX}{key_id}_{''.join(secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS))}"
    row = ApiKey(
        name=name,
        key_id=key_id,
        key_hash=hash_key(clear),
        role=key_role,
        all_tenants=not tenants,
    )
    session.add(row)
    session.flush()
    for tenant_id in {t.id for t in tenants}:
        session.add(ApiKeyTenant(key_id=row.id, tenant_id=tenant_id))
    session.flush()
    return row, clear


def revoke_key(session: Session, name: str) -> ApiKey:
    """Revoke the key named `name`. Idempotent (a revoked key stays revoked, first time kept).
    Raises KeyNotFound."""
    row = session.scalars(select(ApiKey).where(ApiKey.name == check_name(name))).one_or_none()
    if row is None:
        raise KeyNotFound(name)
    if row.revoked_at is None:
        row.revoked_at = clock.now()
        session.flush()
    return row


def list_keys(session: Session) -> list[KeyInfo]:
    """Every key, oldest first, without any secret (there is none to show: only hashes)."""
    scopes: dict[uuid.UUID, list[str]] = {}
    for key_uuid, slug in session.execute(
        select(ApiKeyTenant.key_id, Tenant.slug)
        .join(Tenant, Tenant.id == ApiKeyTenant.tenant_id)
        .order_by(Tenant.slug)
    ):
        scopes.setdefault(key_uuid, []).append(slug)
    return [
        KeyInfo(
            name=row.name,
            key_id=row.key_id,
            role=row.role,
            tenants=None if row.all_tenants else tuple(scopes.get(row.id, ())),
            created_at=row.created_at.isoformat(),
            revoked_at=row.revoked_at.isoformat() if row.revoked_at else None,
        )
        for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.name))
    ]


@dataclass(frozen=True)
class StoredKey:
    """What verification needs of a key row (cached by the HTTP door for a short while)."""

    key_hash: str
    principal: Principal
    revoked: bool


def load_key(session: Session, key_id: str) -> StoredKey | None:
    """The key with this key id, or None. Reads only."""
    row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
    if row is None:
        return None
    tenant_ids = None
    if not row.all_tenants:
        tenant_ids = frozenset(
            session.scalars(select(ApiKeyTenant.tenant_id).where(ApiKeyTenant.key_id == row.id))
        )
    principal = Principal(row.id, row.name, KeyRole(row.role), tenant_ids)
    return StoredKey(row.key_hash, principal, row.revoked_at is not None)


def verify(presented: str, stored: StoredKey | None) -> Principal | None:
    """The principal when `presented` is the stored, unrevoked key; else None. Constant time in
    the comparison of the hashes."""
    if stored is None:
        # Hash anyway, so a missing key id costs what a wrong secret does.
        hmac.compare_digest(hash_key(presented), "0" * 64)
        return None
    matches = hmac.compare_digest(hash_key(presented), stored.key_hash)
    if not matches or stored.revoked:
        return None
    return stored.principal
