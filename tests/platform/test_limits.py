"""The limit algorithm: never over a limit in any window, whatever the arrival pattern."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glmaas.platform.errors import RateLimited
from glmaas.platform.limits import LimitSpec, LocalLimiter, Scope


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _max_in_any_window(events: list[tuple[float, int]], width: float = 60.0) -> int:
    events.sort()
    best = 0
    for i, (start, _) in enumerate(events):
        best = max(best, sum(n for t, n in events[i:] if t < start + width))
    return best


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.lists(st.floats(0, 5), min_size=1, max_size=120))
def test_rpm_never_overshoots_any_window(rpm: int, gaps: list[float]) -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    scope = Scope("key:k", LimitSpec(rpm=rpm))
    admitted = []
    for i, gap in enumerate(gaps):
        clock.now += gap
        try:
            grant = limiter.acquire([scope], f"r{i}", 1)
        except RateLimited as exc:
            assert exc.limit_kind == "rpm" and exc.retry_after >= 1
            continue
        limiter.release(grant, 1)
        admitted.append((clock.now, 1))
    assert _max_in_any_window(admitted) <= rpm


@settings(max_examples=60, deadline=None)
@given(st.integers(10, 500), st.lists(st.tuples(st.floats(0, 5), st.integers(1, 80), st.floats(0, 1)),
                                      min_size=1, max_size=80))
def test_tpm_counts_what_was_used_and_never_overshoots(tpm: int, reqs) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    limiter = LocalLimiter(clock)
    scope = Scope("key:k", LimitSpec(tpm=tpm))
    used = []
    for i, (gap, worst, frac) in enumerate(reqs):
        clock.now += gap
        try:
            grant = limiter.acquire([scope], f"r{i}", worst)
        except RateLimited:
            continue
        actual = int(worst * frac)
        limiter.release(grant, actual)
        used.append((clock.now, actual))
    assert _max_in_any_window(used) <= tpm


@given(st.integers(1, 8), st.lists(st.booleans(), min_size=1, max_size=60))
def test_concurrency_never_exceeded(limit: int, ops: list[bool]) -> None:
    limiter = LocalLimiter(Clock())
    scope = Scope("key:k", LimitSpec(concurrency=limit))
    live = []
    for i, start in enumerate(ops):
        if start:
            try:
                live.append(limiter.acquire([scope], f"r{i}", 1))
            except RateLimited as exc:
                assert exc.limit_kind == "concurrency" and len(live) == limit
        elif live:
            limiter.release(live.pop(0), 1)
        assert len(live) <= limit


def test_all_scopes_or_none() -> None:
    limiter = LocalLimiter(Clock())
    key = Scope("key:k", LimitSpec(rpm=5))
    account = Scope("am:a:m", LimitSpec(rpm=1))
    limiter.acquire([key, account], "r1", 1)
    with pytest.raises(RateLimited) as info:
        limiter.acquire([key, account], "r2", 1)
    assert info.value.scope == "am:a:m"
    # The refused request took nothing from the key's window.
    for i in range(4):
        limiter.acquire([key], f"k{i}", 1)
    with pytest.raises(RateLimited):
        limiter.acquire([key], "k5", 1)
