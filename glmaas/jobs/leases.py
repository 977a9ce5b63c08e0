"""Leasing work items through the database, so that several replicas share the work and no item
is done twice.

A worker takes a pending item (or one whose lease expired: its worker died) in one statement,
with `FOR UPDATE SKIP LOCKED` on PostgreSQL so concurrent workers pass over each other's rows;
on SQLite every write transaction takes the database's write lock first (`BEGIN IMMEDIATE`), which
serialises the same statement. Each take is a new attempt. An attempt ends with `finish`, a
conditional update that only the lease's holder of that attempt can make: the item's result is
written once, by one attempt.

Attempts are capped: an item whose attempts keep dying (its lease lapses because it takes its
replica down, or its run keeps raising) is not run again once it has had `max_attempts`; the
take after the last one (`LeasedItem.exhausted`) is only there to end it as failed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.orm import Session

from glmaas.platform.recovery import stopped
from glmaas.store.tables import WorkItem


class ItemKind(enum.StrEnum):
    BATCH_LINE = "batch_line"
    ASYNC_CHAT = "async_chat"


class ItemState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"  # its result is a response
    FAILED = "failed"  # its result is an error
    CANCELLED = "cancelled"  # its batch was cancelled before it ran


@dataclass(frozen=True)
class LeasedItem:
    """An item a worker holds, in one attempt."""

    id: str
    kind: ItemKind
    batch_id: str | None
    account_id: str
    key_id: str
    dialect: str
    endpoint: str
    custom_id: str | None
    body: str
    attempt: int
    owner: str
    max_attempts: int | None = None  # None: no cap

    @property
    def exhausted(self) -> bool:
        """This take follows the last attempt allowed: the item is to be failed, not run."""
        return self.max_attempts is not None and self.attempt > self.max_attempts

    @property
    def request_id(self) -> str:
        """The attempt's request id: each attempt is its own admitted request, so an attempt a
        crash cut short settles (unbilled) apart from the one that finishes."""
        return f"{self.id}~{self.attempt}"


# Async tasks first (someone is polling for them), then batches in the order they came.
_TAKE = """
UPDATE work_items SET state = 'running', owner = :owner, lease_until = :until, attempts = attempts + 1
WHERE id = (
  SELECT id FROM work_items
  WHERE state = 'pending' OR (state = 'running' AND lease_until < :now)
  ORDER BY CASE kind WHEN 'async_chat' THEN 0 ELSE 1 END, created_at, line_no
  LIMIT 1 {lock}
)
RETURNING id, kind, batch_id, account_id, key_id, dialect, endpoint, custom_id, body, attempts
"""


def take(engine: Engine, owner: str, lease_s: float, max_attempts: int | None = None) -> LeasedItem | None:
    """Lease the next item for `lease_s` seconds, or None when there is no work. With
    `max_attempts`, an item taken past it comes back `exhausted`."""
    now = time.time()
    lock = "FOR UPDATE SKIP LOCKED" if engine.dialect.name == "postgresql" else ""
    with engine.begin() as conn:
        row = conn.execute(text(_TAKE.format(lock=lock)),
                           {"owner": owner, "until": now + lease_s, "now": now}).first()
    if row is None:
        return None
    return LeasedItem(row.id, ItemKind(row.kind), row.batch_id, row.account_id, row.key_id, row.dialect,
                      row.endpoint, row.custom_id, row.body, row.attempts, owner, max_attempts)


def renew(engine: Engine, owner: str, lease_s: float) -> None:
    """Extend the leases of every item this worker's replica is running."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE work_items SET lease_until = :until WHERE owner = :owner AND state = 'running'"),
                     {"until": time.time() + lease_s, "owner": owner})


def finish(conn: Connection, item: LeasedItem, state: ItemState, result: str) -> bool:
    """End the item with its result, in the caller's transaction; False (and nothing written)
    when this attempt no longer holds it."""
    return conn.execute(text(
        "UPDATE work_items SET state = :state, result = :result, finished_at = :now, owner = NULL "
        "WHERE id = :id AND owner = :owner AND attempts = :attempt AND state = 'running'"),
        {"state": state, "result": result, "now": time.time(), "id": item.id, "owner": item.owner,
         "attempt": item.attempt}).rowcount == 1


def release_stopped(session: Session, me: str) -> int:
    """Put back in the queue the items of replicas that are not running any more, without waiting
    for their leases to lapse (a replica restarted on the same host is seen dead at once).
    Returns how many."""
    owners = set(session.scalars(select(WorkItem.owner).where(WorkItem.state == ItemState.RUNNING).distinct()))
    dead = stopped(session, {o for o in owners if o}, me)
    if not dead:
        return 0
    return session.execute(update(WorkItem).where(WorkItem.state == ItemState.RUNNING, WorkItem.owner.in_(dead))
                           .values(state=ItemState.PENDING, owner=None, lease_until=0.0)).rowcount


def give_back(engine: Engine, item: LeasedItem, *, started: bool = True) -> None:
    """Return the item to the queue for a later attempt: its attempt failed before it could finish
    the item, or (`started=False`) it could not start now, in which case the attempt is not
    counted against the cap (nothing of it was admitted, so its request id is unused)."""
    refund = "" if started else ", attempts = attempts - 1"
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE work_items SET state = 'pending', owner = NULL, lease_until = 0{refund} "
                          "WHERE id = :id AND owner = :owner AND attempts = :attempt AND state = 'running'"),
                     {"id": item.id, "owner": item.owner, "attempt": item.attempt})
