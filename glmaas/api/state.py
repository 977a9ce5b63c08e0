"""What the API needs from the rest of the system, built once per process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 600.0
    usage_retention_days: float = 90.0
    started_at: float = field(default_factory=time.time)
