"""Requests generated from the app's own /openapi.json (schemathesis, in process, a bounded number
of examples per operation): the same property as the hand-made strategies of
`tests/fuzz_helpers.py`, for every route the schema describes."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from glmaas.api.dialects import dialect_of
from tests.fuzz_helpers import InProcessApi, Target, assert_answered


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    api = InProcessApi(tmp_path_factory.mktemp("openapi-fuzz"))
    yield api
    api.assert_still_answers()
    api.close()


def test_the_schema_describes_both_chat_routes_and_hides_admin(api: InProcessApi) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for path in ("/v1/chat/completions", "/api/paas/v4/chat/completions"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert not [p for p in paths if p.startswith("/admin")]
    admin = api.client.get("/openapi.json", headers={"Authorization": f"Bearer {api.state.admin_token}"})
    assert [p for p in admin.json()["paths"] if p.startswith("/admin")]


def test_every_documented_operation(api: InProcessApi) -> None:
    # Operation by operation from the schema the app serves (not the pytest plugin's lazy
    # fixture loader, which does not run under this pytest).
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/api/paas/v4/chat/completions"}
    for operation in operations:
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def answered_well(case) -> None:  # type: ignore[no-untyped-def]
            before = api.books()
            got = case.call(headers={"Authorization": f"Bearer {api.key}"})
            response = httpx.Response(got.status_code, content=got.content,
                                      headers=[(k, v) for k, values in got.headers.items() for v in values])
            assert_answered(api, Target(case.path, dialect_of(case.path).name, {}), response, before)
            # The answer is what the schema says it is (status, content type, body). Not checked:
            # that every schema-valid body is accepted, since JSON Schema cannot say all the edge
            # refuses (lone surrogates, which it allows in strings; content parts other than text).
            case.validate_response(got, excluded_checks=[positive_data_acceptance])

        answered_well()
