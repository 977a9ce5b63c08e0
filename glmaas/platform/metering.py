"""Admission and settlement: the two points where a request meets the platform's books.

`admit` runs before generation: it checks the key may use the model, takes the request into every
rate-limit scope at once, and holds its worst-case cost. `settle` runs exactly once when the
request ends, however it ends (finished, failed, aborted, timed out), and charges the exact cost of
the tokens produced. In between, `progress` makes the count of delivered tokens durable every
`DURABILITY_STEP` tokens, so a crash loses at most `DURABILITY_STEP - 1` billed tokens per stream.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import ParamSpec, Protocol, TypeVar

import anyio
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from glmaas.platform.auth import Principal
from glmaas.platform.errors import DuplicateRequest, ModelNotAllowed
from glmaas.platform.ledger import (
    HoldTicket,
    Outcome,
    RequestStatus,
    Settlement,
    UsageSource,
    place_hold,
    record_progress,
    settle_hold,
)
from glmaas.platform.limits import (
    Grant,
    LimitSpec,
    Scope,
    account_model_scope,
    key_scope,
)
from glmaas.platform.pricing import FREE, PriceSheet, discounted
from glmaas.store.sql import DriverTransaction, Reader, driver_transaction

__all__ = ["Admission", "Finish", "Meter", "Outcome", "RequestStatus", "SettleObserver", "SettledElsewhere",
           "UsageSource"]

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
# Steps of the books waiting on the network at once (within the database pool's size).
NETWORK_STEPS = 16

P = ParamSpec("P")
R = TypeVar("R")


class Limiter(Protocol):
    # True when the limits live in this process (no network round trip to check them).
    in_process: bool

    def acquire(self, scopes: list[Scope], request_id: str, tokens: int) -> Grant: ...
    def release(self, grant: Grant, used_tokens: int) -> None: ...
    def forget(self, request_id: str, scopes: list[str]) -> None: ...


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

    `admit`, `progress` and `settle` block until their step is written. An event loop runs them
    through `step`: in line when the books are in process (SQLite and in-process limits, where a
    step costs less than a hop to another thread), on a worker thread when they wait on the
    network (PostgreSQL, Redis), so that concurrent requests' round trips overlap instead of
    queueing on the loop."""

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
        self._network_steps: anyio.CapacityLimiter | None = None

    async def step(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`fn(*args, **kwargs)`, one blocking step of the books, run where it costs the event
        loop least (see the class docstring)."""
        if self.in_process:
            return fn(*args, **kwargs)
        if self._network_steps is None:
            self._network_steps = anyio.CapacityLimiter(NETWORK_STEPS)
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._network_steps)

    def admit(self, principal: Principal, model: str, request_id: str, prompt_tokens: int,
              max_tokens: int, *, price_percent: int = 100) -> Admission:
        """Admit a request or raise a `PlatformError` saying why not (`ModelNotAllowed`,
        `RateLimited`, `InsufficientBalance`, `BudgetExceeded`, `DuplicateRequest`).
        `price_percent`: the request is sold at that share of the model's prices (batches)."""
        if not principal.may_use(model):
            raise ModelNotAllowed(f"This API key may not use the model {model!r}.")
        scopes = [key_scope(principal.key_id, principal.limits),
                  account_model_scope(principal.account_id, model, self._limits_of(principal.account_id, model))]
        # Read before the transaction: SQLite has one writer at a time.
        price = discounted(self.price(model), price_percent)
        grant = self.limiter.acquire(scopes, f"{principal.account_id}/{request_id}", prompt_tokens + max_tokens)
        try:
            with self._step(single_statement=not principal.budgeted, hand_written=True) as conn:
                ticket = place_hold(conn, request_id=request_id, account_id=principal.account_id,
                                    key_id=principal.key_id, model=model, price=price,
                                    prompt_tokens=prompt_tokens, max_tokens=max_tokens, owner=self.owner,
                                    budgeted=principal.budgeted)
        except IntegrityError:
            self.limiter.release(grant, 0)
            raise DuplicateRequest(f"A request with request_id {request_id!r} already exists.") from None
        except BaseException:
            self.limiter.release(grant, 0)
            raise
        self.open_by_model[model] += 1
        return Admission(principal, ticket, grant)

    def progress(self, admission: Admission, completion_tokens: int, cached_tokens: int) -> None:
        """Make `completion_tokens` durable before they are delivered."""
        with self._step(single_statement=True, hand_written=True) as conn:
            record_progress(conn, admission.ticket.account_id, admission.ticket.request_id,
                            completion_tokens, cached_tokens)
        admission.durable_tokens = completion_tokens

    def settle(self, admission: Admission, outcome: Outcome, finish: Finish | None = None) -> None:
        """Charge the exact cost and write the usage record, with `finish`'s write in the same
        transaction when there is one. A second call does nothing."""
        if admission.settled:
            return
        admission.settled = True
        model = admission.ticket.model
        try:
            with self._step(single_statement=finish is None, hand_written=finish is None) as conn:
                if finish is not None and not finish(conn, outcome):
                    outcome = replace(outcome, billable=False)
                settlement = settle_hold(conn, admission.ticket, outcome)
                if settlement is None and finish is not None:
                    # Recovery settled the hold already (this replica was taken for dead): the
                    # result must not stand without its bill, so it is rolled back, and the
                    # caller puts the work back to run again.
                    raise SettledElsewhere(f"request {admission.ticket.request_id} was settled by recovery")
            for observe in self.observers:
                observe(admission.ticket, outcome, settlement)
        finally:
            self.open_by_model[model] -= 1
            if self.open_by_model[model] <= 0:
                del self.open_by_model[model]
            self.limiter.release(admission.grant, admission.ticket.prompt_tokens + outcome.completion_tokens)

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
