"""Settings: one object, from command-line options and the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "GLMAAS_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.local/share/glmaas")


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
    default_model: bool = True
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 600.0
    usage_retention_days: float = 90.0

    def db_url(self) -> str:
        from glmaas.store.db import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)
