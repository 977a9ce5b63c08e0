"""Batches: a file of requests, done in the background at a discount.

    create (lines become work items) ─► in_progress ─► lines leased, run, finished one by one
      ─► finalize: the output file (lines that succeeded) and the error file (lines that failed),
         written once, in the transaction that marks the batch completed (or cancelled)

Statuses are OpenAI's: `failed` when the input file does not hold valid requests for the
endpoint, `cancelling` → `cancelled` when cancelled (lines already running finish and are kept),
`expired` when the completion window ends first (lines not started go to the error file with
`batch_expired`), `completed` otherwise. Request counts are read from the lines, so they are never out of step.
"""

from __future__ import annotations

import enum
import json
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from glmaas.jobs.leases import ItemKind, ItemState
from glmaas.platform.errors import Conflict, NotFound, PlatformError
from glmaas.platform.files import BATCH_OUTPUT, file_content, parse_jsonl, store_file
from glmaas.store.blobs import BlobStore
from glmaas.store.paging import page
from glmaas.store.tables import Batch, WorkItem

COMPLETION_WINDOWS = {"24h": 24 * 3600.0}
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
# The endpoints a batch line may call, by what clients write in `endpoint` and `url`.
ENDPOINTS = {
    CHAT: CHAT, "/v4/chat/completions": CHAT, "/api/paas/v4/chat/completions": CHAT,
    EMBEDDINGS: EMBEDDINGS, "/v4/embeddings": EMBEDDINGS, "/api/paas/v4/embeddings": EMBEDDINGS,
}
MAX_LINES = 50_000


class BatchStatus(enum.StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


# Batches whose files are not written yet (an expired one waits for its running lines).
OPEN = (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.EXPIRED)


class InvalidBatch(PlatformError):
    """The batch cannot be created as asked (unknown endpoint, window, file)."""


@dataclass(frozen=True)
class RequestCounts:
    total: int
    completed: int
    failed: int


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


def _line_errors(records: list[dict], endpoint: str) -> list[dict]:
    errors = []
    for number, record in enumerate(records, start=1):
        url = record.get("url")
        if ENDPOINTS.get(url) != endpoint:
            errors.append({"code": "invalid_url", "line": number, "param": "url",
                           "message": f"The url {url!r} does not match the batch's endpoint."})
        elif not isinstance(record["body"].get("model"), str):
            errors.append({"code": "missing_required_parameter", "line": number, "param": "body.model",
                           "message": "The request body has no model."})
    return errors


def create_batch(session: Session, blobs: BlobStore, *, account_id: str, key_id: str, dialect: str,
                 input_file_id: str, endpoint: str, completion_window: str,
                 metadata: dict[str, str] | None) -> Batch:
    """A batch of the account's uploaded file; its lines queued for the workers. A file whose lines
    do not fit the endpoint makes a `failed` batch that names them, as OpenAI does."""
    canonical = ENDPOINTS.get(endpoint)
    if canonical is None:
        raise InvalidBatch(f"Unsupported endpoint {endpoint!r}; batches support {CHAT} and {EMBEDDINGS}.")
    if completion_window not in COMPLETION_WINDOWS:
        raise InvalidBatch(f"Unsupported completion_window {completion_window!r}; use 24h.")
    data = file_content(session, blobs, account_id, input_file_id)
    records = parse_jsonl(data, "batch")
    if len(records) > MAX_LINES:
        raise InvalidBatch(f"A batch holds at most {MAX_LINES} requests; the file has {len(records)}.")
    now = time.time()
    batch = Batch(id=new_batch_id(), account_id=account_id, key_id=key_id, dialect=dialect, endpoint=endpoint,
                  input_file_id=input_file_id, completion_window=completion_window,
                  status=BatchStatus.IN_PROGRESS, total=len(records),
                  metadata_json=json.dumps(metadata) if metadata else None, created_at=now,
                  expires_at=now + COMPLETION_WINDOWS[completion_window], in_progress_at=now)
    errors = _line_errors(records, canonical)
    if errors:
        batch.status, batch.failed_at, batch.in_progress_at = BatchStatus.FAILED, now, None
        batch.errors = json.dumps(errors[:100])
        session.add(batch)
        return batch
    session.add(batch)
    session.flush()
    session.add_all(
        WorkItem(id=f"{batch.id}:{number}", kind=ItemKind.BATCH_LINE, batch_id=batch.id, line_no=number,
                 account_id=account_id, key_id=key_id, dialect=dialect, endpoint=canonical,
                 model=record["body"]["model"][:128],
                 custom_id=record["custom_id"], body=json.dumps(record["body"]), state=ItemState.PENDING,
                 created_at=now)
        for number, record in enumerate(records, start=1))
    return batch


def get_batch(session: Session, account_id: str, batch_id: str) -> Batch:
    """The account's batch, or `NotFound` (also when it is another account's)."""
    batch = session.get(Batch, batch_id) if len(batch_id) <= 64 else None
    if batch is None or batch.account_id != account_id:
        raise NotFound(f"No such batch: {batch_id!r}.")
    return batch


def list_batches(session: Session, account_id: str, *, limit: int, after: str | None) -> tuple[list[Batch], bool]:
    """The account's batches, newest first, and whether more follow; paged in SQL."""
    return page(session, Batch, [Batch.account_id == account_id], after=after, limit=limit)


def request_counts(session: Session, batch: Batch) -> RequestCounts:
    states = dict(session.execute(select(WorkItem.state, func.count()).where(WorkItem.batch_id == batch.id)
                                  .group_by(WorkItem.state)).all())
    return RequestCounts(batch.total, states.get(ItemState.DONE, 0), states.get(ItemState.FAILED, 0))


def cancel_batch(session: Session, account_id: str, batch_id: str) -> Batch:
    """Stop the batch: lines not started are dropped, running ones finish. `Conflict` when the
    batch has already ended."""
    batch = get_batch(session, account_id, batch_id)
    if batch.status not in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING):
        raise Conflict(f"Batch {batch_id!r} is {batch.status} and cannot be cancelled.")
    if batch.status != BatchStatus.CANCELLING:
        batch.status, batch.cancelling_at = BatchStatus.CANCELLING, time.time()
    session.execute(update(WorkItem).where(WorkItem.batch_id == batch.id, WorkItem.state == ItemState.PENDING)
                    .values(state=ItemState.CANCELLED, finished_at=time.time()))
    session.flush()
    return batch


