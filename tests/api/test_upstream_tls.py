"""An upstream behind HTTPS: glmaas's own connection pool verifies the upstream's certificate
against the trust store (`SSL_CERT_FILE` names a private CA), streams and whole replies come
through it, and an upstream whose certificate the store does not vouch for is refused rather than
trusted."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from glmaas.benchmarks.harness import free_port
from tests.api.billing_helpers import funded_key, price_all
from tests.conftest import Server, start_server


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
                 *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a certificate for 127.0.0.1 that it signed, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("glmaas test CA", ca_key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "glmaas test CA")]),
                           ca_key, ca=True)
    leaf_cert = _certificate("127.0.0.1", leaf_key, ca_cert.subject, ca_key, ca=False)
    files = {"ca": folder / "ca.pem", "cert": folder / "upstream.pem", "key": folder / "upstream.key"}
    files["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return files


def _chunk(delta: dict, finish: str | None = None) -> str:
    body = {"id": "tls", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


async def _chat(request: Request) -> StreamingResponse | JSONResponse:
    body = await request.json()
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    if not body.get("stream"):
        return JSONResponse({"id": "tls", "object": "chat.completion", "model": "tls", "usage": usage,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                          "finish_reason": "stop"}]})

    async def events():  # type: ignore[no-untyped-def]
        yield _chunk({"role": "assistant"})
        yield _chunk({"content": "Hel"})
        yield _chunk({"content": "lo"}, "stop")
        yield f"data: {json.dumps({'id': 'tls', 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "tls", "object": "model"}]})


@pytest.fixture(scope="module")
def upstream(pki: dict[str, Path]) -> Iterator[str]:
    """An OpenAI-compatible upstream on HTTPS (uvicorn on a thread); its base URL."""
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"]), Route("/v1/models", _models)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(pki["cert"]), ssl_keyfile=str(pki["key"])))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the TLS upstream did not start"
        time.sleep(0.05)
    assert httpx.get(f"{url}/models", verify=ssl.create_default_context(cafile=pki["ca"])).status_code == 200
    yield url
    server.should_exit = True
    thread.join(10)


def _front(folder: Path, upstream: str, trust: dict[str, str]) -> Server:
    server = start_server(folder, "--no-default-model", "--model", f"tls-up=openai+{upstream},model=tls", env=trust)
    price_all(server, "tls-up")
    return server


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory, upstream: str, pki: dict[str, Path]) -> Iterator[Server]:
    server = _front(tmp_path_factory.mktemp("trusting"), upstream, {"SSL_CERT_FILE": str(pki["ca"])})
    yield server
    server.stop()


BODY = {"model": "tls-up", "messages": [{"role": "user", "content": "hi"}]}


def test_a_stream_and_a_whole_reply_come_through_a_verified_https_upstream(trusting: Server) -> None:
    headers = {"Authorization": f"Bearer {funded_key(trusting, 'tls', '1')}"}
    with httpx.Client(timeout=30) as client:
        whole = client.post(f"{trusting.openai_url}/chat/completions", json=BODY, headers=headers)
        assert whole.status_code == 200, whole.text
        assert whole.json()["choices"][0]["message"]["content"] == "Hello"
        assert whole.json()["usage"]["completion_tokens"] == 2
        with client.stream("POST", f"{trusting.openai_url}/chat/completions", json={**BODY, "stream": True},
                           headers=headers) as response:
            assert response.status_code == 200
            text = "".join((json.loads(line[6:]).get("choices") or [{}])[0].get("delta", {}).get("content") or ""
                           for line in response.iter_lines() if line.startswith("data: {"))
    assert text == "Hello"


def test_an_upstream_certificate_the_trust_store_does_not_vouch_for_is_refused(
        tmp_path_factory: pytest.TempPathFactory, upstream: str) -> None:
    # The default trust store (certifi's) knows nothing of the private CA.
    server = _front(tmp_path_factory.mktemp("doubting"), upstream, {"SSL_CERT_FILE": ""})
    try:
        key = funded_key(server, "tls", "1")
        r = httpx.post(f"{server.openai_url}/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"},
                       timeout=30)
        zhipu = httpx.post(f"{server.zhipu_url}/chat/completions", json=BODY,
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)
    finally:
        server.stop()
    # Answered as any unreachable upstream is (unavailable, try again later), and the operator's
    # log says why.
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    assert int(r.headers["retry-after"]) >= 1 and r.headers["x-should-retry"] == "true"
    assert zhipu.status_code == 503 and zhipu.json()["error"]["code"] == "1305"  # "overloaded, retry later"
    assert "Hello" not in r.text
    assert "CERTIFICATE_VERIFY_FAILED" in server.log.read_text()
