"""Operator actions, shared by the `glmaas` CLI, the `/admin` API and the web console: accounts,
top-ups, keys, prices, limits and usage reports. Each takes an open session inside the caller's
transaction."""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from glmaas.platform import ledger
from glmaas.platform.accounts import create_account, get_account
from glmaas.platform.keys import create_key, key_view, list_keys
from glmaas.platform.pricing import PriceSheet, all_prices, format_amount, set_price
from glmaas.platform.secrets import SecretBox
from glmaas.store.tables import Account, AccountModelLimit, ApiKey, Hold, LedgerEntry, UsageDaily

USAGE_DIMENSIONS = ("day", "account", "key", "model")
MAX_LIMIT = 2**31 - 1  # limits are 32-bit integer columns


def check_limits(**limits: int | None) -> None:
    """Refuse a negative or too large rpm/tpm/concurrency with a clear message."""
    for name, value in limits.items():
        if value is not None and not 0 <= value <= MAX_LIMIT:
            raise ValueError(f"{name} must be between 0 and {MAX_LIMIT}")


@dataclass(frozen=True)
class KeyOptions:
    name: str = ""
    models: tuple[str, ...] | None = None
    expires_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget: int | None = None

    def __post_init__(self) -> None:
        check_limits(rpm=self.rpm, tpm=self.tpm, concurrency=self.concurrency)
        if self.budget is not None and self.budget < 0:
            raise ValueError("budget cannot be negative")


def new_account(session: Session, name: str) -> dict:
    if not name or len(name) > 128 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError("an account name is 1-128 letters, digits, '-', '_' or '.'")
    return account_summary(session, create_account(session, name).name)


def topup(session: Session, name: str, amount: int, note: str = "") -> dict:
    account = get_account(session, name)
    ledger.credit(session, account.id, ledger.EntryKind.TOPUP, amount, note)
    return account_summary(session, name)


def adjust(session: Session, name: str, amount: int, note: str) -> dict:
    account = get_account(session, name)
    ledger.credit(session, account.id, ledger.EntryKind.ADJUSTMENT, amount, note)
    return account_summary(session, name)


def account_summary(session: Session, name: str) -> dict:
    account = get_account(session, name)
    held = session.scalar(select(func.coalesce(func.sum(Hold.amount), 0)).where(
        Hold.account_id == account.id, Hold.state == "open"))
    limits = session.scalars(select(AccountModelLimit).where(AccountModelLimit.account_id == account.id))
    return {
        "id": account.id,
        "name": account.name,
        "balance": format_amount(account.balance),
        "balance_micro": account.balance,
        "held_micro": int(held or 0),
        "keys": [asdict(k) for k in list_keys(session, name)],
        "limits": [{"model": r.model, "rpm": r.rpm, "tpm": r.tpm, "concurrency": r.concurrency}
                   for r in limits],
    }


def accounts_overview(session: Session) -> list[dict]:
    """Every account by name: its balance, what its open holds reserve and how many keys it has
    (and of those, how many are usable: not revoked nor expired)."""
    now = time.time()
    held = dict(session.execute(select(Hold.account_id, func.sum(Hold.amount)).where(Hold.state == "open")
                                .group_by(Hold.account_id)).all())
    keys: dict[str, list[int]] = {}
    for account_id, revoked_at, expires_at in session.execute(
            select(ApiKey.account_id, ApiKey.revoked_at, ApiKey.expires_at)):
        counts = keys.setdefault(account_id, [0, 0])
        counts[0] += 1
        counts[1] += revoked_at is None and (expires_at is None or expires_at > now)
    return [{"id": a.id, "name": a.name, "created_at": a.created_at, "balance": format_amount(a.balance),
             "balance_micro": a.balance, "held_micro": int(held.get(a.id) or 0),
             "keys": keys.get(a.id, [0, 0])[0], "usable_keys": keys.get(a.id, [0, 0])[1]}
            for a in session.scalars(select(Account).order_by(Account.name))]


