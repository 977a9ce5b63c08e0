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

    def db_url(self) -> str:
        from glmaas.store.db import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)
