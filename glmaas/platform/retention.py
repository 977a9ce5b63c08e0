"""Keeping the per-request usage rows small: rows older than the retention are deleted; the daily
totals (`usage_daily`) stay, so reports over any period remain exact."""

from __future__ import annotations

import time

from sqlalchemy import delete
from sqlalchemy.orm import Session

from glmaas.store.tables import UsageRecord

DEFAULT_RETENTION_DAYS = 90


def prune_usage_records(session: Session, retention_days: float, now: float | None = None) -> int:
    """Delete usage records older than `retention_days`; returns how many went."""
    cutoff = (now or time.time()) - retention_days * 86400
    return session.execute(delete(UsageRecord).where(UsageRecord.created_at < cutoff)).rowcount
