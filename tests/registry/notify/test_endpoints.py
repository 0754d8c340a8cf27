"""Endpoints as a caller limited to some tenants sees them (an HTTP key scoped to tenants): only
its tenants' endpoints, never a global one, another tenant's reported as absent; disabling by
hand; the record shown at creation (with the secret) and afterwards (without)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import InvalidInput, TenantNotFound
from registry.notify import endpoints
from registry.notify.errors import EndpointNotFound
from tests.factories import make_tenant
from tests.registry.notify.support import add


def test_a_scoped_caller_sees_only_its_tenants_endpoints(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        acme, beta = make_tenant(session, "acme").id, make_tenant(session, "beta").id
    add(sessions, "acme-hook", tenant_ref="acme")
    add(sessions, "beta-hook", tenant_ref="beta")
    add(sessions, "everyone")
    with sessions() as session, session.begin():
        assert [e["name"] for e in endpoints.list_endpoints(session)] == [
            "acme-hook",
            "beta-hook",
            "everyone",
        ]
        assert [e["name"] for e in endpoints.list_endpoints(session, visible={acme})] == [
            "acme-hook"
        ]
        assert endpoints.list_endpoints(session, visible=set()) == []
        with pytest.raises(TenantNotFound, match="'beta'"):
            endpoints.list_endpoints(session, "beta", visible={acme})
        for name in ("beta-hook", "everyone"):
            for call in (endpoints.show_endpoint, endpoints.enable_endpoint):
                with pytest.raises(EndpointNotFound, match=f"not found: '{name}'"):
                    call(session, name, visible={acme})
            with pytest.raises(EndpointNotFound):
                endpoints.deliveries(session, name, visible={acme})
            with pytest.raises(EndpointNotFound):
                endpoints.remove_endpoint(session, name, visible={acme})
            with pytest.raises(EndpointNotFound):
                endpoints.disable_endpoint(session, name, actor="x", visible={acme})
        assert endpoints.show_endpoint(session, "beta-hook", visible={beta})["tenant"] == "beta"


def test_a_scoped_caller_adds_only_for_its_tenants(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        acme = make_tenant(session, "acme").id
        make_tenant(session, "beta")
    url = "https://hooks.example.com/t0k3n"
    with sessions() as session, session.begin():
        with pytest.raises(InvalidInput, match="invalid tenant"):
            endpoints.add_endpoint(session, "mine", url, visible={acme})
        with pytest.raises(TenantNotFound, match="'beta'"):
            endpoints.add_endpoint(session, "mine", url, tenant_ref="beta", visible={acme})
        added = endpoints.add_endpoint(session, "mine", url, tenant_ref="acme", visible={acme})
        record = endpoints.added_record(session, added)
    assert record["secret"].startswith("whsec_") and record["tenant"] == "acme"
    assert record["url"] == "https://hooks.example.com/…" and record["pending"] == 0
    with sessions() as session:
        shown = endpoints.show_endpoint(session, "mine")
    assert shown == {k: v for k, v in record.items() if k != "secret"}


def test_disable_by_hand_keeps_the_first_reason(sessions: sessionmaker[Session]) -> None:
    add(sessions, "hook")
    with sessions() as session, session.begin():
        endpoints.disable_endpoint(session, "hook", actor="ops", reason="maintenance")
        endpoints.disable_endpoint(session, "hook", actor="someone-else")
        shown = endpoints.show_endpoint(session, "hook")
        assert shown["enabled"] is False and shown["disabled_at"]
        assert shown["disabled_reason"] == "disabled by ops: maintenance"
        with pytest.raises(InvalidInput, match="invalid reason"):
            endpoints.disable_endpoint(session, "hook", actor="ops", reason="x" * 501)
        endpoints.enable_endpoint(session, "hook")
        assert endpoints.show_endpoint(session, "hook")["disabled_reason"] is None
