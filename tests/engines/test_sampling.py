"""The per-sequence sampler on hand-made logits rows: each sampling field changes what is drawn."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from glmaas.engines.base import SamplingParams
from glmaas.engines.sampling import Sampler

N = 64


def row(**logits: float) -> np.ndarray:
    """A row of N logits at -5 but for the ids given as `t<id>=logit`."""
    r = np.full(N, -5.0, dtype=np.float32)
    for name, value in logits.items():
        r[int(name[1:])] = value
    return r


def draws(params: SamplingParams, logits: np.ndarray, n: int = 400, prompt: tuple[int, ...] = ()) -> Counter:
    """Tokens drawn from `n` fresh samplers (penalties and grammar start clean each time)."""
    counts: Counter = Counter()
    for i in range(n):
        p = SamplingParams(**{**params.__dict__, "seed": i})
        counts[Sampler(p, prompt).sample(logits).token] += 1
    return counts


def test_top_k_keeps_only_the_k_most_likely() -> None:
    logits = row(t1=2.0, t2=1.9, t3=1.8, t4=1.7)
    assert set(draws(SamplingParams(1), logits)) > {1, 2}
    assert set(draws(SamplingParams(1, top_k=2), logits)) == {1, 2}


def test_min_p_drops_tokens_far_below_the_best() -> None:
    logits = row(t1=3.0, t2=2.9, t3=0.0)  # t3 is e^-3 ≈ 0.05 of the best
    assert 3 in draws(SamplingParams(1), logits, n=600)
    assert set(draws(SamplingParams(1, min_p=0.2), logits, n=600)) == {1, 2}


def test_logit_bias_forces_and_bans_tokens() -> None:
    logits = row(t1=5.0)
    assert Sampler(SamplingParams(1, temperature=0.0, logit_bias={7: 100.0})).sample(logits).token == 7
    assert Sampler(SamplingParams(1, temperature=0.0, logit_bias={1: -100.0})).sample(logits).token != 1
    assert logits[7] == -5.0  # the engine's row is left as it was


def test_frequency_penalty_grows_with_each_repeat() -> None:
    sampler = Sampler(SamplingParams(3, temperature=0.0, frequency_penalty=1.5))
    logits = row(t1=3.0, t2=1.0)
    assert [sampler.sample(logits).token for _ in range(3)] == [1, 1, 2]  # 3 → 1.5 → 0 < 1


def test_presence_penalty_is_paid_once() -> None:
    sampler = Sampler(SamplingParams(3, temperature=0.0, presence_penalty=1.5))
    logits = row(t1=3.0, t2=2.0)
    assert [sampler.sample(logits).token for _ in range(3)] == [1, 2, 1]  # 1.5 < 2, then 1.5 > 0.5


def test_repetition_penalty_covers_the_prompt() -> None:
    logits = row(t1=3.0, t2=2.0)
    assert Sampler(SamplingParams(1, temperature=0.0), prompt=[1]).sample(logits).token == 1
    assert Sampler(SamplingParams(1, temperature=0.0, repetition_penalty=2.0), prompt=[1]).sample(logits).token == 2


def test_seed_repeats_and_different_seeds_differ() -> None:
    logits = np.linspace(0, 1, N, dtype=np.float32)

    def run(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(20, seed=seed))
        return [sampler.sample(logits).token for _ in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_logprobs_are_a_distribution_and_list_the_best_first() -> None:
    logits = row(t1=2.0, t2=1.0, t3=0.5)
    pick = Sampler(SamplingParams(1, temperature=0.0, logprobs=3)).sample(logits)
    assert pick.token == 1
    assert [t for t, _ in pick.top] == [1, 2, 3]
    total = math.exp(2.0) + math.exp(1.0) + math.exp(0.5) + (N - 3) * math.exp(-5.0)
    assert math.isclose(pick.logprob, 2.0 - math.log(total), rel_tol=1e-5)
    assert pick.top[0][1] == pick.logprob


def test_logprobs_are_before_temperature() -> None:
    logits = row(t1=2.0, t2=1.0)
    cold = Sampler(SamplingParams(1, temperature=0.0, logprobs=2)).sample(logits)
    hot = Sampler(SamplingParams(1, temperature=1.7, logprobs=2, seed=0)).sample(logits)
    assert [t for t, _ in hot.top] == [t for t, _ in cold.top] == [1, 2]
    assert np.allclose([lp for _, lp in hot.top], [lp for _, lp in cold.top])


class OnlyEven:
    """A grammar that allows even token ids only (a stand-in for a real matcher's mask)."""

    def __init__(self) -> None:
        self.taken: list[int] = []

    def allowed(self) -> np.ndarray:
        return np.arange(N) % 2 == 0

    def accept(self, token: int) -> None:
        self.taken.append(token)


def test_the_grammar_mask_rules_out_tokens_and_their_logprobs() -> None:
    grammar = OnlyEven()
    sampler = Sampler(SamplingParams(5, logprobs=5, seed=3), grammar=grammar)  # type: ignore[arg-type]
    logits = row(t1=9.0, t3=8.0, t4=1.0)
    picks = [sampler.sample(logits) for _ in range(5)]
    assert all(p.token % 2 == 0 for p in picks)
    assert grammar.taken == [p.token for p in picks]
    assert picks[0].top[0][0] == 4 and all(t % 2 == 0 for t, _ in picks[0].top)
