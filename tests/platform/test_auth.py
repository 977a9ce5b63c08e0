"""The Authenticator against a real SQLite file: raw keys, JWTs as the Zhipu SDKs sign them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from pathlib import Path

import jwt
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from glmaas.platform.accounts import ensure_account
from glmaas.platform.admin_token import ADMIN_TOKEN_ENV, load_admin_token
from glmaas.platform.auth import (
    JWT_EARLIEST_S,
    JWT_LEEWAY_S,
    JWT_MAX_AHEAD_S,
    Authenticator,
)
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
    auth = Authenticator(db.engine, box, cache_ttl=0.0, clock=lambda: clock[0])
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


# -- hostile input: every credential ends in a Principal or an AuthError, nothing else --------------

def _sign_raw(header: bytes, payload: bytes, secret: str) -> str:
    """An HS256 JWT over exactly these JSON bytes (PyJWT cannot write `1e400` or a 400-digit exp)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


_HS256 = b'{"alg":"HS256","sign_type":"SIGN"}'


def _payload(key_id: str, exp: str, timestamp: str | None = None) -> bytes:
    extra = f',"timestamp":{timestamp}' if timestamp is not None else ""
    return f'{{"api_key":"{key_id}","exp":{exp}{extra}}}'.encode()


@pytest.mark.parametrize("exp", [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, "-" + "9" * 400, "1e308",
    "true", "false", "null", '"9999999999999"', "[]", "{}", "0", "-1", "946684799", "0.5",
    "4102444800000000",  # year 2100 in ms, times 1000: far beyond any sane exp
])
def test_exp_out_of_range_is_refused_as_malformed(setup, exp: str) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, _ = setup
    key_id, secret = key.split(".")
    with pytest.raises(AuthError) as info:
        auth.authenticate(_sign_raw(_HS256, _payload(key_id, exp), secret))
    assert info.value.failure == "malformed"


@pytest.mark.parametrize("timestamp", ["NaN", "1e400", "1" + "0" * 400, "true", '"now"', "-5"])
def test_timestamp_out_of_range_is_refused(setup, timestamp: str) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, clock = setup
    key_id, secret = key.split(".")
    exp = str(int(clock[0] * 1000) + 60_000)
    with pytest.raises(AuthError) as info:
        auth.authenticate(_sign_raw(_HS256, _payload(key_id, exp, timestamp), secret))
    assert info.value.failure == "malformed"


def test_exp_ten_years_ahead_is_the_limit(setup) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, clock = setup
    key_id, secret = key.split(".")
    inside = int((clock[0] + JWT_MAX_AHEAD_S - 1) * 1000)
    assert auth.authenticate(_sign_raw(_HS256, _payload(key_id, str(inside)), secret)).key_id == key_id
    with pytest.raises(AuthError):
        auth.authenticate(_sign_raw(_HS256, _payload(key_id, str(inside + 2000)), secret))


@pytest.mark.parametrize("part", ["header", "payload"])
def test_deeply_nested_jwt_json_is_malformed(setup, part: str) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, _ = setup
    deep = b"[" * 1_500 + b"]" * 1_500
    header, payload = (deep, b"{}") if part == "header" else (_HS256, deep)
    with pytest.raises(AuthError) as info:
        auth.authenticate(_sign_raw(header, payload, key.split(".")[1]))
    assert info.value.failure == "malformed"


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(10**600), 10**600) | st.floats()
                | st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
# Times near now in seconds or milliseconds, and the edges of the sane range.
NEAR_TIMES = st.floats(-400 * 86400, 11 * 366 * 86400).map(lambda d: time.time() + d) | st.sampled_from(
    [JWT_EARLIEST_S, JWT_EARLIEST_S - 1, 2**63, -(2**63), 10**11 - 1, 10**11])
TIME_CLAIMS = NEAR_TIMES | NEAR_TIMES.map(lambda t: t * 1000) | NEAR_TIMES.map(int) | JSON_VALUES


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exp=TIME_CLAIMS, timestamp=st.none() | TIME_CLAIMS, extra=st.dictionaries(st.text(max_size=8),
       JSON_VALUES, max_size=3), right_key=st.booleans())
def test_any_signed_claims_give_a_principal_or_an_auth_error(  # type: ignore[no-untyped-def]
        setup, exp, timestamp, extra, right_key: bool) -> None:
    _, auth, key, clock = setup
    key_id, secret = key.split(".")
    claims = {**extra, "api_key": key_id if right_key else extra.get("api_key", "0" * 32), "exp": exp}
    if timestamp is not None:
        claims["timestamp"] = timestamp
    try:
        token = jwt.encode(claims, secret, algorithm="HS256")
    except (TypeError, ValueError):
        return  # not JSON-serialisable (a key PyJWT refuses): no token to send
    try:
        principal = auth.authenticate(token)
    except AuthError as exc:
        assert exc.failure in {"malformed", "invalid", "expired"}
        return
    # Accepted: only a real number inside the sane range, not expired, for the right key.
    assert principal.key_id == key_id
    assert not isinstance(exp, bool) and isinstance(exp, int | float) and math.isfinite(exp)
    exp_s = exp / 1000 if exp >= 10**11 else exp
    assert JWT_EARLIEST_S <= exp_s <= clock[0] + JWT_MAX_AHEAD_S and clock[0] <= exp_s + JWT_LEEWAY_S


# Every code point, surrogates included; and the shapes a credential takes.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)
HEADERS = (ANY_TEXT | ANY_TEXT.map(lambda t: "Bearer " + t) | st.text(max_size=6000)
           | st.tuples(ANY_TEXT, ANY_TEXT).map(".".join) | st.tuples(ANY_TEXT, ANY_TEXT, ANY_TEXT).map(".".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(HEADERS)
@example("Bearer a.b\x00")
@example("Bearer abc\r\n.def")
@example("Bearer 中文.密钥")
@example("\ud800.\udfff")
@example("Bearer " + "a" * 100_000 + ".b")
@example("Bearer ..")
@example("Bearer e30.e30.")
def test_any_authorization_header_gives_a_principal_or_an_auth_error(setup, header: str) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, _ = setup
    try:
        principal = auth.authenticate(header)
    except AuthError:
        return
    assert principal.key_id == key.split(".")[0]  # only the real key gets in


@pytest.mark.parametrize("claim", ['"iat":Infinity', '"iat":"x"', '"nbf":NaN', '"sub":5', '"jti":[]', '"aud":{}',
                                   '"iss":1e400'])
def test_other_registered_claims_are_not_read(setup, claim: str) -> None:  # type: ignore[no-untyped-def]
    _, auth, key, clock = setup
    key_id, secret = key.split(".")
    payload = f'{{"api_key":"{key_id}","exp":{int(clock[0] * 1000) + 60_000},{claim}}}'.encode()
    assert auth.authenticate(_sign_raw(_HS256, payload, secret)).key_id == key_id


def test_the_key_read_names_every_column_of_the_key_table() -> None:
    # auth.py builds a key's row from `key_row`'s columns; a column added to the table must be read.
    from glmaas.store.sql import KEY_COLUMNS
    from glmaas.store.tables import ApiKey

    assert sorted(KEY_COLUMNS) == sorted(c.name for c in ApiKey.__table__.columns)
