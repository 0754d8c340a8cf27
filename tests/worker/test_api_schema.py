"""Schemathesis against the live server's /openapi.json: for every operation, a bounded number of
generated requests (valid ones, then invalid ones) with an admin key; no 5xx, and every response
matches the documented schema, status codes, content types and headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.worker.api_stack import ApiStack, add_tenant, api_stack

pytestmark = pytest.mark.e2e
EXAMPLES = 12  # per operation and mode: bounded, the suite's time is shared
# What is promised: no 5xx, and every answer as documented. (Whether a schema-valid request is
# accepted is not: the registry refuses values by rules a schema cannot state, e.g. a deadline
# that must exceed the stored bake time.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiStack]:
    with api_stack(
        request,
        tmp_path_factory.mktemp("schema"),
        # Generated notification endpoints can be stored; a generated test send gives up soon.
        notify_encryption_key="schema-key",
        notify_timeout_seconds=1,
    ) as stack:
        add_tenant("acme", versions=2)
        stack.key("admin", "admin")
        yield stack


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_matches_its_schema(api: ApiStack, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    # The stream never ends by design (its test reads it); everything else is generated.
    schema = schema.exclude(path="/v1/stream")
    headers = {"Authorization": f"Bearer {api.keys['admin']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 28
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS)

        try:
            check()
        except Exception as error:
            log = api.server.log()[-3000:]
            raise AssertionError(f"{operation.label} ({mode}): {error}\n{log}") from None
