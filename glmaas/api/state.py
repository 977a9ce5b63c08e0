"""What the API needs from the rest of the system, built once per process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmaas import config
from glmaas.engines.registry import ModelRegistry
from glmaas.jobs.gate import SlotGate
from glmaas.platform.auth import Authenticator
from glmaas.platform.metering import Meter
from glmaas.platform.secrets import SecretBox
from glmaas.store.blobs import BlobStore
from glmaas.store.db import Database


@dataclass
class AppState:
    db: Database
    registry: ModelRegistry
    authenticator: Authenticator
    meter: Meter
    box: SecretBox
    admin_token: str
    blobs: BlobStore
    gate: SlotGate
    max_body_bytes: int = config.DEFAULT_MAX_BODY_BYTES
    request_timeout: float = config.DEFAULT_REQUEST_TIMEOUT
    usage_retention_days: float = config.DEFAULT_USAGE_RETENTION_DAYS
    max_file_bytes: int = config.DEFAULT_MAX_FILE_BYTES
    batch_workers: int = config.DEFAULT_BATCH_WORKERS
    batch_price_percent: int = config.DEFAULT_BATCH_PRICE_PERCENT
    batch_lease_s: float = config.DEFAULT_BATCH_LEASE_S
    batch_max_attempts: int = config.DEFAULT_BATCH_MAX_ATTEMPTS
    # The Redis client when limits are shared through Redis (the readiness probe pings it).
    redis: Any = None
    drain_timeout: float = config.DEFAULT_DRAIN_TIMEOUT
    # Whether request log lines carry the request and response bodies (`--log-content`).
    log_content: bool = False
    # Where fine-tuning jobs keep their files; None: no fine-tuning runs here.
    data_dir: Path | None = None
    fine_tuning_jobs: int = config.DEFAULT_FINE_TUNING_JOBS
    fine_tuning_threads: int | None = config.DEFAULT_FINE_TUNING_THREADS
    started_at: float = field(default_factory=time.time)
