"""The master key and what is derived from it.

The master key is 32 random bytes, from `GLMAAS_MASTER_KEY` (urlsafe base64) or from the file
`master.key` in the data dir (created with mode 0600 on first use). From it we derive, with HKDF,
one key to hash key secrets (so a raw key can be verified without storing its secret) and one key
to seal secrets with AES-GCM (JWT verification needs the secret itself), and one more to seal
short-lived state handed to a browser (the console's session cookie).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_ENV = "GLMAAS_MASTER_KEY"
MASTER_KEY_FILE = "master.key"


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def load_master_key(data_dir: Path) -> bytes:
    """The master key from the environment, else from the data dir (created if absent)."""
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        key = base64.urlsafe_b64decode(env.encode() + b"=" * (-len(env) % 4))
        if len(key) < 32:
            raise ValueError(f"{MASTER_KEY_ENV} must decode to at least 32 bytes")
        return key
    path = data_dir / MASTER_KEY_FILE
    if path.exists():
        return base64.urlsafe_b64decode(path.read_bytes().strip())
    key = secrets.token_bytes(32)
    create_private_file(path, base64.urlsafe_b64encode(key) + b"\n")
    return key


def create_private_file(path: Path, content: bytes) -> None:
    """Write a new file that only its owner may read (mode 0600), creating its folder.

    The mode is set as the file is created, so the content is never readable by others, not
    even for a moment; an existing file is an error rather than silently replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


class SecretBox:
    """Keyed hashing and sealing of key secrets, and sealing of state a client keeps for us."""

    def __init__(self, master: bytes) -> None:
        self._hash_key = _derive(master, b"glmaas key-secret hash v1")
        self._aead = AESGCM(_derive(master, b"glmaas key-secret seal v1"))
        self._state_aead = AESGCM(_derive(master, b"glmaas client-state seal v1"))

    def digest(self, secret: str) -> bytes:
        return hmac.new(self._hash_key, secret.encode(), hashlib.sha256).digest()

    def matches(self, secret: str, digest: bytes) -> bool:
        return hmac.compare_digest(self.digest(secret), digest)

    def seal(self, secret: str, *, key_id: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, secret.encode(), key_id.encode())

    def open(self, sealed: bytes, *, key_id: str) -> str:
        return self._aead.decrypt(sealed[:12], sealed[12:], key_id.encode()).decode()

    def seal_state(self, data: bytes, *, purpose: str) -> str:
        """`data` encrypted and authenticated for `purpose`, as URL-safe text a client may keep
        (a cookie): it can neither read it nor change it unnoticed."""
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._state_aead.encrypt(nonce, data, purpose.encode())
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open_state(self, text: str, *, purpose: str) -> bytes | None:
        """What `seal_state` sealed for `purpose`; None when `text` is not such a thing."""
        try:
            sealed = base64.urlsafe_b64decode(text.encode() + b"=" * (-len(text) % 4))
            return self._state_aead.decrypt(sealed[:12], sealed[12:], purpose.encode())
        except (ValueError, InvalidTag):
            return None
