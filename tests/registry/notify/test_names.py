"""Endpoint names are unique per owner: one tenant's `slack` and another's (and a global one)
live side by side; a name is found among the endpoints the caller sees, with its owner when it
sees more than one of that name (refused otherwise, changing nothing); another tenant's name is
never an obstacle nor told of."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from registry import clock
from registry.db import session_factory
from registry.errors import InvalidInput, TenantNotFound
from registry.notify import delivery, endpoints, probe, replay
from registry.notify.errors import EndpointAmbiguous, EndpointExists, EndpointNotFound
from registry.notify.models import NotificationEndpoint
from registry.notify.outbox import emit
from registry.notify.owners import GLOBAL, find_endpoint, owner_of
from registry.notify.types import EventType
from tests.factories import make_tenant
from tests.registry.notify.support import add, answered, deliveries, next_due, record

URL = "https://hooks.example.com/t0k3n"


def _tenants(sessions: sessionmaker[Session], *slugs: str) -> list[uuid.UUID]:
    with sessions() as session, session.begin():
        return [make_tenant(session, slug).id for slug in slugs]


def _slacks(sessions: sessionmaker[Session]) -> dict[str | None, uuid.UUID]:
    """A `slack` endpoint for acme, one for beta and a global one: their ids by tenant slug."""
    return {
        tenant: add(sessions, "slack", **({"tenant_ref": tenant} if tenant else {})).endpoint.id
        for tenant in ("acme", "beta", None)
    }


def _state(sessions: sessionmaker[Session]) -> list[tuple[object, ...]]:
    with sessions() as session:
        return [
            (e.id, e.tenant_id, e.name, e.enabled, e.disabled_reason)
            for e in session.scalars(select(NotificationEndpoint).order_by(NotificationEndpoint.id))
        ]


def test_one_name_in_two_tenants_and_globally(sessions: sessionmaker[Session]) -> None:
    acme, beta = _tenants(sessions, "acme", "beta")
    ids = _slacks(sessions)
    with sessions() as session, session.begin():
        listed = [(e["name"], e["tenant"]) for e in endpoints.list_endpoints(session)]
        assert sorted(listed, key=str) == sorted(
            [("slack", "acme"), ("slack", "beta"), ("slack", None)], key=str
        )
        # The owner picks one; a scoped caller needs none for the one it sees.
        assert find_endpoint(session, "slack", owner="acme").id == ids["acme"]
        assert find_endpoint(session, "slack", owner=beta).id == ids["beta"]
        assert find_endpoint(session, "slack", owner=GLOBAL).id == ids[None]
        assert find_endpoint(session, "slack", visible={acme}).id == ids["acme"]
        assert find_endpoint(session, "slack", owner="acme", visible={acme}).id == ids["acme"]
        assert endpoints.show_endpoint(session, "slack", visible={beta})["tenant"] == "beta"
        assert endpoints.show_endpoint(session, "slack", owner=GLOBAL)["tenant"] is None
        with pytest.raises(EndpointNotFound, match="not found: 'slack'"):
            find_endpoint(session, "slack", visible=set())


def test_a_name_taken_only_by_the_same_owner(sessions: sessionmaker[Session]) -> None:
    acme, _ = _tenants(sessions, "acme", "beta")
    _slacks(sessions)
    with sessions() as session, session.begin():
        for options in ({"tenant_ref": "acme"}, {"tenant_ref": "beta"}, {}):
            with pytest.raises(EndpointExists, match="already exists: 'slack'"):
                endpoints.add_endpoint(session, "slack", URL, **options)  # type: ignore[arg-type]
        with pytest.raises(EndpointExists):
            endpoints.add_endpoint(session, "slack", URL, tenant_ref="acme", visible={acme})
    assert len(_state(sessions)) == 3


def test_a_scoped_caller_adds_a_name_another_tenant_holds_as_a_fresh_one(
    sessions: sessionmaker[Session],
) -> None:
    acme, beta = _tenants(sessions, "acme", "beta")
    add(sessions, "slack", tenant_ref="beta")
    add(sessions, "pager")  # global
    answers = {}
    for name in ("slack", "pager", "fresh"):
        with sessions() as session, session.begin():
            added = endpoints.add_endpoint(session, name, URL, tenant_ref="acme", visible={acme})
            record_ = endpoints.added_record(session, added)
        assert record_["secret"].startswith("whsec_")
        answers[name] = {k: v for k, v in record_.items() if k not in ("name", "secret")}
        answers[name].pop("created_at")
    assert answers["slack"] == answers["pager"] == answers["fresh"]
    with sessions() as session:
        assert endpoints.show_endpoint(session, "slack", visible={beta})["tenant"] == "beta"
        assert endpoints.show_endpoint(session, "slack", visible={acme})["tenant"] == "acme"


def test_a_name_held_twice_is_refused_until_the_owner_is_named(
    sessions: sessionmaker[Session],
) -> None:
    acme, beta = _tenants(sessions, "acme", "beta")
    ids = _slacks(sessions)
    before = _state(sessions)
    calls = [
        lambda s, **o: endpoints.show_endpoint(s, "slack", **o),
        lambda s, **o: endpoints.deliveries(s, "slack", **o),
        lambda s, **o: endpoints.enable_endpoint(s, "slack", **o),
        lambda s, **o: endpoints.disable_endpoint(s, "slack", actor="ops", **o),
        lambda s, **o: endpoints.remove_endpoint(s, "slack", **o),
        lambda s, **o: replay.replay(s, "slack", **o),
        lambda s, **o: probe.prepare(s, "slack", **o),
    ]
    for call in calls:
        with sessions() as session, session.begin():
            with pytest.raises(EndpointAmbiguous) as every:
                call(session)
            with pytest.raises(EndpointAmbiguous) as scoped:
                call(session, visible={acme, beta})
    # Every owner the caller sees, and how to say which; none it does not see.
    assert str(every.value) == (
        "notification endpoint name 'slack' is held by more than one owner (the global "
        "endpoints, tenant 'acme', tenant 'beta'): name its tenant (--tenant SLUG; over HTTP "
        "?tenant=SLUG) or ask for the global one (--global; ?global=true)"
    )
    assert every.value.tenants == [None, "acme", "beta"]
    assert scoped.value.tenants == ["acme", "beta"]
    assert _state(sessions) == before  # nothing changed
    with sessions() as session, session.begin():
        endpoints.disable_endpoint(session, "slack", actor="ops", owner="beta")
        endpoints.remove_endpoint(session, "slack", owner=GLOBAL)
    after = {row[0]: row for row in _state(sessions)}
    assert set(after) == {ids["acme"], ids["beta"]}
    assert after[ids["acme"]][3] is True and after[ids["beta"]][3] is False


def test_an_owner_outside_the_callers_scope_is_as_absent(sessions: sessionmaker[Session]) -> None:
    acme, _ = _tenants(sessions, "acme", "beta")
    _slacks(sessions)
    with sessions() as session, session.begin():
        with pytest.raises(TenantNotFound) as hidden:
            find_endpoint(session, "slack", owner="beta", visible={acme})
        with pytest.raises(TenantNotFound) as absent:
            find_endpoint(session, "slack", owner="nobody", visible={acme})
        assert str(hidden.value).replace("beta", "X") == str(absent.value).replace("nobody", "X")
        with pytest.raises(EndpointNotFound) as global_one:
            find_endpoint(session, "slack", owner=GLOBAL, visible={acme})
        with pytest.raises(EndpointNotFound) as nothing:
            find_endpoint(session, "nobody-hook", owner=GLOBAL, visible={acme})
        assert str(global_one.value).replace("slack", "X") == str(nothing.value).replace(
            "nobody-hook", "X"
        )
        with pytest.raises(TenantNotFound):
            find_endpoint(session, "slack", owner="acme", visible=set())
    with pytest.raises(InvalidInput, match="not both"):
        owner_of("acme", True)
    assert owner_of(None, True) is GLOBAL and owner_of("acme", False) == "acme"
    assert owner_of(None, False) is None


def test_a_disabled_notice_is_about_its_own_endpoint_only(sessions: sessionmaker[Session]) -> None:
    """The global `slack` missed the notice that acme's `slack` was disabled: replayed, it gets
    it (the same name, another owner); acme's own notice is never replayed to acme's `slack`."""
    [acme] = _tenants(sessions, "acme")
    acme_slack = add(sessions, "slack", tenant_ref="acme").endpoint
    add(sessions, "slack")
    with sessions() as session, session.begin():
        endpoints.disable_endpoint(session, "slack", actor="ops", owner=GLOBAL)
        emit(session, acme, EventType.TENANT_PAUSED, {"n": 1})
    now = clock.now()
    outgoing = next_due(sessions, acme_slack.id, now)
    assert outgoing is not None
    assert record(sessions, outgoing, answered(410), now).disabled  # and the notice is written
    with sessions() as session, session.begin():
        for owner in (GLOBAL, "acme"):
            endpoints.enable_endpoint(session, "slack", owner=owner)
    with sessions() as session, session.begin():
        everyone = replay.replay(session, "slack", owner=GLOBAL, since="2h")
        own = replay.replay(session, "slack", owner="acme", since="2h")
    assert len(everyone.missed) == 2  # the pause and acme's slack's notice
    assert own.missed == []
    assert len(deliveries(sessions, acme_slack.id)) == 1


def test_the_backlog_tells_endpoints_of_one_name_apart(sessions: sessionmaker[Session]) -> None:
    _tenants(sessions, "acme", "beta")
    _slacks(sessions)
    with sessions() as session, session.begin():
        endpoints.disable_endpoint(session, "slack", actor="ops", owner="beta")
        rows = delivery.backlog(session, clock.now())
    # The global slack is told that beta's was disabled (one pending); acme's hears nothing.
    assert sorted(((n, o, on, p) for n, o, on, p, _ in rows), key=str) == sorted(
        [("slack", "acme", True, 0), ("slack", "beta", False, 0), ("slack", None, True, 1)],
        key=str,
    )


def test_two_adds_racing_for_one_name_keep_one_and_refuse_the_other(pg_url: str) -> None:
    """The second add checked before the first committed: the unique index decides, and the
    loser is told the name exists (not a database error)."""
    sessions = session_factory(pg_url)
    _tenants(sessions, "acme")
    outcome: list[BaseException | None] = []
    with sessions() as first, first.begin():
        endpoints.add_endpoint(first, "slack", URL, tenant_ref="acme")  # flushed, not committed

        def second() -> None:
            try:
                with sessions() as session, session.begin():
                    endpoints.add_endpoint(session, "slack", URL, tenant_ref="acme")
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)

        racer = threading.Thread(target=second)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waiting on the first one's index entry
    racer.join(10)
    [error] = outcome
    assert isinstance(error, EndpointExists), error
    assert len(_state(sessions)) == 1
