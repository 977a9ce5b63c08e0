"""The thread-count tuner driven by synthetic step timings: a 2-core machine, quiet or shared with
a CPU spinner, batches of varying size, noisy steps (some preempted for a whole time slice)."""

from __future__ import annotations

import os
import random

import pytest

from glmaas.engines.thread_tuner import ThreadTuner, free_cores, thread_counts


def step_seconds(threads: int, tokens: int, contended: bool, rng: random.Random, *, speedup: float = 1.7,
                 slowdown: float = 3.0) -> float:
    """One step on the simulated machine: two quiet threads are `speedup` times faster than one;
    beside a spinner two threads are `slowdown` times slower than one (the barrier waits for the
    preempted thread) and one thread is a little slower than on quiet cores."""
    seconds = 0.008 + 0.004 * tokens  # one thread, quiet
    if threads == 2:
        seconds *= slowdown if contended else 1 / speedup
    elif contended:
        seconds *= 1.05
    seconds *= rng.lognormvariate(0, 0.1)
    if rng.random() < 0.03:  # preempted for a time slice
        seconds += 0.004 * rng.randint(1, 4)
    return seconds


class Run:
    """Drives a tuner through simulated decoding; records seconds spent at each count."""

    def __init__(self, seed: int = 0, **tuner_options: object) -> None:
        self.tuner = ThreadTuner(2, **tuner_options)
        self.rng = random.Random(seed)
        self.clock = 0.0

    def decode(self, seconds: float, contended: bool, **machine: float) -> dict[int, float]:
        """Decode for `seconds` of simulated time; the time spent at each thread count."""
        spent = {1: 0.0, 2: 0.0}
        end = self.clock + seconds
        while self.clock < end:
            # Mostly decoding steps of several sequences; now and then a chunk of prompt.
            tokens = 272 if self.rng.random() < 0.03 else self.rng.choice((1, 4, 8, 16, 16, 16))
            threads = self.tuner.choose(tokens)
            s = step_seconds(threads, tokens, contended, self.rng, **machine)
            self.tuner.observe(threads, tokens, s)
            spent[threads] += s
            self.clock += s
        return spent


def share(spent: dict[int, float], threads: int) -> float:
    return spent[threads] / sum(spent.values())


def test_quiet_cores_get_every_thread_within_seconds() -> None:
    run = Run()
    run.decode(3, contended=False)
    assert run.tuner.best == 2
    spent = run.decode(60, contended=False)
    assert run.tuner.best == 2 and run.tuner.switches == 1
    assert share(spent, 1) < 0.05  # the probes of one thread cost little


def test_a_spinner_beside_it_keeps_it_at_one_thread() -> None:
    run = Run()
    spent = run.decode(60, contended=True)
    assert run.tuner.best == 1 and run.tuner.switches == 0
    assert share(spent, 2) < 0.1  # probes of two threads, given up at their first slow step


def test_probes_that_cost_seconds_are_rare() -> None:
    # Beside a busy neighbour one step at two threads can take 20 times one thread's.
    run = Run()
    spent = run.decode(300, contended=True, slowdown=20)
    assert run.tuner.best == 1
    assert share(spent, 2) < 0.1


def test_it_follows_contention_as_it_comes_and_goes() -> None:
    run = Run()
    run.decode(20, contended=False)
    assert run.tuner.best == 2
    run.decode(5, contended=True)
    assert run.tuner.best == 1
    # The spinner stops: two threads are tried again within the longest wait between probes.
    run.decode(20, contended=False)
    assert run.tuner.best == 2
    run.decode(5, contended=True)
    assert run.tuner.best == 1


def test_counts_that_tie_within_the_noise_do_not_thrash() -> None:
    for seed in range(5):
        run = Run(seed)
        run.decode(120, contended=False, speedup=1.0)
        assert run.tuner.switches <= 2, seed


def test_a_small_but_steady_gain_is_taken() -> None:
    run = Run()
    run.decode(60, contended=True, slowdown=0.8)  # two threads 25 % faster even beside a spinner
    assert run.tuner.best == 2


def test_one_core_never_probes() -> None:
    tuner = ThreadTuner(1)
    for _ in range(1000):
        assert tuner.choose(16) == 1
        tuner.observe(1, 16, 0.05)
    assert tuner.best == 1


def test_more_cores_climb_to_the_fastest_count() -> None:
    # Twelve cores, a neighbour on some of them: four threads is the fastest count it may choose.
    tuner = ThreadTuner(12)
    assert tuner.counts == thread_counts(12) == [1, 2, 4, 8, 12]
    per_token = {1: 0.04, 2: 0.022, 4: 0.012, 8: 0.018, 12: 0.03}
    for _ in range(5000):
        n = tuner.choose(16)
        tuner.observe(n, 16, per_token[n] * 16)
    assert tuner.best == 4


def test_no_probe_of_more_threads_while_other_work_holds_the_cores() -> None:
    run = Run(free_cores=lambda running: 1)  # a neighbour runnable on the other core
    spent = run.decode(60, contended=True)
    assert run.tuner.best == 1 and spent[2] == 0


def test_cores_freed_by_other_work_are_taken() -> None:
    room = {"free": 1}
    run = Run(free_cores=lambda running: room["free"])
    run.decode(10, contended=True)
    assert run.tuner.best == 1
    room["free"] = 2  # the neighbour left
    run.decode(10, contended=False)
    assert run.tuner.best == 2


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the kernel's count is Linux's")
def test_free_cores_reads_the_kernels_count_of_runnable_threads() -> None:
    # This thread is runnable while it reads, so at most every core is free.
    assert free_cores(64, own_running=1) <= 64
    assert free_cores(64, own_running=0) <= 63
