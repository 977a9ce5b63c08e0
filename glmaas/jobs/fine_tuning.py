"""Fine-tuning jobs in the store: creation (files checked, tokens counted, the bill held),
reading, cancelling, the log of events and checkpoints, leasing, and the one settlement.

A job is `validating_files` only inside its creating transaction; it is `queued` until a replica
leases it, `running` while a replica holds its lease, then `succeeded`, `failed` or `cancelled`.
A replica that dies leaves its job `running` with a lease nobody renews; another take (or the
same host's restarted server, which sees the process gone) leases it again, and the training
resumes from its last checkpoint.

The bill: at creation the job holds every token of its training file (prompt and assistant
tokens, as trained) × its epochs at the base model's training price; the hold is the job's own
(request id = the job id, owned by no replica, so crash recovery leaves it to the job). It is
settled once: at success for every token trained, at cancellation for the tokens trained so far,
at failure for nothing.
"""

from __future__ import annotations

import enum
import json
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from glmaas.platform import files
from glmaas.platform.errors import NotFound, PlatformError
from glmaas.platform.ledger import Outcome, RequestStatus, place_hold, settle_hold, ticket_of
from glmaas.platform.pricing import PriceSheet, training_sheet
from glmaas.platform.recovery import JOB_HOLD_OWNER, stopped
from glmaas.store.blobs import BlobStore
from glmaas.store.paging import page
from glmaas.store.tables import FineTuningCheckpoint, FineTuningEvent, FineTuningJob, Hold
from glmaas.training.chat_data import ChatFormat, InvalidTrainingFile, read_examples, token_count

FINE_TUNE_PURPOSE = "fine-tune"
MODEL_PREFIX = "ft:"
SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,40}")
MAX_EPOCHS = 50
MAX_BATCH = 256
DEFAULT_EPOCHS = 3
DEFAULT_BATCH = 4
MAX_LEN = 512  # tokens of one training conversation; longer ones are cut


