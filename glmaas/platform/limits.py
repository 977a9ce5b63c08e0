"""Rate limits: requests per minute, tokens per minute and concurrent requests, per scope.

A scope is a key (`key:<id>`) or an account on a model (`am:<account>:<model>`). A request is
admitted only if every scope it falls in has room; the check and the increment of all of them are
one atomic step, so no limit is ever overshot: in process behind a lock (one replica), or in one
Redis script (many replicas, `RedisLimiter`).

Windows are counted in one-second buckets. A request admitted in second `s` counts against every
window that may contain it: the check sums the current second and the 60 before it, so any
60-second window, wherever it starts, holds at most `rpm` requests (a little conservative at the
edge, never over). Tokens are counted at admission as the worst case (prompt + max_tokens) and the
unused part is given back at release.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from glmaas.platform.errors import RateLimited

WINDOW_S = 60
BUCKETS = WINDOW_S + 1


@dataclass(frozen=True)
class LimitSpec:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrency is None


@dataclass(frozen=True)
class Scope:
    name: str
    spec: LimitSpec


@dataclass(frozen=True)
class Remaining:
    """What is left in a scope after an admission (None: unlimited)."""

    requests: int | None
    tokens: int | None
    limit_requests: int | None
    limit_tokens: int | None


@dataclass(frozen=True)
class Grant:
    request_id: str
    scopes: tuple[str, ...]
    tokens: int
    second: int
    remaining: Remaining | None = None


# What a request asks the limiter for: its scopes, its id and its worst-case tokens.
Ask = tuple[list[Scope], str, int]


def answer(acquire: Callable[..., Grant], *args: object) -> Grant | RateLimited:
    """`acquire(*args)`'s grant, or its refusal as a value: the answer to one of many asks."""
    try:
        return acquire(*args)
    except RateLimited as exc:
        return exc


@dataclass
class _Window:
    requests: dict[int, int] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    inflight: set[str] = field(default_factory=set)

    def prune(self, now_s: int) -> None:
        for counts in (self.requests, self.tokens):
            for s in [s for s in counts if s <= now_s - BUCKETS]:
                del counts[s]


def check_window(spec: LimitSpec, requests: dict[int, int], tokens: dict[int, int], inflight: int,
                 now_s: int, want_tokens: int) -> tuple[str, int, float] | None:
    """The first limit a new request would break, as (kind, limit, retry_after), or None.
    `requests`/`tokens` map second → count over the last `BUCKETS` seconds."""
    if spec.concurrency is not None and inflight + 1 > spec.concurrency:
        return "concurrency", spec.concurrency, 1.0
    if spec.rpm is not None and sum(requests.values()) + 1 > spec.rpm:
        oldest = min((s for s, n in requests.items() if n > 0), default=now_s)
        return "rpm", spec.rpm, max(1.0, oldest + BUCKETS - now_s)
    if spec.tpm is not None and sum(tokens.values()) + want_tokens > spec.tpm:
        oldest = min((s for s, n in tokens.items() if n > 0), default=now_s)
        retry = oldest + BUCKETS - now_s if want_tokens <= spec.tpm else float(WINDOW_S)
        return "tpm", spec.tpm, max(1.0, retry)
    return None


class LocalLimiter:
    """Limits of one process."""

    in_process = True

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def acquire(self, scopes: list[Scope], request_id: str, tokens: int) -> Grant:
        """Admit into every scope at once, or raise `RateLimited` and change nothing."""
        now_s = int(self._clock())
        live = [s for s in scopes if not s.spec.empty]
        with self._lock:
            windows = [self._windows.setdefault(s.name, _Window()) for s in live]
            for scope, w in zip(live, windows, strict=True):
                w.prune(now_s)
                broken = check_window(scope.spec, w.requests, w.tokens, len(w.inflight), now_s, tokens)
                if broken:
                    raise RateLimited(scope.name, *broken)
            for w in windows:
                w.requests[now_s] = w.requests.get(now_s, 0) + 1
                w.tokens[now_s] = w.tokens.get(now_s, 0) + tokens
                w.inflight.add(request_id)
            remaining = _remaining(live[0].spec, windows[0]) if live else None
        return Grant(request_id, tuple(s.name for s in live), tokens, now_s, remaining)

    def release(self, grant: Grant, used_tokens: int) -> None:
        """End of the request: free its concurrency slot, give back unused tokens."""
        unused = max(0, grant.tokens - used_tokens)
        with self._lock:
            for name in grant.scopes:
                w = self._windows.get(name)
                if w is None:
                    continue
                w.inflight.discard(grant.request_id)
                if unused and grant.second in w.tokens:
                    w.tokens[grant.second] -= unused

    def acquire_many(self, asks: list[Ask]) -> list[Grant | Exception]:
        return [answer(self.acquire, *ask) for ask in asks]

    def release_many(self, releases: list[tuple[Grant, int]]) -> None:
        for grant, used_tokens in releases:
            self.release(grant, used_tokens)

    def forget(self, request_id: str, scopes: list[str]) -> None:
        with self._lock:
            for name in scopes:
                if name in self._windows:
                    self._windows[name].inflight.discard(request_id)


def _remaining(spec: LimitSpec, w: _Window) -> Remaining:
    return Remaining(
        requests=None if spec.rpm is None else max(0, spec.rpm - sum(w.requests.values())),
        tokens=None if spec.tpm is None else max(0, spec.tpm - sum(w.tokens.values())),
        limit_requests=spec.rpm, limit_tokens=spec.tpm)


def key_scope(key_id: str, spec: LimitSpec) -> Scope:
    return Scope(f"key:{key_id}", spec)


def account_model_scope(account_id: str, model: str, spec: LimitSpec) -> Scope:
    return Scope(f"am:{account_id}:{model}", spec)
