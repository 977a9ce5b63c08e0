"""Upstream servers' API keys in the sealed secret store: `glmaas upstream-keys set NAME` seals
one under the master key; an upstream spec names it with `key_secret=NAME`, and `glmaas serve`
opens it at start into the upstream's memory only. A key is never printed, logged or returned:
the store lists names, not keys."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from glmaas.platform.secrets import SecretBox
from glmaas.store.tables import UpstreamKey

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _aad(name: str) -> str:
    # Binds a sealed key to its name: a sealed value copied under another name does not open.
    return f"upstream-key:{name}"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError("an upstream key's name is 1 to 64 letters, digits, '_', '.' or '-'")
    return name


def put(session: Session, box: SecretBox, name: str, key: str) -> None:
    """Store (or replace) the key called `name`, sealed."""
    check_name(name)
    if not key or any(c.isspace() for c in key):
        raise ValueError("an upstream key is one non-empty word (no spaces or line breaks)")
    sealed = box.seal(key, key_id=_aad(name))
    row = session.get(UpstreamKey, name)
    if row is None:
        session.add(UpstreamKey(name=name, sealed=sealed, updated_at=time.time()))
    else:
        row.sealed, row.updated_at = sealed, time.time()


def delete(session: Session, name: str) -> bool:
    row = session.get(UpstreamKey, name)
    if row is not None:
        session.delete(row)
    return row is not None


def names(session: Session) -> list[dict[str, object]]:
    """The stored keys' names and when each was set; never the keys."""
    rows = session.scalars(select(UpstreamKey).order_by(UpstreamKey.name))
    return [{"name": r.name, "updated_at": r.updated_at} for r in rows]


def opener(sessions: Callable[[], Session], box: SecretBox) -> Callable[[str], str | None]:
    """What an upstream spec's `key_secret=NAME` is opened with: the key, or None when no key
    has that name."""

    def open_key(name: str) -> str | None:
        with sessions() as session:
            row = session.get(UpstreamKey, name)
            return None if row is None else box.open(row.sealed, key_id=_aad(name))

    return open_key