class JobStatus(enum.StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class InvalidJob(PlatformError):
    """The job cannot be created as asked (a file of the wrong kind, bad hyperparameters)."""


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH
    learning_rate_multiplier: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.n_epochs <= MAX_EPOCHS:
            raise InvalidJob(f"n_epochs must be from 1 to {MAX_EPOCHS}.")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InvalidJob(f"batch_size must be from 1 to {MAX_BATCH}.")
        if not 0 < self.learning_rate_multiplier <= 100:
            raise InvalidJob("learning_rate_multiplier must be above 0 and at most 100.")


@dataclass(frozen=True)
class NewJob:
    account_id: str
    key_id: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    lora: bool
    hyperparameters: Hyperparameters


def new_job_id() -> str:
    return f"ftjob-{secrets.token_hex(12)}"


def model_name(job: FineTuningJob) -> str:
    """`ft:<base>:<account>:<suffix>:<job-id>`, the id the tuned model is served under."""
    return f"{MODEL_PREFIX}{job.model}:{job.account_id}:{job.suffix or ''}:{job.id}"


def _training_examples(session: Session, blobs: BlobStore, account_id: str, file_id: str, fmt: ChatFormat,
                       what: str) -> int:
    info = files.get_file(session, account_id, file_id)
    if info.purpose != FINE_TUNE_PURPOSE:
        raise InvalidJob(f"The {what} {file_id!r} was uploaded with purpose {info.purpose!r}; "
                         f"upload it with purpose {FINE_TUNE_PURPOSE!r}.")
    try:
        examples = read_examples(files.file_content(session, blobs, account_id, file_id), fmt, MAX_LEN, what=what)
    except InvalidTrainingFile as exc:
        raise InvalidJob(str(exc)) from None
    return token_count(examples)


def create_job(session: Session, blobs: BlobStore, new: NewJob, fmt: ChatFormat, price: PriceSheet) -> FineTuningJob:
    """Check the files, count the tokens, hold the bill and queue the job, in the caller's
    transaction; raises `NotFound` (a file), `InvalidJob` or a balance refusal."""
    if new.suffix is not None and not SUFFIX.fullmatch(new.suffix):
        raise InvalidJob("suffix must be 1 to 40 letters, digits, '-' or '_'.")
    epoch_tokens = _training_examples(session, blobs, new.account_id, new.training_file, fmt, "training file")
    if new.validation_file:
        _training_examples(session, blobs, new.account_id, new.validation_file, fmt, "validation file")
    hp = new.hyperparameters
    now = time.time()
    job = FineTuningJob(id=new_job_id(), account_id=new.account_id, key_id=new.key_id, model=new.model,
                        training_file=new.training_file, validation_file=new.validation_file, suffix=new.suffix,
                        method="lora" if new.lora else "full",
                        hyperparameters=json.dumps({"n_epochs": hp.n_epochs, "batch_size": hp.batch_size,
                                                    "learning_rate_multiplier": hp.learning_rate_multiplier}),
                        status=JobStatus.QUEUED, epoch_tokens=epoch_tokens, trained_tokens=0, created_at=now)
    session.add(job)
    session.flush()
    place_hold(session.connection(), request_id=job.id, account_id=new.account_id, key_id=new.key_id,
               model=new.model, price=training_sheet(price), prompt_tokens=epoch_tokens * hp.n_epochs,
               max_tokens=0, owner=JOB_HOLD_OWNER)
    add_event(session, job.id, f"Validated the training file: {epoch_tokens} tokens per epoch, "
                               f"{epoch_tokens * hp.n_epochs} to train.")
    add_event(session, job.id, "Fine-tuning job created and queued.")
    return job


def get_job(session: Session, account_id: str, job_id: str, *, for_update: bool = False) -> FineTuningJob:
    """The account's job, or `NotFound` (also when it is another account's); `for_update` locks
    its row (PostgreSQL) until the transaction ends."""
    job = session.get(FineTuningJob, job_id, with_for_update=for_update) if len(job_id) <= 64 else None
    if job is None or job.account_id != account_id:
        raise NotFound(f"No such fine-tuning job: {job_id!r}.")
    return job


def list_jobs(session: Session, account_id: str, *, limit: int, after: str | None) -> tuple[list[FineTuningJob], bool]:
    return page(session, FineTuningJob, [FineTuningJob.account_id == account_id], after=after, limit=limit)


def list_events(session: Session, job: FineTuningJob, *, limit: int,
                after: str | None) -> tuple[list[FineTuningEvent], bool]:
    return page(session, FineTuningEvent, [FineTuningEvent.job_id == job.id], after=after, limit=limit)


def list_checkpoints(session: Session, job: FineTuningJob, *, limit: int,
                     after: str | None) -> tuple[list[FineTuningCheckpoint], bool]:
    return page(session, FineTuningCheckpoint, [FineTuningCheckpoint.job_id == job.id], after=after, limit=limit)


def add_event(session: Session, job_id: str, message: str, *, level: str = "info",
              data: dict | None = None, at: float | None = None) -> None:
    session.add(FineTuningEvent(id=f"ftevent-{secrets.token_hex(12)}", job_id=job_id, created_at=at or time.time(),
                                level=level, type="metrics" if data is not None else "message",
                                message=message, data=json.dumps(data) if data is not None else None))


def add_checkpoint(session: Session, job_id: str, step: int, metrics: dict) -> None:
    session.add(FineTuningCheckpoint(id=f"ftckpt-{secrets.token_hex(12)}", job_id=job_id, step_number=step,
                                     created_at=time.time(), metrics=json.dumps(metrics)))


def settle_job(session: Session, job: FineTuningJob, status: JobStatus) -> None:
    """The job's one settlement: the tokens trained (none for a failed job), at the price held.
    A second call finds the hold settled and changes nothing."""
    hold = session.scalars(select(Hold).where(Hold.account_id == job.account_id, Hold.request_id == job.id,
                                              Hold.state == "open")).first()
    if hold is None:
        return
    ticket = ticket_of(hold)
    ended = {JobStatus.SUCCEEDED: RequestStatus.OK, JobStatus.CANCELLED: RequestStatus.ABORTED}
    outcome = Outcome(status=ended.get(status, RequestStatus.ERROR), cached_tokens=0, completion_tokens=0,
                      finish_reason="fine_tune", queue_ms=0.0, first_token_ms=None,
                      total_ms=1000 * (time.time() - job.created_at), prompt_tokens=job.trained_tokens,
                      billable=status is not JobStatus.FAILED)
    settle_hold(session.connection(), ticket, outcome)
    session.expire_all()  # the hold and the balance moved in plain SQL


def cancel_job(session: Session, account_id: str, job_id: str) -> FineTuningJob:
    """Cancel a job that has not ended and bill what it trained; the replica running it stops its
    worker when it sees the status. An ended job is left as it is."""
    job = get_job(session, account_id, job_id, for_update=True)
    if job.status in ENDED:
        return job
    job.status, job.finished_at = JobStatus.CANCELLED, time.time()
    session.flush()
    settle_job(session, job, JobStatus.CANCELLED)
    add_event(session, job.id, f"Fine-tuning job cancelled after {job.trained_tokens} trained tokens.")
    return job


# --- leasing, for the runner --------------------------------------------------------------

_TAKE = """
UPDATE fine_tuning_jobs SET status = 'running', owner = :owner, lease_until = :until,
  attempts = attempts + 1, started_at = COALESCE(started_at, :now)
WHERE id = (
  SELECT id FROM fine_tuning_jobs
  WHERE status = 'queued' OR (status = 'running' AND lease_until < :now)
  ORDER BY created_at LIMIT 1 {lock}
)
RETURNING id
"""


def others_waiting(session: Session, owner: str) -> bool:
    """Whether a job is queued, or running elsewhere (its replica may have stopped): a read that
    spares the idle poll a write transaction."""
    return session.scalar(select(FineTuningJob.id).where(
        (FineTuningJob.status == JobStatus.QUEUED)
        | ((FineTuningJob.status == JobStatus.RUNNING) & (FineTuningJob.owner != owner))).limit(1)) is not None


def take(engine: Engine, owner: str, lease_s: float) -> str | None:
    """Lease the oldest queued job (or a running one whose lease lapsed) for `lease_s` seconds."""
    now = time.time()
    lock = "FOR UPDATE SKIP LOCKED" if engine.dialect.name == "postgresql" else ""
    with engine.begin() as conn:
        row = conn.execute(text(_TAKE.format(lock=lock)), {"owner": owner, "until": now + lease_s, "now": now}).first()
    return None if row is None else row.id


def renew(engine: Engine, owner: str, job_id: str, lease_s: float) -> bool:
    """Extend the lease; False when the job is no longer this replica's to run (cancelled)."""
    with engine.begin() as conn:
        return conn.execute(update(FineTuningJob).where(
            FineTuningJob.id == job_id, FineTuningJob.owner == owner, FineTuningJob.status == JobStatus.RUNNING)
            .values(lease_until=time.time() + lease_s)).rowcount == 1


def release_stopped(session: Session, me: str) -> int:
    """Make the running jobs of replicas that stopped takeable at once; returns how many."""
    owners = set(session.scalars(select(FineTuningJob.owner).where(FineTuningJob.status == JobStatus.RUNNING)))
    dead = stopped(session, {o for o in owners if o}, me)
    if not dead:
        return 0
    return session.execute(update(FineTuningJob).where(
        FineTuningJob.status == JobStatus.RUNNING, FineTuningJob.owner.in_(dead)).values(lease_until=0.0)).rowcount


def held_by(session: Session, job_id: str, owner: str) -> FineTuningJob | None:
    """The job while this replica holds its lease and it is running; else None. Its row is
    locked (PostgreSQL) until the transaction ends, so a cancellation and the end cannot cross."""
    job = session.get(FineTuningJob, job_id, with_for_update=True)
    return job if job is not None and job.owner == owner and job.status == JobStatus.RUNNING else None


def end_job(session: Session, job_id: str, owner: str, status: JobStatus, *, model_path: str | None = None,
            error: dict | None = None) -> FineTuningJob | None:
    """End the job this replica runs (succeeded with its model, or failed) and settle its bill,
    in one transaction; None when it is not this replica's any more (it was cancelled)."""
    job = held_by(session, job_id, owner)
    if job is None:
        return None
    job.status, job.finished_at, job.owner = status, time.time(), None
    if status is JobStatus.SUCCEEDED:
        job.model_path, job.fine_tuned_model = model_path, model_name(job)
        job.trained_tokens = job.epoch_tokens * json.loads(job.hyperparameters)["n_epochs"]
    job.error = json.dumps(error) if error else None
    session.flush()
    settle_job(session, job, status)
    add_event(session, job.id, "The job has successfully completed." if status is JobStatus.SUCCEEDED
              else f"Fine-tuning failed: {(error or {}).get('message', 'unknown error')}",
              level="info" if status is JobStatus.SUCCEEDED else "error")
    return job


def served_models(session: Session) -> list[FineTuningJob]:
    """The jobs whose tuned models are served (succeeded, not deleted)."""
    return list(session.scalars(select(FineTuningJob).where(
        FineTuningJob.status == JobStatus.SUCCEEDED, FineTuningJob.fine_tuned_model.is_not(None),
        FineTuningJob.model_deleted_at.is_(None))))


def delete_model(session: Session, account_id: str, model: str) -> FineTuningJob:
    """Mark the account's tuned model deleted; `NotFound` when it is not the account's."""
    job = session.scalars(select(FineTuningJob).where(
        FineTuningJob.fine_tuned_model == model, FineTuningJob.account_id == account_id,
        FineTuningJob.model_deleted_at.is_(None))).first()
    if job is None:
        raise NotFound(f"The model {model!r} does not exist.")
    job.model_deleted_at = time.time()
    return job
