"""Recovering from a crash: every hold left open by a dead replica gets its one settlement.

Each `glmaas serve` process is a replica with an owner id `<host>:<pid>:<start ms>` and a
heartbeat row. A hold belongs to the replica that admitted it. A replica is dead when its heartbeat
is older than `STALE_AFTER_S`, or at once when it ran on this host and its process is gone (the
common case: the server was killed and restarted). Its open holds are settled from their last
durable progress (`holds.progress_tokens`, written by a stream before it delivers its first token
and every `DURABILITY_STEP` tokens after):

- a request with durable progress is charged its prompt and its durable tokens;
- a request with none (a non-streamed request, which delivers nothing before it finishes, or a
  stream killed before its first token) is charged nothing, not even its prompt.

Either way the reservation is released and the request gets its one usage record, with status
`recovered` and the cost charged (0 for the second kind).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from glmaas.platform.ledger import Outcome, RequestStatus, settle_hold, ticket_of
from glmaas.platform.limits import LimitSpec, account_model_scope, key_scope
from glmaas.store.tables import Hold, Replica

HEARTBEAT_S = 2.0
STALE_AFTER_S = 15.0
# The owner of a fine-tuning job's hold: the job, not a replica. A job cut short by a crash
# resumes from its checkpoint and settles its own hold, so recovery leaves these alone.
JOB_HOLD_OWNER = "fine-tuning-job"


def new_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time() * 1000)}"


def heartbeat(session: Session, owner: str) -> None:
    """Say this replica is alive (insert or refresh its row)."""
    now = time.time()
    if session.execute(update(Replica).where(Replica.id == owner).values(heartbeat_at=now)).rowcount == 0:
        session.add(Replica(id=owner, heartbeat_at=now))


def retire(session: Session, owner: str) -> None:
    session.execute(delete(Replica).where(Replica.id == owner))


def _process_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid) == os.getpid()  # our own pid with an older start: a previous life


def stopped(session: Session, owners: set[str], me: str, now: float | None = None) -> set[str]:
    """Of the replicas `owners`, those that are not running any more (never `me`)."""
    now = now or time.time()
    owners = owners - {me}
    beats = dict(session.execute(select(Replica.id, Replica.heartbeat_at).where(Replica.id.in_(owners))).all())
    return {o for o in owners if o not in beats or now - beats[o] > STALE_AFTER_S or _process_gone(o)}


def dead_owners(session: Session, me: str, now: float | None = None) -> set[str]:
    """Owners of open holds that are not running any more (a job is never one)."""
    owners = set(session.scalars(select(Hold.owner).where(Hold.state == "open").distinct())) - {JOB_HOLD_OWNER}
    return stopped(session, owners, me, now)


def recover(session_factory: Callable[[], Session], me: str,
            forget: Callable[[str, list[str]], None] | None = None) -> int:
    """Settle the open holds of dead replicas; returns how many were settled."""
    with session_factory() as session:
        dead = dead_owners(session, me)
        if not dead:
            return 0
        holds = list(session.scalars(select(Hold).where(Hold.state == "open", Hold.owner.in_(dead))))
        session.expunge_all()
    settled = 0
    for hold in holds:
        # No durable progress: the client was sent nothing, so the request is released unbilled.
        facts = Outcome(status=RequestStatus.RECOVERED, cached_tokens=hold.cached_tokens,
                        completion_tokens=hold.progress_tokens, finish_reason=None,
                        queue_ms=0.0, first_token_ms=None, total_ms=0.0,
                        billable=hold.progress_tokens > 0)
        with session_factory() as session, session.begin():
            if settle_hold(session.connection(), ticket_of(hold), facts) is not None:
                settled += 1
        if forget is not None:
            scopes = [key_scope(hold.key_id, LimitSpec()).name,
                      account_model_scope(hold.account_id, hold.model, LimitSpec()).name]
            forget(f"{hold.account_id}/{hold.request_id}", scopes)
    with session_factory() as session, session.begin():
        still_open = set(session.scalars(select(Hold.owner).where(Hold.state == "open", Hold.owner.in_(dead))))
        for owner in dead - still_open:
            retire(session, owner)
    return settled
