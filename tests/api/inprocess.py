"""The app in process, for protocol tests: a real data dir and database, chosen engines, an API
key, Starlette's test client, and an `httpx.Client` over it that the SDKs take as their
`http_client`."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.testclient import TestClient

from glmaas.api.app import create_app
from glmaas.config import Settings
from glmaas.engines.base import Engine
from glmaas.engines.registry import ModelRegistry
from glmaas.platform import admin
from glmaas.platform.accounts import ensure_account
from glmaas.server import build_state

BASE_URL = "http://testserver"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class _ThroughTestClient(httpx.BaseTransport):
    """An httpx transport that hands each request to the app through Starlette's test client
    (which may be built on another httpx major version than the SDKs)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.request(request.method, str(request.url), headers=list(request.headers.multi_items()),
                                     content=request.read())
        return httpx.Response(answer.status_code, headers=list(answer.headers.multi_items()), content=answer.content)


class InProcess:
    """An app serving `engines` in this process."""

    def __init__(self, data_dir: Path, *engines: Engine) -> None:
        self.state = build_state(Settings(data_dir=data_dir, default_model=False))
        self.state.registry = ModelRegistry({e.info.model_id: e for e in engines})
        with self.state.db.session() as session, session.begin():
            ensure_account(session, "default")
            _, self.key = admin.new_key(session, self.state.box, "default", admin.KeyOptions(name="tests"))
        self.client = TestClient(create_app(self.state), base_url=BASE_URL,
                                 headers={"Authorization": f"Bearer {self.key}"})
        self.http = httpx.Client(transport=_ThroughTestClient(self.client), base_url=BASE_URL)

    openai_url = f"{BASE_URL}/v1"
    zhipu_url = f"{BASE_URL}/api/paas/v4"

    def close(self) -> None:
        self.http.close()
        self.client.close()
        self.state.db.dispose()
