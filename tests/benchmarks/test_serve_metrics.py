"""The metric maths of `glmaas bench serve`, on hand-made request timings."""

from __future__ import annotations

import pytest

from glmaas.benchmarks.serve import (
    DEFAULT_SLO_MS,
    RequestResult,
    arrival_gaps,
    distribution,
    make_prompt,
    meets_slo,
    summarize,
)


def timed(sent: float, chunks: list[float], end: float, tokens: int) -> RequestResult:
    return RequestResult(ok=True, sent=sent, chunk_times=chunks, end=end, output_tokens=tokens)


def test_ttft_tpot_itl_e2e_of_one_request() -> None:
    r = timed(10.0, [10.2, 10.3, 10.5], 10.6, tokens=3)
    assert r.ttft == pytest.approx(0.2)
    assert r.e2e == pytest.approx(0.6)
    assert r.tpot == pytest.approx((0.6 - 0.2) / 2)
    assert r.itls == pytest.approx([0.1, 0.2])


def test_tpot_is_undefined_for_a_single_token() -> None:
    assert timed(0.0, [0.1], 0.1, tokens=1).tpot is None


def test_distribution_in_milliseconds() -> None:
    d = distribution([0.001 * x for x in range(1, 101)])
    assert d["mean"] == pytest.approx(50.5)
    assert d["p50"] == pytest.approx(50.5)
    assert d["p99"] == pytest.approx(99.01)
    assert distribution([]) == {"mean": 0.0, "p50": 0.0, "p99": 0.0}


def test_throughput_and_goodput_over_wall_time() -> None:
    fast = timed(0.0, [0.1, 0.2], 0.2, tokens=2)
    slow = timed(0.0, [1.5, 1.6], 1.7, tokens=2)
    failed = RequestResult(ok=False, sent=0.0, end=0.5, error="HTTP 500")
    s = summarize([fast, slow, failed], duration_s=2.0, slo_ms={"ttft": 1000})
    assert s["completed"] == 2 and s["failed"] == 1
    assert s["output_throughput"] == pytest.approx(4 / 2.0)
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["goodput"] == pytest.approx(0.5)  # only `fast` met TTFT ≤ 1 s
    assert s["ttft_ms"]["mean"] == pytest.approx(800.0)
    assert s["first_error"] == "HTTP 500"


def test_slo_checks_every_given_measure() -> None:
    r = timed(0.0, [0.1, 0.3], 0.3, tokens=2)  # TTFT 100 ms, TPOT 200 ms
    assert meets_slo(r, {"ttft": 150})
    assert not meets_slo(r, {"ttft": 150, "tpot": 150})


def test_prompts_differ_and_have_the_asked_length() -> None:
    a, b = make_prompt(0, 40), make_prompt(1, 40)
    assert a != b
    assert len(a.split()) == 40


def test_poisson_arrivals_have_the_asked_rate_and_exponential_gaps() -> None:
    gaps = arrival_gaps(20_000, 4.0, seed=1)
    assert gaps[0] == 0.0 and all(g > 0 for g in gaps[1:])
    mean = sum(gaps[1:]) / (len(gaps) - 1)
    spread = (sum((g - mean) ** 2 for g in gaps[1:]) / (len(gaps) - 2)) ** 0.5
    assert mean == pytest.approx(1 / 4.0, rel=0.03)
    assert spread / mean == pytest.approx(1.0, rel=0.05)  # an exponential's deviation is its mean
    assert arrival_gaps(50, 4.0, seed=1) == gaps[:50]
    assert arrival_gaps(50, 4.0, seed=2) != gaps[:50]


def test_unlimited_rate_sends_everything_at_once() -> None:
    assert arrival_gaps(5, float("inf"), seed=0) == [0.0] * 5


def test_goodput_at_the_default_slo() -> None:
    # TTFT ≤ 2 s and TPOT ≤ 150 ms: only the first request meets both.
    good = timed(0.0, [1.5, 1.6], 1.5 + 0.1 * 9, tokens=10)  # TTFT 1.5 s, TPOT 100 ms
    late = timed(0.0, [2.5, 2.6], 2.5 + 0.1 * 9, tokens=10)  # TTFT 2.5 s
    slow = timed(0.0, [0.5, 0.7], 0.5 + 0.2 * 9, tokens=10)  # TPOT 200 ms
    s = summarize([good, late, slow], duration_s=4.0, slo_ms=DEFAULT_SLO_MS)
    assert DEFAULT_SLO_MS == {"ttft": 2000.0, "tpot": 150.0}
    assert s["goodput"] == pytest.approx(1 / 4.0)
    assert s["request_throughput"] == pytest.approx(3 / 4.0)
