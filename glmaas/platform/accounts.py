"""Accounts (tenants)."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from glmaas.platform.errors import Conflict, NotFound
from glmaas.store.tables import Account

DEFAULT_ACCOUNT = "default"


def create_account(session: Session, name: str) -> Account:
    """Create the account `name`; `Conflict` if it exists."""
    if session.scalar(select(Account).where(Account.name == name)) is not None:
        raise Conflict(f"account {name!r} already exists")
    account = Account(id=secrets.token_hex(8), name=name, created_at=time.time())
    session.add(account)
    session.flush()
    return account


def get_account(session: Session, name: str) -> Account:
    """The account named `name`; `NotFound` if none."""
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        raise NotFound(f"no account named {name!r}")
    return account


def ensure_account(session: Session, name: str) -> Account:
    """The account named `name`, created if absent."""
    account = session.scalar(select(Account).where(Account.name == name))
    return account if account is not None else create_account(session, name)
