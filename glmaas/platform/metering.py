"""Admission and settlement: the two points where a request meets the platform's books.

`admit` runs before generation: it checks the key may use the model, takes the request into every
rate-limit scope at once, and holds its worst-case cost. `settle` runs exactly once when the
request ends, however it ends (finished, failed, aborted, timed out), and charges the exact cost of
the tokens produced. In between, `progress` makes the count of delivered tokens durable every
`DURABILITY_STEP` tokens, so a crash loses at most `DURABILITY_STEP - 1` billed tokens per stream.

Each step has a form for many requests at once (`admit_many`, `progress_many`, `settle_many`):
on PostgreSQL and Redis, concurrent requests' steps share one round trip (`group_commit`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from glmaas.platform.auth import Principal
from glmaas.platform.errors import DuplicateRequest, ModelNotAllowed
from glmaas.platform.group_commit import StepQueue
from glmaas.platform.ledger import (
    HoldTicket,
    Outcome,
    RequestStatus,
    Settlement,
    UsageSource,
    hold_of,
    insufficient_balance,
    pg_settlement,
    place_hold,
    record_progress,
    settle_hold,
)
from glmaas.platform.limits import (
    Ask,
    Grant,
    LimitSpec,
    Scope,
    account_model_scope,
    key_scope,
)
from glmaas.platform.pricing import FREE, PriceSheet, discounted
from glmaas.store.sql import DriverTransaction, Reader, driver_transaction, run_in_one_round_trip

__all__ = ["Admission", "AdmissionAsk", "Finish", "Meter", "Outcome", "RequestStatus", "SettleObserver", "SettledElsewhere",
           "SettlementAsk", "UsageSource"]

# A write that must commit together with a request's settlement, in its transaction (a batch
# line's result). It returns False when the work is no longer the request's to finish (its
# lease passed to another worker): the request is then settled unbilled.
Finish = Callable[[Connection, Outcome], bool]
# Told of every settlement once it has committed: the hold, how the request ended, and what was
# charged (None when another replica's recovery had settled it first). Called on the request's
# path, so it must be cheap and must not raise (the server's metrics, `api/operations`).
SettleObserver = Callable[[HoldTicket, Outcome, Settlement | None], None]

# Progress is made durable at the first token and then every this many tokens.
DURABILITY_STEP = 16
# Prices and account limits are re-read at most this often.
CONFIG_TTL_S = 1.0

R = TypeVar("R")

log = logging.getLogger("glmaas.books")


class Limiter(Protocol):
    # True when the limits live in this process (no network round trip to check them).
    in_process: bool

    def acquire(self, scopes: list[Scope], request_id: str, tokens: int) -> Grant: ...
    def acquire_many(self, asks: list[Ask]) -> list[Grant | Exception]: ...
    def release(self, grant: Grant, used_tokens: int) -> None: ...
    def release_many(self, releases: list[tuple[Grant, int]]) -> None: ...
    def forget(self, request_id: str, scopes: list[str]) -> None: ...


@dataclass(frozen=True)
class AdmissionAsk:
    """What `admit` takes, for `admit_many`."""

    principal: Principal
    model: str
    request_id: str
    prompt_tokens: int
    max_tokens: int
    price_percent: int = 100


@dataclass(frozen=True)
class SettlementAsk:
    """What `settle` takes, for `settle_many`."""

    admission: Admission
    outcome: Outcome
    finish: Finish | None = None


@dataclass
class Admission:
    """An admitted request, from admission to settlement: its hold and its rate-limit grant."""

    principal: Principal
    ticket: HoldTicket
    grant: Grant
    admitted_at: float = field(default_factory=time.monotonic)
    durable_tokens: int = 0
    settled: bool = False

    def needs_progress(self, completion_tokens: int) -> bool:
        """Whether delivering up to `completion_tokens` must first be made durable."""
        return completion_tokens > self.durable_tokens and (
            self.durable_tokens == 0 or completion_tokens >= self.durable_tokens + DURABILITY_STEP)


def _lock_order(ticket: HoldTicket) -> tuple[str, str, str, str]:
    """The order in which one transaction of several requests' steps writes them. Every step
    locks its account's row before its key's (store/sql.py); a transaction of several must also
    take the accounts, keys and day totals of its steps in one global order, or two such
    transactions (two replicas, a batch of holds and one of settlements) could deadlock."""
    return ticket.account_id, ticket.key_id, ticket.model, ticket.request_id


def _batch_failed(what: str, count: int, exc: Exception) -> None:
    """A group commit wrote nothing; its steps run again one by one. A duplicate request id does
    that by design (the client's mistake, refused alone); anything else is worth a line, since
    a store that fails every batch would quietly lose what batching saves."""
    level = logging.DEBUG if isinstance(exc, IntegrityError) else logging.WARNING
    log.log(level, "a group commit of %d %s failed (%s); each runs on its own", count, what,
            type(exc).__name__)


def _answer(step: Callable[..., R], *args: Any, **kwargs: Any) -> R | Exception:
    """`step`'s result, or the error it raised, as the answer to one of many."""
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - handed to the request it belongs to
        return exc


class SettledElsewhere(Exception):
    """A settlement with a `finish` found its hold settled by recovery first: the transaction,
    and `finish`'s write with it, was rolled back."""


class _TtlCache:
    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl, self._clock, self._data = ttl, clock, {}

    def get(self, key, load):  # type: ignore[no-untyped-def]
        now = self._clock()
        hit = self._data.get(key)
        if hit is None or now - hit[0] >= self._ttl:
            hit = (now, load())
            self._data[key] = hit
        return hit[1]


class Meter:
    """Admits requests and settles them into the ledger and the usage records.

    `admit`, `progress` and `settle` block until their step is written. An event loop awaits
    them as `admit_async`, `progress_async` and `settle_async`: in line when the books are in
    process (SQLite and in-process limits, where a step costs less than a hop to another thread);
    through a `StepQueue` when they wait on the network (PostgreSQL, Redis), so that the steps of
    concurrent requests go out together, on a worker thread, in one round trip."""

    def __init__(self, engine: Engine, limiter: Limiter, owner: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._autocommit = (engine.execution_options(isolation_level="AUTOCOMMIT")
                            if engine.dialect.name == "postgresql" else None)
        self._reader = Reader(engine)
        self.limiter = limiter
        self.owner = owner
        self._prices = _TtlCache(CONFIG_TTL_S, clock)
        self._account_limits = _TtlCache(CONFIG_TTL_S, clock)
        # Requests of this process admitted and not yet settled, by model: background work reads
        # it to leave engine slots to interactive requests.
        self.open_by_model: Counter[str] = Counter()
        self.observers: list[SettleObserver] = []
        self.in_process = engine.dialect.name == "sqlite" and limiter.in_process
        self._batched = engine.dialect.name == "postgresql"
        self._admissions = StepQueue(self.admit_many)
        self._progress = StepQueue(self.progress_many)
        self._settlements = StepQueue(self.settle_many)

    def batching(self) -> dict[str, tuple[int, int]]:
        """Per kind of step, the batches sent and the steps they carried since start (empty
        when the steps run in line): how much the group commit shares its round trips."""
        if self.in_process:
            return {}
        queues = {"admission": self._admissions, "progress": self._progress, "settlement": self._settlements}
        return {kind: (q.batches, q.steps) for kind, q in queues.items()}

    # --- on the event loop -------------------------------------------------------------------

    async def admit_async(self, ask: AdmissionAsk) -> Admission:
        """`admit`, awaited (see the class docstring)."""
        if self.in_process:
            return self._admit(ask)
        return await self._admissions.run(ask)

    async def progress_async(self, admission: Admission, completion_tokens: int, cached_tokens: int) -> None:
        """`progress`, awaited."""
        if self.in_process:
            return self.progress(admission, completion_tokens, cached_tokens)
        return await self._progress.run((admission, completion_tokens, cached_tokens))

    async def settle_async(self, ask: SettlementAsk) -> None:
        """`settle`, awaited."""
        if self.in_process:
            return self.settle(ask.admission, ask.outcome, ask.finish)
        return await self._settlements.run(ask)

    # --- one request -------------------------------------------------------------------------

    def admit(self, principal: Principal, model: str, request_id: str, prompt_tokens: int,
              max_tokens: int, *, price_percent: int = 100) -> Admission:
        """Admit a request or raise a `PlatformError` saying why not (`ModelNotAllowed`,
        `RateLimited`, `InsufficientBalance`, `BudgetExceeded`, `DuplicateRequest`).
        `price_percent`: the request is sold at that share of the model's prices (batches)."""
        return self._admit(AdmissionAsk(principal, model, request_id, prompt_tokens, max_tokens, price_percent))

    def _admit(self, ask: AdmissionAsk) -> Admission:
        principal = ask.principal
        scopes, price = self._terms(principal, ask.model, ask.price_percent)
        grant = self.limiter.acquire(scopes, f"{principal.account_id}/{ask.request_id}",
                                     ask.prompt_tokens + ask.max_tokens)
        try:
            ticket = self._hold(ask, price)
        except BaseException:
            self.limiter.release(grant, 0)
            raise
        self.open_by_model[ask.model] += 1
        return Admission(principal, ticket, grant)

    def _terms(self, principal: Principal, model: str, price_percent: int) -> tuple[list[Scope], PriceSheet]:
        """The limits a request of `principal` on `model` falls under, and its price; raises
        `ModelNotAllowed` if the key may not use the model. Read before any transaction: SQLite
        has one writer at a time."""
        if not principal.may_use(model):
            raise ModelNotAllowed(f"This API key may not use the model {model!r}.")
        scopes = [key_scope(principal.key_id, principal.limits),
                  account_model_scope(principal.account_id, model, self._limits_of(principal.account_id, model))]
        return scopes, discounted(self.price(model), price_percent)

    def _hold(self, ask: AdmissionAsk, price: PriceSheet) -> HoldTicket:
        """Place the hold of one request, in a transaction of its own."""
        principal = ask.principal
        try:
            with self._step(single_statement=not principal.budgeted, hand_written=True) as conn:
                return place_hold(conn, request_id=ask.request_id, account_id=principal.account_id,
                                  key_id=principal.key_id, model=ask.model, price=price,
                                  prompt_tokens=ask.prompt_tokens, max_tokens=ask.max_tokens, owner=self.owner,
                                  budgeted=principal.budgeted)
        except IntegrityError:
            raise DuplicateRequest(f"A request with request_id {ask.request_id!r} already exists.") from None

    def progress(self, admission: Admission, completion_tokens: int, cached_tokens: int) -> None:
        """Make `completion_tokens` durable before they are delivered."""
        with self._step(single_statement=True, hand_written=True) as conn:
            record_progress(conn, admission.ticket.account_id, admission.ticket.request_id,
                            completion_tokens, cached_tokens)
        admission.durable_tokens = completion_tokens

    def settle(self, admission: Admission, outcome: Outcome, finish: Finish | None = None) -> None:
        """Charge the exact cost and write the usage record, with `finish`'s write in the same
        transaction when there is one. A second call does nothing."""
        (error,) = self.settle_many([SettlementAsk(admission, outcome, finish)])
        if error is not None:
            raise error

    def _settle_alone(self, ask: SettlementAsk) -> tuple[Outcome, Settlement | None]:
        """Settle one request in a transaction of its own; how it ended (unbillable if its
        `finish` found the work no longer its own) and what was charged."""
        outcome, finish = ask.outcome, ask.finish
        with self._step(single_statement=finish is None, hand_written=finish is None) as conn:
            if finish is not None and not finish(conn, outcome):
                outcome = replace(outcome, billable=False)
            settlement = settle_hold(conn, ask.admission.ticket, outcome)
            if settlement is None and finish is not None:
                # Recovery settled the hold already (this replica was taken for dead): the
                # result must not stand without its bill, so it is rolled back, and the
                # caller puts the work back to run again.
                raise SettledElsewhere(f"request {ask.admission.ticket.request_id} was settled by recovery")
        return outcome, settlement

    # --- many requests at once (group commit) -------------------------------------------------

    def admit_many(self, asks: list[AdmissionAsk]) -> list[Admission | Exception]:
        """`admit` for each of `asks`: each admission, or the refusal or error that ended it.
        Their limits are checked in one round trip, and on PostgreSQL their holds are written in
        one transaction (see `_hold_many`)."""
        if len(asks) == 1:
            return [_answer(self._admit, asks[0])]
        out: list[Admission | Exception | None] = [None] * len(asks)
        terms: list[tuple[int, list[Scope], PriceSheet]] = []
        for i, ask in enumerate(asks):
            try:
                terms.append((i, *self._terms(ask.principal, ask.model, ask.price_percent)))
            except Exception as exc:  # noqa: BLE001 - this request's answer
                out[i] = exc
        grants = self.limiter.acquire_many(
            [(scopes, f"{asks[i].principal.account_id}/{asks[i].request_id}",
              asks[i].prompt_tokens + asks[i].max_tokens) for i, scopes, _ in terms])
        granted: list[tuple[int, Grant, PriceSheet]] = []
        for (i, _, price), grant in zip(terms, grants, strict=True):
            if isinstance(grant, Exception):
                out[i] = grant
            else:
                granted.append((i, grant, price))
        # From here each grant must end in an admission or a release, whatever fails.
        tickets = self._hold_many([(asks[i], price) for i, _, price in granted])
        unused: list[tuple[Grant, int]] = []
        for (i, grant, _), ticket in zip(granted, tickets, strict=True):
            if isinstance(ticket, Exception):
                out[i] = ticket
                unused.append((grant, 0))
            else:
                self.open_by_model[ticket.model] += 1
                out[i] = Admission(asks[i].principal, ticket, grant)
        if unused:
            try:
                self.limiter.release_many(unused)
            except Exception:  # the admitted ones stand: their holds are written
                log.exception("the limits of %d refused requests could not be given back", len(unused))
        return out  # type: ignore[return-value]

    def _hold_many(self, items: list[tuple[AdmissionAsk, PriceSheet]]) -> list[HoldTicket | Exception]:
        """The holds of `items`, each a ticket or the error that refused it. On PostgreSQL the
        ones that are a single statement (no key budget to check) go in one transaction, in one
        round trip; should any of them fail (a duplicate request id), that transaction writes
        nothing and each is placed again on its own, to fail alone."""
        out: list[HoldTicket | Exception | None] = [None] * len(items)
        together: list[tuple[int, HoldTicket, str, dict]] = []
        if self._batched and len(items) > 1:
            for i, (ask, price) in enumerate(items):
                if not ask.principal.budgeted:
                    ticket, hold = hold_of(request_id=ask.request_id, account_id=ask.principal.account_id,
                                           key_id=ask.principal.key_id, model=ask.model, price=price,
                                           prompt_tokens=ask.prompt_tokens, max_tokens=ask.max_tokens,
                                           owner=self.owner)
                    together.append((i, ticket, "pg_place_hold" if ticket.amount > 0 else "insert_hold", hold))
        if len(together) > 1:
            together.sort(key=lambda t: _lock_order(t[1]))
            try:
                placed = run_in_one_round_trip(self._engine, [(name, hold) for _, _, name, hold in together])
            except Exception as exc:  # noqa: BLE001 - each is placed again on its own below
                _batch_failed("holds", len(together), exc)
                together = []
            else:
                for (i, ticket, name, hold), count in zip(together, placed, strict=True):
                    if name == "insert_hold" or count:
                        out[i] = ticket
                    else:
                        balance_now = self._reader.row("account_balance", account_id=ticket.account_id)
                        out[i] = insufficient_balance(ticket.amount, ticket.prompt_tokens, hold["max_tokens"],
                                                      int(balance_now[0]) if balance_now else 0)
        for i, (ask, price) in enumerate(items):
            if out[i] is None:
                out[i] = _answer(self._hold, ask, price)
        return out  # type: ignore[return-value]

    def progress_many(self, steps: list[tuple[Admission, int, int]]) -> list[Exception | None]:
        """`progress` for each (admission, completion tokens, cached tokens); on PostgreSQL in one
        transaction, one round trip."""
        if self._batched and len(steps) > 1:
            ordered = sorted(steps, key=lambda s: _lock_order(s[0].ticket))
            try:
                run_in_one_round_trip(self._engine, [
                    ("record_progress", dict(account_id=a.ticket.account_id, request_id=a.ticket.request_id,
                                             progress_tokens=tokens, cached_tokens=cached))
                    for a, tokens, cached in ordered])
            except Exception as exc:  # noqa: BLE001 - each is written again on its own below
                _batch_failed("progress writes", len(steps), exc)
            else:
                for admission, tokens, _ in steps:
                    admission.durable_tokens = tokens
                return [None] * len(steps)
        return [_answer(self.progress, *step) for step in steps]

    def settle_many(self, asks: list[SettlementAsk]) -> list[Exception | None]:
        """`settle` for each of `asks`: None, or the error its settlement raised. On PostgreSQL
        the ones without a `finish` go in one transaction, one round trip (as `_hold_many`), and
        their limits are given back in one more."""
        out: list[Exception | None] = [None] * len(asks)
        todo: list[tuple[int, SettlementAsk]] = []
        for i, ask in enumerate(asks):
            if not ask.admission.settled:  # a second settlement, even in the same batch, does nothing
                ask.admission.settled = True
                todo.append((i, ask))
        try:
            together = [(i, ask) for i, ask in todo if ask.finish is None] if self._batched else []
            settled: dict[int, Settlement | None] = {}
            if len(together) > 1:
                together.sort(key=lambda t: _lock_order(t[1].admission.ticket))
                charges = [pg_settlement(ask.admission.ticket, ask.outcome) for _, ask in together]
                try:
                    claimed = run_in_one_round_trip(self._engine, [("pg_settle_hold", c) for c in charges])
                except Exception as exc:  # noqa: BLE001 - each is settled again on its own below
                    _batch_failed("settlements", len(together), exc)
                else:
                    for (i, ask), charge, count in zip(together, charges, claimed, strict=True):
                        settled[i] = Settlement(ask.admission.ticket.request_id, charge["charged"],
                                                ask.outcome.completion_tokens) if count else None
            for i, ask in todo:
                outcome = ask.outcome
                try:
                    if i in settled:
                        settlement = settled[i]
                    else:
                        outcome, settlement = self._settle_alone(ask)
                    for observe in self.observers:
                        observe(ask.admission.ticket, outcome, settlement)
                except Exception as exc:  # noqa: BLE001 - this request's answer
                    out[i] = exc
        finally:
            for _, ask in todo:
                model = ask.admission.ticket.model
                self.open_by_model[model] -= 1
                if self.open_by_model[model] <= 0:
                    del self.open_by_model[model]
            self.limiter.release_many([
                (ask.admission.grant, ask.admission.ticket.prompt_tokens + ask.outcome.completion_tokens)
                for _, ask in todo])
        return out

    def _step(self, *, single_statement: bool,
              hand_written: bool = False) -> AbstractContextManager[Connection | DriverTransaction]:
        """A transaction for one ledger step; on PostgreSQL a step that is a single statement
        runs in autocommit instead, which saves the BEGIN and COMMIT round trips. On SQLite a
        step made only of `store.sql`'s statements (`hand_written`) runs on the driver's
        connection itself."""
        if single_statement and self._autocommit is not None:
            return self._autocommit.connect()
        if hand_written and self._engine.dialect.name == "sqlite":
            return driver_transaction(self._engine)
        return self._engine.begin()

    def price(self, model: str) -> PriceSheet:
        return self._prices.get(model, lambda: self._load_price(model))

    def _load_price(self, model: str) -> PriceSheet:
        row = self._reader.row("price_row", model=model)
        return FREE if row is None else PriceSheet(*row)

    def _limits_of(self, account_id: str, model: str) -> LimitSpec:
        return self._account_limits.get((account_id, model), lambda: self._load_limits(account_id, model))

    def _load_limits(self, account_id: str, model: str) -> LimitSpec:
        rows = {r[0]: r[1:] for r in self._reader.rows("account_model_limits", account_id=account_id, model=model)}
        limits = rows.get(model) or rows.get("*")
        return LimitSpec() if limits is None else LimitSpec(*limits)
