"""Admission and settlement: the two points where a request meets the platform's books.

`admit` runs before generation and decides whether the request may go on; `settle` runs exactly
once when it ends, however it ends (finished, failed after admission, aborted by the client), and
writes its usage record. The numbers settled are the ones the client is told.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.orm import Session

from glmaas.platform.auth import Principal
from glmaas.platform.errors import ModelNotAllowed
from glmaas.store.tables import UsageRecord

Status = Literal["ok", "error", "aborted"]


@dataclass
class Admission:
    """An admitted request, from admission to settlement."""

    request_id: str
    principal: Principal
    model: str
    prompt_tokens: int
    max_tokens: int
    admitted_at: float = field(default_factory=time.monotonic)
    settled: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a request ended."""

    status: Status
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: str | None
    queue_ms: float
    first_token_ms: float | None
    total_ms: float


class Meter:
    """Admits requests and settles them into usage records."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._sessions = session_factory

    def admit(
        self, principal: Principal, model: str, request_id: str, prompt_tokens: int, max_tokens: int
    ) -> Admission:
        """Admit a request or raise a `PlatformError` saying why not."""
        if not principal.may_use(model):
            raise ModelNotAllowed(f"This API key may not use the model {model!r}.")
        return Admission(request_id, principal, model, prompt_tokens, max_tokens)

    def settle(self, admission: Admission, outcome: Outcome) -> None:
        """Write the request's usage record. A second call for the same admission does nothing."""
        if admission.settled:
            return
        admission.settled = True
        with self._sessions() as session, session.begin():
            session.add(
                UsageRecord(
                    request_id=admission.request_id,
                    account_id=admission.principal.account_id,
                    key_id=admission.principal.key_id,
                    model=admission.model,
                    prompt_tokens=outcome.prompt_tokens,
                    cached_tokens=outcome.cached_tokens,
                    completion_tokens=outcome.completion_tokens,
                    status=outcome.status,
                    finish_reason=outcome.finish_reason,
                    queue_ms=outcome.queue_ms,
                    first_token_ms=outcome.first_token_ms,
                    total_ms=outcome.total_ms,
                    created_at=time.time(),
                )
            )
