"""Settings: one object, from command-line options and the environment.

Every default of a deployment is named here once; the `glmaas` command's options and the API's
state read them from this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "GLMAAS_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.local/share/glmaas")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 600.0  # seconds a generation may run before it is stopped
DEFAULT_USAGE_RETENTION_DAYS = 90.0  # per-request usage rows older than this are pruned
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024  # the largest upload to /files
DEFAULT_BATCH_WORKERS = 2  # background workers per replica (batch lines, async chat); 0: none
DEFAULT_BATCH_SLOT_SHARE = 0.5  # the most of a model's engine slots background work may take
DEFAULT_BATCH_PRICE_PERCENT = 50  # batch lines sell at this share of the model's prices
DEFAULT_BATCH_LEASE_S = 30.0  # a dead replica's background work is taken over after this
DEFAULT_FINE_TUNING_JOBS = 1  # fine-tuning jobs trained at once per replica (0: none here)
DEFAULT_FINE_TUNING_THREADS = None  # torch threads of a training worker; None: every core but one
DEFAULT_BATCH_MAX_ATTEMPTS = 3  # a background item whose attempts keep dying fails after this many
DEFAULT_DRAIN_TIMEOUT = 30.0  # seconds a shutdown waits for requests in flight before cutting them
DEFAULT_METRICS_HOST = "127.0.0.1"  # where --metrics-port listens (no credential asked there)
LOG_FORMATS = ("text", "json")


def resolve_data_dir(option: str | None) -> Path:
    """`--data-dir`, else `GLMAAS_DATA_DIR`, else ~/.local/share/glmaas."""
    raw = option or os.environ.get(DATA_DIR_ENV) or str(DEFAULT_DATA_DIR)
    return Path(raw).expanduser().resolve()


@dataclass
class Settings:
    data_dir: Path
    database_url: str | None = None
    redis_url: str | None = None
    models: list[str] = field(default_factory=list)
    model_files: list[Path] = field(default_factory=list)  # --models FILE.toml
    default_model: bool = True
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    usage_retention_days: float = DEFAULT_USAGE_RETENTION_DAYS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    batch_workers: int = DEFAULT_BATCH_WORKERS
    batch_slot_share: float = DEFAULT_BATCH_SLOT_SHARE
    batch_price_percent: int = DEFAULT_BATCH_PRICE_PERCENT
    batch_lease_s: float = DEFAULT_BATCH_LEASE_S
    batch_max_attempts: int = DEFAULT_BATCH_MAX_ATTEMPTS
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    metrics_port: int | None = None  # serve /metrics there too, without the admin token
    metrics_host: str = DEFAULT_METRICS_HOST
    log_format: str = "text"
    log_content: bool = False  # request and response bodies in the request log lines
    fine_tuning_jobs: int = DEFAULT_FINE_TUNING_JOBS
    fine_tuning_threads: int | None = DEFAULT_FINE_TUNING_THREADS

    def db_url(self) -> str:
        from glmaas.store.db import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)
