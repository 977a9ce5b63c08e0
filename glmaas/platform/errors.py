"""The platform's refusals: one exception tree, each class carrying the `Refusal` kind it is.

The API layer maps a kind to a status and a code per dialect through one table, so a new refusal
is a class here and a row there. Messages are written for the caller: safe to show.
"""

from __future__ import annotations

import enum
import math
from typing import Literal

AuthFailure = Literal["missing", "malformed", "expired", "invalid"]
RateLimitKind = Literal["rpm", "tpm", "concurrency"]


class Refusal(enum.StrEnum):
    """Every reason the platform turns a request down."""

    AUTH_MISSING = "auth_missing"
    AUTH_MALFORMED = "auth_malformed"
    AUTH_EXPIRED = "auth_expired"
    AUTH_INVALID = "auth_invalid"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    BUDGET_EXCEEDED = "budget_exceeded"
    RATE_LIMITED = "rate_limited"
    TOKEN_RATE_LIMITED = "token_rate_limited"
    CONCURRENCY_LIMITED = "concurrency_limited"
    DUPLICATE_REQUEST = "duplicate_request"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid_request"


class PlatformError(Exception):
    """Base of every error the platform raises on purpose; the message is safe to show."""

    kind: Refusal = Refusal.INVALID


class AuthError(PlatformError):
    """The credential is missing, malformed, expired or not valid."""

    def __init__(self, failure: AuthFailure, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.kind = Refusal(f"auth_{failure}")


class ModelNotAllowed(PlatformError):
    """The key may not call this model."""

    kind = Refusal.MODEL_NOT_ALLOWED


class InsufficientBalance(PlatformError):
    """The account cannot cover the request's worst-case cost."""

    kind = Refusal.INSUFFICIENT_BALANCE


class BudgetExceeded(PlatformError):
    """The key's budget cannot cover the request's worst-case cost."""

    kind = Refusal.BUDGET_EXCEEDED


class RateLimited(PlatformError):
    """A rate limit of the key or of the account on this model is reached."""

    _KINDS = {"rpm": Refusal.RATE_LIMITED, "tpm": Refusal.TOKEN_RATE_LIMITED,
              "concurrency": Refusal.CONCURRENCY_LIMITED}
    _WHAT = {"rpm": "requests per minute", "tpm": "tokens per minute",
             "concurrency": "concurrent requests"}

    def __init__(self, scope: str, limit_kind: RateLimitKind, limit: int, retry_after: float) -> None:
        who = "API key" if scope.startswith("key:") else "account on this model"
        super().__init__(f"Rate limit reached: the {who} allows {limit} {self._WHAT[limit_kind]}. "
                         f"Retry after {math.ceil(retry_after)} s.")
        self.scope = scope
        self.limit_kind = limit_kind
        self.kind = self._KINDS[limit_kind]
        self.limit = limit
        self.retry_after = retry_after


class DuplicateRequest(PlatformError):
    """The account already has a request with this request_id."""

    kind = Refusal.DUPLICATE_REQUEST


class NotFound(PlatformError):
    """A named account, key or model does not exist."""

    kind = Refusal.NOT_FOUND


class Conflict(PlatformError):
    """The thing already exists."""

    kind = Refusal.CONFLICT
