"""The ledger: append-only entries, balances folded from them, holds and their one settlement.

Entry kinds and signs (an account's balance is the sum of its entries):

  topup       +amount      money in
  hold        -worst case  admission reserves the worst-case cost of a request
  release     +worst case  the end of the request gives the reservation back ...
  settlement  -exact cost  ... and charges what the request really cost
  adjustment  ±amount      an operator's correction
  refund      +amount      money given back for a settled request

`accounts.balance` and `api_keys.spent/held` are caches of these sums, updated in the same
transaction as the entries. Every function here runs inside the caller's transaction; the ones on
the request path use the hand-written statements of `glmaas.store.sql`.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from glmaas.platform.errors import BudgetExceeded, InsufficientBalance
from glmaas.platform.pricing import PriceSheet, cost, format_amount, hold_amount
from glmaas.store.sql import Books, run
from glmaas.store.tables import Hold, LedgerEntry


class EntryKind(enum.StrEnum):
    """The kinds of ledger entry (signs in the module docstring)."""

    TOPUP = "topup"
    HOLD = "hold"
    RELEASE = "release"
    SETTLEMENT = "settlement"
    ADJUSTMENT = "adjustment"
    REFUND = "refund"


# The entries an operator writes by hand; the others belong to requests.
MANUAL_ENTRY_KINDS = frozenset({EntryKind.TOPUP, EntryKind.ADJUSTMENT, EntryKind.REFUND})


class RequestStatus(enum.StrEnum):
    """How a request ended, as its usage record says."""

    OK = "ok"  # finished: stop, length or a stop string
    ERROR = "error"  # an engine fault
    ABORTED = "aborted"  # the client went away
    TIMEOUT = "timeout"  # past the server's time limit
    RECOVERED = "recovered"  # settled after a crash from its last durable progress


class UsageSource(enum.StrEnum):
    """Where a usage record's token counts come from."""

    EXACT = "exact"  # the engine's own count (a local engine's, or an upstream's usage)
    ESTIMATED = "estimated"  # our count of an upstream's text, when it reported no usage


@dataclass(frozen=True)
class HoldTicket:
    """What admission reserved; enough to settle without reading the hold back."""

    request_id: str
    account_id: str
    key_id: str
    model: str
    amount: int
    prompt_tokens: int
    price: PriceSheet


@dataclass(frozen=True)
class Settlement:
    request_id: str
    cost: int
    completion_tokens: int


def _entry(conn: Books, account_id: str, kind: EntryKind, amount: int, *, request_id: str | None = None,
           key_id: str | None = None, note: str = "", now: float | None = None) -> None:
    run(conn, "insert_entry", account_id=account_id, kind=kind, amount=amount, request_id=request_id,
        key_id=key_id, note=note, created_at=now or time.time())


def credit(session: Session, account_id: str, kind: EntryKind, amount: int, note: str = "",
           request_id: str | None = None) -> int:
    """A top-up, adjustment or refund; returns the new balance."""
    if kind not in MANUAL_ENTRY_KINDS:
        raise ValueError(f"{kind!r} is not a manual entry kind")
    if kind in (EntryKind.TOPUP, EntryKind.REFUND) and amount <= 0:
        raise ValueError(f"a {kind} must be positive")
    conn = session.connection()
    _entry(conn, account_id, kind, amount, note=note, request_id=request_id)
    run(conn, "credit_account", account_id=account_id, amount=amount)
    session.expire_all()  # the balance moved in plain SQL: loaded Account rows are stale
    return balance(conn, account_id)


def balance(conn: Books | Session, account_id: str) -> int:
    """The cached balance (equal to `folded_balance`)."""
    if isinstance(conn, Session):
        conn = conn.connection()
    return int(run(conn, "account_balance", account_id=account_id).scalar() or 0)


def folded_balance(session: Session, account_id: str) -> int:
    """The balance as the sum of the account's entries: the definition."""
    return int(session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0))
                              .where(LedgerEntry.account_id == account_id)))


