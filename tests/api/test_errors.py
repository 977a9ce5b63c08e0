"""Bad input gets a clear 4xx in the caller's dialect; the server stays up.

The app runs in this process; a body streamed without a length, which the server must refuse
before reading it all, goes to a `glmaas serve` process."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MOCK_MODELS, Server, ServerUnderTest
from tests.inprocess import AppServer

PATHS = {"openai": "/v1/chat/completions", "zhipu": "/api/paas/v4/chat/completions"}
GOOD = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory):
    server = AppServer(tmp_path_factory.mktemp("errors"), *MOCK_MODELS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app_key(app_server: AppServer) -> str:
    return app_server.create_key("--name", "tests")


def _post(server: ServerUnderTest, dialect: str, key: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with server.client(timeout=10) as client:
        return client.post(PATHS[dialect], headers=headers, **kwargs)


def _assert_shape(r: httpx.Response, dialect: str, status: int, zhipu_code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    if dialect == "zhipu":
        assert set(err) == {"code", "message"}
        assert err["code"] == zhipu_code
    else:
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error"
    assert "Traceback" not in r.text
    return err


@pytest.mark.parametrize("dialect", ["openai", "zhipu"])
@pytest.mark.parametrize(
    "content, zhipu_code",
    [
        (b"{not json", "1210"),
        (b"", "1210"),
        (b"[1, 2]", "1210"),
        (b'"just a string"', "1210"),
        (b"\xff\xfe\x00garbage", "1210"),
        (b'{"model": "mock"}', "1213"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "1213"),
        (b'{"model": "mock", "messages": "hello"}', "1214"),
        (b'{"model": "mock", "messages": []}', "1214"),
        (b'{"model": "mock", "messages": [{"role": "wizard", "content": "x"}]}', "1214"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "1214"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}', "1214"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "n": 3}', "1214"),
        (b'{"model": "mock", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', "1214"),
    ],
)
def test_malformed_bodies_are_400(app_server: AppServer, app_key: str, dialect: str,
                                  content: bytes, zhipu_code: str) -> None:
    r = _post(app_server, dialect, app_key, content=content)
    _assert_shape(r, dialect, 400, zhipu_code)
    assert app_server.alive()


@pytest.mark.parametrize("dialect", ["openai", "zhipu"])
def test_nulls_are_absent_and_unknown_fields_ignored(app_server: AppServer, app_key: str, dialect: str) -> None:
    body = {**GOOD, "response_format": None, "thinking": None, "temperature": None,
            "stop": None, "frobnicate": {"x": 1}, "presence_penalty": 0.5}
    r = _post(app_server, dialect, app_key, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == r.json()["request_id"]


@pytest.mark.parametrize("dialect", ["openai", "zhipu"])
def test_text_parts_content_is_accepted(app_server: AppServer, app_key: str, dialect: str) -> None:
    body = {"model": "mock", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert _post(app_server, dialect, app_key, json=body).status_code == 200


@pytest.mark.parametrize("dialect", ["openai", "zhipu"])
def test_missing_key_is_401(app_server: AppServer, dialect: str) -> None:
    with app_server.client() as client:
        r = client.post(PATHS[dialect], json=GOOD)
    assert r.status_code == 401
    if dialect == "zhipu":
        assert r.json()["error"]["code"] == "1001"
        assert r.headers["x-should-retry"] == "false"
    else:
        assert r.json()["error"]["code"] == "missing_api_key"


def test_revoked_key_is_refused_at_once(app_server: AppServer) -> None:
    key = app_server.create_key("--name", "to-revoke")
    assert _post(app_server, "openai", key, json=GOOD).status_code == 200
    app_server.cli("keys", "revoke", key.split(".")[0])
    import time

    time.sleep(1.1)  # the key cache's lifetime
    r = _post(app_server, "zhipu", key, json=GOOD)
    assert r.status_code == 401 and r.json()["error"]["code"] == "1000"


def test_key_restricted_to_models(app_server: AppServer) -> None:
    key = app_server.create_key("--models", "slow")
    r = _post(app_server, "zhipu", key, json=GOOD)
    assert r.status_code == 403 and r.json()["error"]["code"] == "1220"
    r = _post(app_server, "openai", key, json=GOOD)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"


@pytest.mark.parametrize("dialect", ["openai", "zhipu"])
def test_oversized_body_by_content_length_is_413(app_server: AppServer, app_key: str, dialect: str) -> None:
    r = _post(app_server, dialect, app_key, content=b"x" * (5 * 1024 * 1024))
    _assert_shape(r, dialect, 413, "1210")


def test_oversized_chunked_body_is_refused_before_reading_it_all(mock_server: Server, api_key: str) -> None:
    sent = 0

    def body():  # type: ignore[no-untyped-def]
        nonlocal sent
        for _ in range(1000):  # up to 64 MiB, far more than the server accepts
            sent += 65536
            yield b"x" * 65536

    try:
        r = httpx.post(mock_server.base_url + PATHS["zhipu"], content=body(),
                       headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
        assert r.status_code == 413
    except httpx.HTTPError:
        pass  # the server may close the connection while we are still sending
    assert sent < 64 * 1024 * 1024
    assert mock_server.alive()
    assert _post(mock_server, "openai", api_key, json=GOOD).status_code == 200


@pytest.mark.parametrize("dialect", ["openai", "zhipu"])
def test_unknown_route_is_404_in_dialect(app_server: AppServer, app_key: str, dialect: str) -> None:
    path = "/v1/nothing" if dialect == "openai" else "/api/paas/v4/nothing"
    with app_server.client() as client:
        r = client.get(path, headers={"Authorization": f"Bearer {app_key}"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert ("code" in err) and (("type" in err) == (dialect == "openai"))
