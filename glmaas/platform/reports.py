"""Usage reports: totals grouped by key and model (and more dimensions as they come)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from glmaas.store.tables import Account, UsageRecord


@dataclass(frozen=True)
class UsageTotal:
    account: str
    key_id: str
    model: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_by_key_and_model(session: Session) -> list[UsageTotal]:
    """Totals of every usage record, one row per (account, key, model)."""
    query = (
        select(
            Account.name,
            UsageRecord.key_id,
            UsageRecord.model,
            func.count(),
            func.sum(UsageRecord.prompt_tokens),
            func.sum(UsageRecord.cached_tokens),
            func.sum(UsageRecord.completion_tokens),
        )
        .join(Account, Account.id == UsageRecord.account_id)
        .group_by(Account.name, UsageRecord.key_id, UsageRecord.model)
        .order_by(Account.name, UsageRecord.key_id, UsageRecord.model)
    )
    return [UsageTotal(a, k, m, int(n), int(p), int(c), int(o)) for a, k, m, n, p, c, o in session.execute(query)]