def place_hold(conn: Books, *, request_id: str, account_id: str, key_id: str, model: str,
               price: PriceSheet, prompt_tokens: int, max_tokens: int, owner: str,
               budgeted: bool = True) -> HoldTicket:
    """Reserve the worst-case cost of a request, or raise `InsufficientBalance`/`BudgetExceeded`
    (or `IntegrityError` when the account already has a hold with this request id: the caller's
    transaction is then rolled back whole).

    The checks are conditional updates, so two requests racing for the last of a balance cannot
    both pass, on SQLite or PostgreSQL. On PostgreSQL, for a key without a budget, the whole step
    is one statement (safe under autocommit); a budget needs two checks, hence a transaction."""
    ticket, hold = hold_of(request_id=request_id, account_id=account_id, key_id=key_id, model=model,
                           price=price, prompt_tokens=prompt_tokens, max_tokens=max_tokens, owner=owner)
    amount, now = ticket.amount, hold["created_at"]
    if amount > 0 and not budgeted and conn.dialect.name == "postgresql":
        if not run(conn, "pg_place_hold", **hold).scalar():
            raise _insufficient(conn, account_id, amount, prompt_tokens, max_tokens)
        return ticket
    if amount > 0:
        if not run(conn, "debit_account", account_id=account_id, amount=amount).rowcount:
            raise _insufficient(conn, account_id, amount, prompt_tokens, max_tokens)
        if not run(conn, "hold_key_budget", key_id=key_id, amount=amount).rowcount:
            raise BudgetExceeded(f"The API key's budget cannot cover this request (up to "
                                 f"{format_amount(amount)}). Lower max_tokens or raise the budget.")
        _entry(conn, account_id, EntryKind.HOLD, -amount, request_id=request_id, key_id=key_id, now=now)
    run(conn, "insert_hold", **hold)
    return ticket


def hold_of(*, request_id: str, account_id: str, key_id: str, model: str, price: PriceSheet,
            prompt_tokens: int, max_tokens: int, owner: str) -> tuple[HoldTicket, dict[str, Any]]:
    """The ticket of a request's hold and the parameters of the statements that write it."""
    amount = hold_amount(price, prompt_tokens, max_tokens)
    hold = dict(account_id=account_id, request_id=request_id, key_id=key_id, model=model, amount=amount,
                prompt_tokens=prompt_tokens, max_tokens=max_tokens, price_input=price.input,
                price_cached_input=price.cached_input, price_output=price.output, owner=owner,
                created_at=time.time())
    return HoldTicket(request_id, account_id, key_id, model, amount, prompt_tokens, price), hold


def insufficient_balance(amount: int, prompt_tokens: int, max_tokens: int, balance_now: int) -> InsufficientBalance:
    return InsufficientBalance(
        f"Insufficient balance: this request may cost up to {format_amount(amount)} "
        f"({prompt_tokens} prompt tokens, up to {max_tokens} output tokens) and the "
        f"account has {format_amount(balance_now)}. Top up, or lower max_tokens.")


def _insufficient(conn: Books, account_id: str, amount: int, prompt_tokens: int,
                  max_tokens: int) -> InsufficientBalance:
    return insufficient_balance(amount, prompt_tokens, max_tokens, balance(conn, account_id))


def record_progress(conn: Books, account_id: str, request_id: str, completion_tokens: int,
                    cached_tokens: int) -> None:
    """Make the request's progress durable: recovery after a crash bills from it."""
    run(conn, "record_progress", account_id=account_id, request_id=request_id,
        progress_tokens=completion_tokens, cached_tokens=cached_tokens)


@dataclass(frozen=True)
class Outcome:
    """How a request ended: what its settlement charges for and its usage record says."""

    status: RequestStatus
    cached_tokens: int
    completion_tokens: int
    finish_reason: str | None
    queue_ms: float
    first_token_ms: float | None
    total_ms: float
    # The prompt as the engine counted it; None: as admitted (the hold's count).
    prompt_tokens: int | None = None
    usage_source: UsageSource = UsageSource.EXACT
    # The end user the request named (`user` / `user_id`), recorded for attribution only.
    end_user: str | None = None
    # False when the client received nothing it can use: a non-streamed request that failed, or a
    # request a crash interrupted before it made anything durable (see platform.recovery).
    billable: bool = True


