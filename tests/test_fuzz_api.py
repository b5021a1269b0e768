"""Schemathesis against the API's own OpenAPI (Swagger 2.0) document: whatever
it sends, no 500 and no answer that breaks the document.

The app is `create_app` with a real redis-server for the store and a real broker
(another database of it). No worker consumes that broker, so the tasks the fuzzer
manages to submit are stored and queued but never measured: nothing it invents
(host names, stream URIs) is ever contacted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi import checks

from camtester.api import create_app
from camtester.settings import Settings
from tests.fixtures.services import RedisServer, make_token, service_env

HEADERS = {"Authorization": f"Bearer {make_token(ttl_s=86400)}"}

#: The checks that say "no 500, and the answer is what the document says".
CONFORMANCE = [
    schemathesis.checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("fuzz-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_redis: RedisServer) -> Any:
    env = service_env(fuzz_redis.url(0), fuzz_redis.url(1))
    app = create_app(Settings.from_env(env))
    return schemathesis.openapi.from_wsgi("/swagger.json", app)


def fuzz_operation(operation: Any, max_examples: int) -> str | None:
    """Run one operation's examples; the shrunk failure as text, or None."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.call_and_validate(headers=HEADERS, checks=CONFORMANCE)

    try:
        run()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - schemathesis raises exception groups
        return f"{operation.label}: {exc}"
    return None


def test_the_api_answers_every_request_as_its_document_says(api_schema: Any) -> None:
    # NOTE: schemathesis' pytest plugin (`from_fixture`) does not run under
    # pytest 9, so the operations are driven through hypothesis here.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    failures = [fuzz_operation(operation, 50) for operation in operations]

    assert len(operations) >= 10
    assert [f for f in failures if f] == []
