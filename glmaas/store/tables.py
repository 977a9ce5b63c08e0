"""The tables. Amounts are integer micro-units; times are UTC epoch seconds (float) unless a
column name says `_ms`."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    """A tenant: owns keys, a balance and usage."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    # The sum of the account's ledger entries, kept in step in the same transaction.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)


class ApiKey(Base):
    """An API key `<id>.<secret>`. The secret is kept only as a keyed hash (to verify raw keys)
    and encrypted under the master key (to verify JWTs, which are signed with the secret)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Comma-separated model ids this key may call; NULL means every model.
    allowed_models: Mapped[str | None] = mapped_column(Text, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Most the key may spend, in micro-units; spent and held so far, kept with the ledger.
    budget: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    spent: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageRecord(Base):
    """One row per admitted request, written once when the request ends."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_account_created", "account_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    account_id: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(128))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    # ok | error | aborted
    status: Mapped[str] = mapped_column(String(16))
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    queue_ms: Mapped[float] = mapped_column(Float)
    first_token_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    cost: Mapped[int] = mapped_column(BigInteger, default=0)
    # exact | estimated: whether the counts are the engine's or our estimate (see UsageSource).
    usage_source: Mapped[str] = mapped_column(String(16), default="exact", server_default="exact")
    # The end user the caller named (`user` / `user_id`), for attributing abuse; None when not named.
    end_user: Mapped[str | None] = mapped_column(String(256), nullable=True)


class Price(Base):
    """Price of a model per million tokens, in micro-units. A model with no row is free."""

    __tablename__ = "prices"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    input: Mapped[int] = mapped_column(BigInteger)
    cached_input: Mapped[int] = mapped_column(BigInteger)
    output: Mapped[int] = mapped_column(BigInteger)
    # Per million tokens trained by a fine-tuning job.
    training: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[float] = mapped_column(Float)


class AccountModelLimit(Base):
    """Limits of one account on one model (`*` for every model)."""

    __tablename__ = "account_model_limits"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)


class LedgerEntry(Base):
    """One append-only movement of money. Never updated, never deleted."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_account_id", "account_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    # topup | hold | settlement | release | adjustment | refund
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)


class Hold(Base):
    """An admitted request's reservation, open until its one settlement.

    `progress_tokens` is the request's last durable count of generated tokens: recovery after a
    crash settles from it."""

    __tablename__ = "holds"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    amount: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    max_tokens: Mapped[int] = mapped_column(Integer)
    price_input: Mapped[int] = mapped_column(BigInteger)
    price_cached_input: Mapped[int] = mapped_column(BigInteger)
    price_output: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    progress_tokens: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str] = mapped_column(String(128))
    # open | settled
    state: Mapped[str] = mapped_column(String(8), index=True)
    created_at: Mapped[float] = mapped_column(Float)


class Replica(Base):
    """A running `glmaas serve` process, for recovering the holds of one that died."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    heartbeat_at: Mapped[float] = mapped_column(Float)


class UsageDaily(Base):
    """Per-day totals, upserted with each settlement so reports never scan request rows."""

    __tablename__ = "usage_daily"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)


class StoredFile(Base):
    """An uploaded file (or a batch's output), owned by one account. Its bytes are a blob
    (`glmaas.store.blobs`)."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    # batch | fine-tune (uploads); batch_output (written by a batch)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class FileBlob(Base):
    """A file's bytes, when blobs live in the database (so that every replica sees them)."""

    __tablename__ = "file_blobs"

    file_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Batch(Base):
    """A batch of requests read from an uploaded file; its lines are `WorkItem`s."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(32))
    # The wire dialect it was created in: its lines' errors are written in it.
    dialect: Mapped[str] = mapped_column(String(8))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(8))
    # validating | failed | in_progress | finalizing | completed | expired | cancelling | cancelled
    status: Mapped[str] = mapped_column(String(16))
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON, when validation failed
    metadata_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    in_progress_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    failed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancelling_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancelled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    expired_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class WorkItem(Base):
    """One unit of background work, leased by a worker of any replica: a batch line or an async
    chat task. A lease is `owner` + `lease_until`; an expired lease is taken over, and each
    attempt settles under its own request id, so an item ends exactly once."""

    __tablename__ = "work_items"
    __table_args__ = (Index("ix_work_items_state", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    # batch_line | async_chat
    kind: Mapped[str] = mapped_column(String(16))
    batch_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    line_no: Mapped[int] = mapped_column(Integer, default=0)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(32))
    dialect: Mapped[str] = mapped_column(String(8))  # the wire dialect its errors are written in
    endpoint: Mapped[str] = mapped_column(String(64))  # what it calls: /v1/chat/completions, ...
    model: Mapped[str] = mapped_column(String(128), default="")
    custom_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    body: Mapped[str] = mapped_column(Text)  # the request body, JSON
    # pending | running | done | failed | cancelled
    state: Mapped[str] = mapped_column(String(12))
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: the output or error line
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class UpstreamKey(Base):
    """An upstream server's API key, stored for `key_secret=NAME` in an upstream spec: sealed
    under the master key (AES-GCM, the name as associated data), never kept in clear."""

    __tablename__ = "upstream_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[float] = mapped_column(Float)


class FineTuningJob(Base):
    """A fine-tuning job: a base model adapted to an uploaded file of conversations, leased to one
    replica at a time (`owner` + `lease_until`, like a `WorkItem`), trained in a worker process.
    Its bill is a hold of its own (request id = the job id), settled once when it ends."""

    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (Index("ix_fine_tuning_jobs_status", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))  # the base model
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # lora | full
    method: Mapped[str] = mapped_column(String(8))
    hyperparameters: Mapped[str] = mapped_column(Text)  # JSON: n_epochs, batch_size, learning_rate_multiplier
    # validating_files | queued | running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16))
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    model_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # the exported GGUF
    model_deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Tokens of one epoch (prompt and assistant tokens, as trained), and those trained so far.
    epoch_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: code, message, param
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class FineTuningEvent(Base):
    """A line of a job's log: a message, or the metrics of a training step."""

    __tablename__ = "fine_tuning_events"
    __table_args__ = (Index("ix_fine_tuning_events_job", "job_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(8))  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON metrics


class FineTuningCheckpoint(Base):
    """The checkpoint a job saved at the end of an epoch (LoRA or full weights, optimizer, step)."""

    __tablename__ = "fine_tuning_checkpoints"
    __table_args__ = (Index("ix_fine_tuning_checkpoints_job", "job_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    step_number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    metrics: Mapped[str] = mapped_column(Text)  # JSON