def settle_hold(conn: Books, ticket: HoldTicket, facts: Outcome) -> Settlement | None:
    """Close the hold with its one settlement: charge the exact cost, release the reservation,
    write the usage record and the day's totals. Returns None (and changes nothing) when the hold
    was already settled, so a settlement can never happen twice. On PostgreSQL this is one
    statement, safe under autocommit."""
    if conn.dialect.name == "postgresql":
        params = pg_settlement(ticket, facts)
        claimed = run(conn, "pg_settle_hold", **params).scalar()
        return Settlement(ticket.request_id, params["charged"], facts.completion_tokens) if claimed else None
    now = time.time()
    prompt_tokens = _prompt_tokens(ticket, facts)
    charged = charge_of(ticket, facts)
    if not run(conn, "claim_hold", account_id=ticket.account_id, request_id=ticket.request_id).rowcount:
        return None
    run(conn, "insert_release_and_settlement", account_id=ticket.account_id, request_id=ticket.request_id,
        key_id=ticket.key_id, released=ticket.amount, charged=-charged, created_at=now)
    if ticket.amount:
        run(conn, "credit_account", account_id=ticket.account_id, amount=ticket.amount - charged)
        run(conn, "settle_key", key_id=ticket.key_id, amount=ticket.amount, charged=charged)
    usage = dict(account_id=ticket.account_id, key_id=ticket.key_id, model=ticket.model,
                 prompt_tokens=prompt_tokens, cached_tokens=facts.cached_tokens,
                 completion_tokens=facts.completion_tokens, cost=charged)
    run(conn, "insert_usage", request_id=ticket.request_id, status=facts.status, usage_source=facts.usage_source,
        end_user=facts.end_user,
        finish_reason=facts.finish_reason, queue_ms=facts.queue_ms, first_token_ms=facts.first_token_ms,
        total_ms=facts.total_ms, created_at=now, **usage)
    run(conn, "add_daily", day=_day(now), **usage)
    return Settlement(ticket.request_id, charged, facts.completion_tokens)


def _prompt_tokens(ticket: HoldTicket, facts: Outcome) -> int:
    """The prompt as the engine counted it, else as admitted."""
    return ticket.prompt_tokens if facts.prompt_tokens is None else facts.prompt_tokens


def charge_of(ticket: HoldTicket, facts: Outcome) -> int:
    """What the settlement of `ticket` charges for `facts`."""
    # The hold covers every outcome (an upstream's prompt count beyond our estimate included);
    # clamp so nothing can charge beyond it.
    return min(cost(ticket.price, _prompt_tokens(ticket, facts), facts.cached_tokens, facts.completion_tokens),
               ticket.amount) if ticket.amount and facts.billable else 0


def pg_settlement(ticket: HoldTicket, facts: Outcome) -> dict[str, Any]:
    """The parameters of `pg_settle_hold`, the settlement as one PostgreSQL statement."""
    now = time.time()
    return dict(account_id=ticket.account_id, request_id=ticket.request_id, key_id=ticket.key_id,
                model=ticket.model, released=ticket.amount, charged=charge_of(ticket, facts),
                prompt_tokens=_prompt_tokens(ticket, facts),
                cached_tokens=facts.cached_tokens, completion_tokens=facts.completion_tokens,
                status=facts.status, usage_source=facts.usage_source, end_user=facts.end_user,
                finish_reason=facts.finish_reason, queue_ms=facts.queue_ms,
                first_token_ms=facts.first_token_ms, total_ms=facts.total_ms, created_at=now, day=_day(now))


def _day(now: float) -> str:
    """The UTC day of `now`, as the day totals name it."""
    return _day_named(int(now // 86_400))  # POSIX time has 86,400 seconds in every day


@functools.lru_cache(maxsize=4)
def _day_named(day: int) -> str:
    # Formatting a date costs more than the rest of a settlement's parameters: once a day.
    return dt.datetime.fromtimestamp(day * 86_400, dt.UTC).strftime("%Y-%m-%d")


def ticket_of(hold: Hold) -> HoldTicket:
    return HoldTicket(hold.request_id, hold.account_id, hold.key_id, hold.model, hold.amount,
                      hold.prompt_tokens, PriceSheet(hold.price_input, hold.price_cached_input, hold.price_output))