def expire_overdue(session: Session, now: float | None = None) -> list[str]:
    """Batches past their completion window: their lines not started fail with `batch_expired`
    (running ones finish); returns the ids, to finalize."""
    now = now or time.time()
    overdue = list(session.scalars(select(Batch).where(Batch.status == BatchStatus.IN_PROGRESS,
                                                        Batch.expires_at < now)))
    for batch in overdue:
        batch.status, batch.expired_at = BatchStatus.EXPIRED, now
        pending = session.execute(select(WorkItem.id, WorkItem.custom_id).where(
            WorkItem.batch_id == batch.id, WorkItem.state == ItemState.PENDING)).all()
        for item_id, custom_id in pending:
            line = {"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id, "response": None,
                    "error": {"code": "batch_expired", "message": "This request could not be executed "
                              "before the completion window expired."}}
            session.execute(update(WorkItem).where(WorkItem.id == item_id, WorkItem.state == ItemState.PENDING)
                            .values(state=ItemState.FAILED, result=json.dumps(line), finished_at=now))
    return [b.id for b in overdue]


def _jsonl(results: list[str]) -> bytes:
    return "".join(line + "\n" for line in results).encode()


def finalize(session: Session, blobs: BlobStore, batch_id: str) -> bool:
    """When no line is left to run, write the output and error files and end the batch, once
    (the status change is conditional: of two replicas finalizing, one writes). True if it ended."""
    left = session.scalar(select(func.count()).where(
        WorkItem.batch_id == batch_id, WorkItem.state.in_((ItemState.PENDING, ItemState.RUNNING))))
    if left:
        return False
    batch = session.get(Batch, batch_id)
    if batch is None or batch.status not in OPEN:
        return False
    if batch.output_file_id or batch.error_file_id:
        return False  # already written (an expired batch keeps its status)
    now = time.time()
    endings = {BatchStatus.IN_PROGRESS: (BatchStatus.COMPLETED, {"completed_at": now}),
               BatchStatus.CANCELLING: (BatchStatus.CANCELLED, {"cancelled_at": now}),
               BatchStatus.EXPIRED: (BatchStatus.EXPIRED, {})}
    ending, stamps = endings[BatchStatus(batch.status)]
    # Conditional on the status (and, for an expired batch, on its files not being written yet):
    # of two replicas finalizing, one writes.
    claimed = session.execute(update(Batch).where(Batch.id == batch_id, Batch.status == batch.status,
                                                  Batch.output_file_id.is_(None), Batch.error_file_id.is_(None))
                              .values(status=ending, **stamps)).rowcount
    if not claimed:
        return False
    lines = session.execute(select(WorkItem.state, WorkItem.result).where(
        WorkItem.batch_id == batch_id, WorkItem.state.in_((ItemState.DONE, ItemState.FAILED)))
        .order_by(WorkItem.line_no)).all()
    outputs = [r for s, r in lines if s == ItemState.DONE]
    failures = [r for s, r in lines if s == ItemState.FAILED]
    output_id = error_id = None
    if outputs:
        output_id = store_file(session, blobs, account_id=batch.account_id, purpose=BATCH_OUTPUT,
                               filename=f"{batch_id}_output.jsonl", data=_jsonl(outputs)).id
    if failures:
        error_id = store_file(session, blobs, account_id=batch.account_id, purpose=BATCH_OUTPUT,
                              filename=f"{batch_id}_error.jsonl", data=_jsonl(failures)).id
    session.execute(update(Batch).where(Batch.id == batch_id)
                    .values(output_file_id=output_id, error_file_id=error_id))
    session.expire(batch)
    return True


def open_batches(session: Session) -> list[str]:
    """Batches that may be ready to finalize."""
    unwritten = and_(Batch.output_file_id.is_(None), Batch.error_file_id.is_(None))
    return list(session.scalars(select(Batch.id).where(Batch.status.in_(OPEN), unwritten)))
