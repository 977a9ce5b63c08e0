"""The admin credential: separate from tenant keys, from `GLMAAS_ADMIN_TOKEN` or the file
`admin.token` in the data dir (mode 0600, created on first use). Compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

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
    data_dir.mkdir(parents=True, exist_ok=True)
    token = PREFIX + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def is_admin(presented: str | None, token: str) -> bool:
    if not presented:
        return False
    value = presented.strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return hmac.compare_digest(value.encode(), token.encode())
