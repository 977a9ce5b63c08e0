"""The Authenticator against a real SQLite file: raw keys, JWTs as the Zhipu SDKs sign them."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from glmaas.platform.accounts import ensure_account
from glmaas.platform.admin_token import ADMIN_TOKEN_ENV, load_admin_token
from glmaas.platform.auth import Authenticator
from glmaas.platform.errors import AuthError
from glmaas.platform.keys import create_key, revoke_key
from glmaas.platform.secrets import SecretBox, load_master_key
from glmaas.store.db import open_database, sqlite_url


@pytest.fixture()
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = open_database(sqlite_url(tmp_path))
    box = SecretBox(load_master_key(tmp_path))
    with db.session() as s, s.begin():
        row, key = create_key(s, box, ensure_account(s, "acme"), name="k")
    clock = [time.time()]
    auth = Authenticator(db.session, box, cache_ttl=0.0, clock=lambda: clock[0])
    return db, auth, key, clock


def _sdk_jwt(key: str, now: float, ttl_s: float = 210) -> str:
    key_id, secret = key.split(".")
    payload = {"api_key": key_id, "exp": int(now * 1000 + ttl_s * 1000), "timestamp": int(now * 1000)}
    return jwt.encode(payload, secret, algorithm="HS256", headers={"alg": "HS256", "sign_type": "SIGN"})


@pytest.mark.parametrize("prefix", ["Bearer ", "bearer ", ""])
def test_raw_key_with_or_without_bearer(setup, prefix: str) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, _ = setup
    assert auth.authenticate(prefix + key).key_id == key.split(".")[0]


@pytest.mark.parametrize("prefix", ["Bearer ", ""])
def test_sdk_jwt_with_millisecond_exp(setup, prefix: str) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, clock = setup
    assert auth.authenticate(prefix + _sdk_jwt(key, clock[0])).key_id == key.split(".")[0]


def test_jwt_with_seconds_exp_is_accepted(setup) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, clock = setup
    key_id, secret = key.split(".")
    token = jwt.encode({"api_key": key_id, "exp": int(clock[0]) + 100}, secret, algorithm="HS256")
    assert auth.authenticate(token).key_id == key_id


def test_jwt_expires_after_leeway(setup) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, clock = setup
    token = _sdk_jwt(key, clock[0], ttl_s=10)
    clock[0] += 10 + 59
    auth.authenticate(token)
    clock[0] += 2
    with pytest.raises(AuthError) as info:
        auth.authenticate(token)
    assert info.value.failure == "expired"


@pytest.mark.parametrize("header", [None, "", "Bearer ", "Bearer a.b.c.d", "Bearer nodots", "Bearer x.y.z"])
def test_garbage_credentials(setup, header) -> None:  # type: ignore[no-untyped-def]
    _, auth, _, _ = setup
    with pytest.raises(AuthError) as info:
        auth.authenticate(header)
    assert info.value.failure in {"missing", "malformed"}


def test_wrong_secret_and_unknown_id_look_the_same(setup) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, _ = setup
    key_id = key.split(".")[0]
    messages = set()
    for cred in (f"{key_id}.wrong", f"{'0' * 32}.wrong"):
        with pytest.raises(AuthError) as info:
            auth.authenticate(cred)
        messages.add(str(info.value))
    assert len(messages) == 1


def test_revoked_key_fails(setup) -> None:  # type: ignore[no-untyped-def]
    db, auth, key, _ = setup
    with db.session() as s, s.begin():
        revoke_key(s, key.split(".")[0])
    with pytest.raises(AuthError):
        auth.authenticate(key)


def test_master_key_file_is_private_and_stable(tmp_path: Path) -> None:
    first = load_master_key(tmp_path)
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert load_master_key(tmp_path) == first


def test_admin_token_file_is_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    data_dir = tmp_path / "not-yet-there"
    first = load_admin_token(data_dir)
    assert (data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    assert load_admin_token(data_dir) == first


def test_secret_not_stored_in_clear(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, _, key, _ = setup
    db.dispose()
    secret = key.split(".")[1].encode()
    for f in tmp_path.glob("glmaas.db*"):
        assert secret not in f.read_bytes()