def ledger_entries(session: Session, name: str, limit: int = 100,
                   kinds: Collection[str] | None = None) -> list[dict]:
    """The account's latest ledger entries (of `kinds`, or all), newest first."""
    account = get_account(session, name)
    query = select(LedgerEntry).where(LedgerEntry.account_id == account.id)
    if kinds is not None:
        query = query.where(LedgerEntry.kind.in_(list(kinds)))
    rows = session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit))
    return [{"id": r.id, "kind": r.kind, "amount": format_amount(r.amount), "amount_micro": r.amount,
             "request_id": r.request_id, "key_id": r.key_id, "note": r.note, "created_at": r.created_at}
            for r in rows]


def keys_with_limits(session: Session, account: str | None = None) -> list[dict]:
    """Keys as `list_keys` shows them, with their limits, budget and what they spent and hold."""
    extra = {r.id: r for r in session.execute(select(ApiKey.id, ApiKey.rpm, ApiKey.tpm, ApiKey.concurrency,
                                                     ApiKey.budget, ApiKey.spent, ApiKey.held))}
    return [{**asdict(k), "rpm": extra[k.id].rpm, "tpm": extra[k.id].tpm,
             "concurrency": extra[k.id].concurrency, "budget_micro": extra[k.id].budget,
             "spent_micro": extra[k.id].spent, "held_micro": extra[k.id].held}
            for k in list_keys(session, account)]


def new_key(session: Session, box: SecretBox, account_name: str, options: KeyOptions) -> tuple[dict, str]:
    account = get_account(session, account_name)
    row, key = create_key(session, box, account, name=options.name, expires_at=options.expires_at,
                          allowed_models=options.models)
    row.rpm, row.tpm, row.concurrency, row.budget = options.rpm, options.tpm, options.concurrency, options.budget
    session.flush()
    return asdict(key_view(session, row.id)), key


def set_account_limits(session: Session, name: str, model: str, rpm: int | None, tpm: int | None,
                       concurrency: int | None) -> dict:
    check_limits(rpm=rpm, tpm=tpm, concurrency=concurrency)
    account = get_account(session, name)
    row = session.get(AccountModelLimit, (account.id, model))
    if row is None:
        session.add(AccountModelLimit(account_id=account.id, model=model, rpm=rpm, tpm=tpm,
                                      concurrency=concurrency))
    else:
        row.rpm, row.tpm, row.concurrency = rpm, tpm, concurrency
    session.flush()
    return account_summary(session, name)


def put_price(session: Session, model: str, price: PriceSheet) -> dict:
    set_price(session, model, price)
    return prices(session)


def prices(session: Session) -> dict:
    return {m: {"input": format_amount(p.input), "cached_input": format_amount(p.cached_input),
                "output": format_amount(p.output)} for m, p in all_prices(session).items()}


def usage_report(session: Session, by: tuple[str, ...], account: str | None = None) -> list[dict]:
    """Usage totals from the daily aggregates, grouped by any of day, account, key, model."""
    unknown = set(by) - set(USAGE_DIMENSIONS)
    if unknown or not by:
        raise ValueError(f"--by takes a comma-separated subset of {', '.join(USAGE_DIMENSIONS)}")
    columns = {"day": UsageDaily.day, "account": Account.name, "key": UsageDaily.key_id,
               "model": UsageDaily.model}
    groups = [columns[d] for d in by]
    query = (select(*groups, func.sum(UsageDaily.requests), func.sum(UsageDaily.prompt_tokens),
                    func.sum(UsageDaily.cached_tokens), func.sum(UsageDaily.completion_tokens),
                    func.sum(UsageDaily.cost))
             .join(Account, Account.id == UsageDaily.account_id).group_by(*groups).order_by(*groups))
    if account is not None:
        query = query.where(Account.name == account)
    rows = []
    for row in session.execute(query):
        dims = dict(zip(by, row[: len(by)], strict=True))
        requests, prompt, cached, completion, cost = (int(v or 0) for v in row[len(by):])
        rows.append({**dims, "requests": requests, "prompt_tokens": prompt, "cached_tokens": cached,
                     "completion_tokens": completion, "total_tokens": prompt + completion,
                     "cost": format_amount(cost), "cost_micro": cost})
    return rows

