"""The admin credential: separate from tenant keys, from `GLMAAS_ADMIN_TOKEN` or the file
`admin.token` in the data dir (mode 0600, created on first use). Compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from glmaas.platform.auth import strip_bearer
from glmaas.platform.secrets import create_private_file

ADMIN_TOKEN_ENV = "GLMAAS_ADMIN_TOKEN"
ADMIN_TOKEN_FILE = "admin.token"
PREFIX = "glmaas-admin-"


def load_admin_token(data_dir: Path) -> str:
    env = os.environ.get(ADMIN_TOKEN_ENV)
    if env:
        return env
    path = data_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return path.read_text().strip()
    token = PREFIX + secrets.token_urlsafe(32)
    create_private_file(path, (token + "\n").encode())
    return token


def is_admin(presented: str | None, token: str) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(strip_bearer(presented).encode(), token.encode())
