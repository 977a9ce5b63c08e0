"""The Redis limiter's batched calls (one pipeline for many requests) answer as the in-process
limiter does, request by request, and survive a Redis that lost its scripts."""

from __future__ import annotations

import time

import pytest
import redis

from glmaas.platform.errors import RateLimited
from glmaas.platform.limits import Grant, LimitSpec, LocalLimiter, Scope
from glmaas.platform.limits_redis import RedisLimiter


@pytest.fixture
def limiter(redis_url: str) -> RedisLimiter:
    return RedisLimiter(redis.Redis.from_url(redis_url), prefix=f"test-limits:{time.time_ns()}")


def _asks(n: int, spec: LimitSpec, first: int = 0) -> list[tuple[list[Scope], str, int]]:
    return [([Scope("key:k", spec), Scope("am:a:m", LimitSpec())], f"r{first + i}", 10) for i in range(n)]


def _kinds(answers: list) -> list[str]:  # type: ignore[type-arg]
    return [a.limit_kind if isinstance(a, RateLimited) else type(a).__name__ for a in answers]


def test_a_batch_is_answered_as_the_in_process_limiter_answers_one_request_at_a_time(limiter: RedisLimiter) -> None:
    spec = LimitSpec(rpm=5, tpm=1000, concurrency=3)
    local = LocalLimiter()
    ours, theirs = limiter.acquire_many(_asks(4, spec)), local.acquire_many(_asks(4, spec))
    assert _kinds(ours) == _kinds(theirs) == ["Grant", "Grant", "Grant", "concurrency"]
    assert [g.remaining.requests for g in ours[:3]] == [4, 3, 2]  # type: ignore[union-attr]
    # Two give their slots back: two more fit beside the third, and a sixth of the minute is one
    # too many even once every slot is free.
    held_ours, held_theirs = ours[2], theirs[2]
    limiter.release_many([(ours[0], 10), (ours[1], 10)])  # type: ignore[list-item]
    local.release_many([(theirs[0], 10), (theirs[1], 10)])  # type: ignore[list-item]
    ours, theirs = limiter.acquire_many(_asks(3, spec, 10)), local.acquire_many(_asks(3, spec, 10))
    assert _kinds(ours) == _kinds(theirs) == ["Grant", "Grant", "concurrency"]
    limiter.release_many([(held_ours, 10), (ours[0], 10), (ours[1], 10)])  # type: ignore[list-item]
    local.release_many([(held_theirs, 10), (theirs[0], 10), (theirs[1], 10)])  # type: ignore[list-item]
    ours, theirs = limiter.acquire_many(_asks(2, spec, 20)), local.acquire_many(_asks(2, spec, 20))
    assert _kinds(ours) == _kinds(theirs) == ["rpm", "rpm"]


def test_an_ask_without_limits_is_granted_without_a_script(limiter: RedisLimiter) -> None:
    asks = [([Scope("key:free", LimitSpec())], "f1", 10), *_asks(1, LimitSpec(concurrency=1))]
    free, limited = limiter.acquire_many(asks)
    assert isinstance(free, Grant) and free.scopes == ()
    assert isinstance(limited, Grant) and limited.scopes == ("key:k",)
    limiter.release_many([(free, 0), (limited, 0)])
    assert all(isinstance(g, Grant) for g in limiter.acquire_many(_asks(1, LimitSpec(concurrency=1), 5)))


def test_batches_load_the_scripts_again_after_redis_lost_them(limiter: RedisLimiter) -> None:
    spec = LimitSpec(concurrency=2)
    limiter.client.script_flush()
    grants = limiter.acquire_many(_asks(3, spec))
    assert _kinds(grants) == ["Grant", "Grant", "concurrency"]
    limiter.client.script_flush()
    limiter.release_many([(grants[0], 0), (grants[1], 0)])  # type: ignore[list-item]
    assert _kinds(limiter.acquire_many(_asks(2, spec, 10))) == ["Grant", "Grant"]
