"""The domain's exceptions. The API layer maps each to a status and code per dialect."""

from __future__ import annotations

from typing import Literal

AuthFailure = Literal["missing", "malformed", "expired", "invalid"]


class PlatformError(Exception):
    """Base of every error the platform raises on purpose; the message is safe to show."""


class AuthError(PlatformError):
    def __init__(self, failure: AuthFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure


class ModelNotAllowed(PlatformError):
    """The key may not call this model."""


class NotFound(PlatformError):
    """A named account, key or model does not exist."""


class Conflict(PlatformError):
    """The thing already exists."""


class DuplicateRequest(PlatformError):
    """The account already has a request with this request_id."""
