"""Outcome batches count once per tenant and batch id (`registry.canary.batches`), on both
databases; and the keys' domain (`registry.keys`): shown once, stored hashed, verified, revoked."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import keys
from registry.canary.batches import store_batch
from registry.errors import InvalidInput, KeyExists, TenantNotFound
from registry.models import ApiKey, KeyRole, OutcomeBatch, OutcomeCounter
from tests.factories import deploy_new, make_tenant


def _requests(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(OutcomeCounter.requests), 0))) or 0)


def test_a_batch_stored_five_times_counts_once(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        for slug in ("acme", "beta"):
            deploy_new(session, make_tenant(session, slug, require_evaluation=False))
    records = [
        {"tenant": "acme", "model": 1, "success": True, "count": 3},
        {"tenant": "beta", "model": "v1", "success": False},
        {"tenant": "acme", "model": 9, "success": True},  # refused: no v9
    ]
    results = []
    for _ in range(5):
        with sessions() as session, session.begin():
            results.append(store_batch(session, "b-1", records, bucket_seconds=10))
    assert [r.duplicate for r in results] == [False, True, True, True, True]
    assert {(r.recorded, r.refused_count) for r in results} == {(4, 1)}
    assert [(x.index, x.field) for x in results[0].refused] == [(2, "model")]
    with sessions() as session:
        assert _requests(session) == 4
        assert session.scalar(select(func.count()).select_from(OutcomeBatch)) == 2
    with sessions() as session, session.begin():
        # An id this tenant has not used is another batch.
        other = store_batch(
            session, "b-2", [{"tenant": "beta", "model": 1, "success": True}], bucket_seconds=10
        )
        assert not other.duplicate and _requests(session) == 5


def test_batch_ids_are_checked(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(InvalidInput, match="batch_id"):
        store_batch(session, "", [], bucket_seconds=10)
    with sessions() as session, pytest.raises(InvalidInput, match="batch_id"):
        store_batch(session, "a\x00b", [], bucket_seconds=10)


def test_keys_are_shown_once_stored_hashed_and_revocable(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        acme = make_tenant(session, "acme")
        row, clear = keys.create_key(session, "svc-a", "serve", ["acme"])
        _, admin = keys.create_key(session, "root", "admin")
        with pytest.raises(KeyExists):
            keys.create_key(session, "root", "read")
        with pytest.raises(TenantNotFound):
            keys.create_key(session, "x", "read", ["nope"])
        with pytest.raises(InvalidInput, match="role"):
            keys.create_key(session, "y", "superuser")
    assert clear.startswith("ftd_") and keys.split_key(clear) == row.key_id
    with sessions() as session:
        stored = session.scalars(select(ApiKey).where(ApiKey.name == "svc-a")).one()
        assert stored.key_hash == hashlib.sha256(clear.encode()).hexdigest()
        assert clear not in repr([tuple(r) for r in session.execute(select(ApiKey.__table__))])
        principal = keys.verify(clear, keys.load_key(session, row.key_id))
        assert principal is not None and principal.tenant_ids == frozenset({acme.id})
        assert principal.allows(KeyRole.SERVE) and not principal.allows(KeyRole.READ)
        wrong = clear[:-1] + ("y" if clear.endswith("x") else "x")  # a random key may end in x
        assert keys.verify(wrong, keys.load_key(session, row.key_id)) is None
        assert keys.verify(clear, None) is None
        listed = {k.name: k for k in keys.list_keys(session)}
        assert listed["svc-a"].tenants == ("acme",) and listed["root"].tenants is None
        admin_key = keys.load_key(session, keys.split_key(admin) or "")
        assert admin_key is not None and admin_key.principal.allows(KeyRole.OPERATE)
    with sessions() as session, session.begin():
        keys.revoke_key(session, "svc-a")
        keys.revoke_key(session, "svc-a")  # idempotent
    with sessions() as session:
        assert keys.verify(clear, keys.load_key(session, row.key_id)) is None
