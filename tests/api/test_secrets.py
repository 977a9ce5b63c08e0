"""No secret in clear at rest, in logs or in errors."""

from __future__ import annotations

import time

import httpx
import jwt

from tests.api.billing_helpers import admin, funded_key
from tests.conftest import start_server

BODY = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def test_no_secret_in_database_logs_or_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(tmp_path / "secrets", "--no-default-model", "--model", "mock=mock")
    try:
        keys = [funded_key(server, f"acct{i}", "1") for i in range(3)]
        keys.append(server.create_key("--name", "cli"))
        bodies = []
        for key in keys:
            key_id, secret = key.split(".")
            now = int(time.time() * 1000)
            token = jwt.encode({"api_key": key_id, "exp": now + 60_000, "timestamp": now}, secret,
                               algorithm="HS256", headers={"sign_type": "SIGN"})
            for cred in (key, token, f"{key_id}.{secret}x", f"{token}x"):
                for url in (server.zhipu_url, server.openai_url):
                    r = httpx.post(f"{url}/chat/completions", json=BODY, headers={"Authorization": f"Bearer {cred}"})
                    bodies.append(r.text)
        with admin(server) as client:
            bodies.append(client.get("/admin/accounts/acct0").text)
        admin_token = (server.data_dir / "admin.token").read_text().strip()
        master = (server.data_dir / "master.key").read_text().strip()
    finally:
        server.stop()
    secrets = [k.split(".")[1] for k in keys] + [admin_token, master]
    stored = b"".join(p.read_bytes() for p in server.data_dir.glob("glmaas.db*"))
    logs = b"".join(p.read_bytes() for p in server.data_dir.glob("*.log"))
    for secret in secrets:
        assert secret.encode() not in stored
        assert secret.encode() not in logs
        assert not any(secret in body for body in bodies)
    assert (server.data_dir / "master.key").stat().st_mode & 0o777 == 0o600
    assert (server.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
