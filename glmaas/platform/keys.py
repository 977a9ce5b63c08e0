"""API keys: `<id>.<secret>`, shown once at creation.

The id (32 hex chars) is public and indexes the key; the secret (32 url-safe chars) is kept only
as a keyed hash and sealed under the master key (see `secrets.py`).
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from glmaas.platform.errors import NotFound
from glmaas.platform.secrets import SecretBox
from glmaas.store.tables import Account, ApiKey

_SECRET_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class KeyView:
    """What may be shown of a key after creation (never its secret)."""

    id: str
    account: str
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    allowed_models: tuple[str, ...] | None


def new_key_id() -> str:
    return secrets.token_hex(16)


def new_secret() -> str:
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(32))


def create_key(
    session: Session,
    box: SecretBox,
    account: Account,
    *,
    name: str = "",
    expires_at: float | None = None,
    allowed_models: tuple[str, ...] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for `account`; returns the row and the full key, which is never seen again."""
    key_id, secret = new_key_id(), new_secret()
    row = ApiKey(
        id=key_id,
        account_id=account.id,
        name=name,
        secret_hash=box.digest(secret),
        secret_sealed=box.seal(secret, key_id=key_id),
        created_at=time.time(),
        expires_at=expires_at,
        allowed_models=",".join(allowed_models) if allowed_models else None,
    )
    session.add(row)
    session.flush()
    return row, f"{key_id}.{secret}"


def list_keys(session: Session, account: str | None = None) -> list[KeyView]:
    """Keys, oldest first, optionally of one account."""
    query = select(ApiKey, Account.name).join(Account).order_by(ApiKey.created_at)
    if account is not None:
        query = query.where(Account.name == account)
    return [_view(row, acct) for row, acct in session.execute(query)]


def key_view(session: Session, key_id: str) -> KeyView:
    """The key `key_id` as it may be shown; `NotFound` if none."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no key with id {key_id!r}")
    account = session.get(Account, row.account_id)
    return _view(row, account.name if account else "")


def revoke_key(session: Session, key_id: str) -> KeyView:
    """Revoke the key; it fails authentication from now on. Idempotent."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no key with id {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = time.time()
    return key_view(session, key_id)


def _view(row: ApiKey, account: str) -> KeyView:
    models = tuple(row.allowed_models.split(",")) if row.allowed_models else None
    return KeyView(
        row.id, account, row.name, row.created_at, row.expires_at, row.revoked_at, models
    )
