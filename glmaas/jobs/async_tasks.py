"""Zhipu's async chat: a chat completion submitted now and fetched later by its task id. A task is
a work item like a batch line (persisted, leased, crash-safe), sold at the full price."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from glmaas.jobs.leases import ItemKind, ItemState
from glmaas.platform.errors import NotFound
from glmaas.store.tables import WorkItem


def submit(session: Session, *, task_id: str, account_id: str, key_id: str, model: str, body: str) -> None:
    """Queue the task (in the session's transaction)."""
    session.add(WorkItem(id=task_id, kind=ItemKind.ASYNC_CHAT, account_id=account_id, key_id=key_id,
                         dialect="zhipu", endpoint="/v1/chat/completions", model=model[:128], body=body,
                         state=ItemState.PENDING,
                         created_at=time.time()))


def get_task(session: Session, account_id: str, task_id: str) -> WorkItem:
    """The account's task, or `NotFound` (also when it is another account's)."""
    item = session.get(WorkItem, task_id) if len(task_id) <= 96 else None
    if item is None or item.kind != ItemKind.ASYNC_CHAT or item.account_id != account_id:
        raise NotFound(f"No such task: {task_id!r}.")
    return item
