"""The one set of input rules: each accepts the canonical forms and refuses the rest, naming the
field; the doors that share a rule agree on it."""

from __future__ import annotations

import uuid

import pytest

from registry import validation
from registry.errors import InvalidInput
from registry.models import Strategy

TENANT_ID = "6f1c2a9e-3b4d-4c5e-8f70-1a2b3c4d5e6f"


@pytest.mark.parametrize("text", ["ftjob-abc", "ft:gpt-4o:acme::x", "a.b_c-d", "x" * 200])
def test_openai_ids(text: str) -> None:
    assert validation.is_openai_id(text) and validation.job_id(text) == text


@pytest.mark.parametrize("value", ["", ".", "..", "a" * 201, "a b", "a/b", None, 7])
def test_not_openai_ids(value: object) -> None:
    assert not validation.is_openai_id(value)
    with pytest.raises(InvalidInput) as refused:
        validation.job_id(value)
    assert refused.value.field == "job_id"


def test_tenant_names() -> None:
    assert validation.tenant_slug("acme-2") == "acme-2"
    assert validation.tenant_ref(TENANT_ID) == TENANT_ID
    assert validation.tenant_ref(uuid.UUID(TENANT_ID)) == TENANT_ID
    assert validation.optional_tenant_ref(None) is None
    assert validation.optional_tenant_ref("") is None
    assert validation.optional_tenant_ref(TENANT_ID) == TENANT_ID
    for bad in ("Acme", "-acme", "a" * 64, "a_b", 3):
        with pytest.raises(InvalidInput):
            validation.tenant_slug(bad)
        with pytest.raises(InvalidInput):
            validation.tenant_ref(bad)
        with pytest.raises(InvalidInput):
            validation.optional_tenant_ref(bad)


def test_uuids() -> None:
    assert validation.as_uuid(TENANT_ID) == uuid.UUID(TENANT_ID)
    assert validation.as_uuid("not-an-id") is None and validation.as_uuid(42) is None
    with pytest.raises(InvalidInput, match="operation id"):
        validation.uuid_id([1], "operation id")


def test_numbers_and_percents() -> None:
    assert validation.whole_number("n", 0, 0) == 0
    assert validation.traffic_percent(100) == 100
    assert validation.canary_percent(99) == 99
    assert validation.version_number("v3") == validation.version_number("3") == 3
    for call, value in (
        (validation.traffic_percent, 0),
        (validation.traffic_percent, 101),
        (validation.traffic_percent, True),
        (validation.traffic_percent, 12.5),
        (validation.canary_percent, 100),
        (validation.version_number, "v0"),
        (validation.version_number, "3.0"),
        (validation.version_number, True),
    ):
        with pytest.raises(InvalidInput):
            call(value)  # type: ignore[operator]


def test_enum_members() -> None:
    assert validation.one_of("strategy", "canary", Strategy) is Strategy.CANARY
    with pytest.raises(InvalidInput, match="immediate, canary, blue_green"):
        validation.one_of("strategy", "rolling", Strategy)
