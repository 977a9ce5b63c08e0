"""What an embedding request costs when it fails or runs out of time: nothing, and exactly one
settlement (in process, with faults put into the model's forward pass)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from glmaas.engines.registry import default_embedding_folder
from tests.api.billing_helpers import (
    assert_books_balance,
    balance_micro,
    funded_key,
    price_all,
)
from tests.inprocess import AppServer

MODEL = "minilm"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    srv = AppServer(tmp_path_factory.mktemp("embedding-billing"), "--no-default-model",
                    "--model", f"{MODEL}=sentence:{default_embedding_folder()}")
    price_all(srv, MODEL)
    yield srv
    srv.stop()


@pytest.fixture()
def encoder(server: AppServer):  # type: ignore[no-untyped-def]
    """The served model; its forward pass is put back after each test."""
    model = server.app.state.glmaas.registry.embedder(MODEL)
    forward = model.batcher.forward
    yield model
    model.batcher.forward = forward


def embed(server: AppServer, key: str, request_id: str):  # type: ignore[no-untyped-def]
    with server.client(headers={"Authorization": f"Bearer {key}"}) as client:
        return client.post("/api/paas/v4/embeddings",
                           json={"model": MODEL, "input": ["one", "two"], "request_id": request_id})


def test_a_finished_request_costs_its_input(server: AppServer) -> None:
    key = funded_key(server, "emb-ok", "1")
    r = embed(server, key, "emb-ok-1")
    assert r.status_code == 200
    assert 1_000_000 - balance_micro(server, "emb-ok") == 2 * r.json()["usage"]["prompt_tokens"]
    assert server.wait_usage("emb-ok-1")["status"] == "ok"
    assert_books_balance(server)


def test_a_failed_forward_pass_costs_nothing(server: AppServer, encoder) -> None:  # type: ignore[no-untyped-def]
    def broken(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise RuntimeError("the forward pass broke")

    encoder.batcher.forward = broken
    key = funded_key(server, "emb-fault", "1")
    r = embed(server, key, "emb-fault-1")
    assert r.status_code == 500 and r.json()["error"]["code"] == "1234"
    assert server.wait_usage("emb-fault-1")["status"] == "error"
    assert balance_micro(server, "emb-fault") == 1_000_000
    assert_books_balance(server)


def test_a_request_past_the_time_limit_costs_nothing(server: AppServer, encoder) -> None:  # type: ignore[no-untyped-def]
    forward = encoder.batcher.forward

    def slow(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        time.sleep(0.5)
        return forward(ids, mask)

    encoder.batcher.forward = slow
    state = server.app.state.glmaas
    limit, state.request_timeout = state.request_timeout, 0.1
    try:
        key = funded_key(server, "emb-slow", "1")
        r = embed(server, key, "emb-slow-1")
    finally:
        state.request_timeout = limit
    assert r.status_code == 500 and "limit" in r.json()["error"]["message"]
    assert server.wait_usage("emb-slow-1")["status"] == "timeout"
    assert balance_micro(server, "emb-slow") == 1_000_000
    assert_books_balance(server)
