"""What the API needs from the rest of the system, built once per process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from glmaas import config
from glmaas.engines.registry import ModelRegistry
from glmaas.platform.auth import Authenticator
from glmaas.platform.metering import Meter
from glmaas.platform.secrets import SecretBox
from glmaas.store.db import Database


@dataclass
class AppState:
    db: Database
    registry: ModelRegistry
    authenticator: Authenticator
    meter: Meter
    box: SecretBox
    admin_token: str
    max_body_bytes: int = config.DEFAULT_MAX_BODY_BYTES
    request_timeout: float = config.DEFAULT_REQUEST_TIMEOUT
    usage_retention_days: float = config.DEFAULT_USAGE_RETENTION_DAYS
    started_at: float = field(default_factory=time.time)
