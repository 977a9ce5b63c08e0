"""How many threads llama.cpp should use for the next step, chosen from the steps' own timings.

llama.cpp's CPU threads meet at a barrier after every operation of a step. On quiet cores more
threads make a step faster; when anything else holds a core (a neighbour, a database, a CPU-bound
request handler) each barrier waits for whichever thread the scheduler preempted, and fewer
threads make more tokens per second, often many times more (docs/performance.md, "Under
contention"). Which wins changes while the server runs, so the decode loop asks `ThreadTuner`
before each step and tells it after:

    tuner = ThreadTuner(cores)
    while ...:
        n = tuner.choose(tokens)               # set on the context if it changed
        seconds = time of one llama_decode of `tokens` tokens at n threads
        tuner.observe(n, tokens, seconds)

It keeps, for every thread count and batch shape (the step's token count, by powers of two: a step
of 16 tokens is compared only with steps of 16–31), the seconds per token of the last few steps;
their median is the estimate (one step preempted for a whole time slice does not move it, three
slow steps in a row do). The counts it chooses from are 1, 2, 4, ... and `max_threads`. It starts
with one thread (a first step with too many threads beside a busy neighbour can take seconds) and
runs the best count it knows; every `period` seconds of decoding it probes a neighbouring count for
a few steps of shapes it has fresh figures for at the best count (other steps keep the best count
meanwhile) and moves there only when that is faster by `margin` in the same shapes. A probe that
loses is given up at its first clearly slower step, and the next waits twice as long (up to
`max_period`) and at least `cost_ratio` times what the lost probe took, so probing costs a few
percent at most even where one step at the wrong count takes seconds. When the best count's own
speed moves by `drift` (contention came or went) the next probe comes as soon as that allows. A
probe of more threads is put off while other runnable threads leave too few cores for it
(`free_cores`, read from the kernel's count of runnable threads): here one step at two threads
beside busy neighbours took seconds, so even one such step is worth avoiding when the answer is
plain.

Its clock is the decoding time it is told of, not the wall clock: idle time between requests does
not age its figures, and tests drive it with synthetic timings.
"""

from __future__ import annotations

import os
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


def thread_counts(max_threads: int) -> list[int]:
    """The counts a tuner chooses from: powers of two below `max_threads`, and `max_threads`."""
    counts, n = [], 1
    while n < max_threads:
        counts.append(n)
        n *= 2
    return [*counts, max(1, max_threads)]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def free_cores(cores: int, own_running: int) -> int:
    """Cores that other runnable threads leave free right now: `cores` less the threads the kernel
    counts as runnable (`procs_running` in /proc/stat), `own_running` of them ours. All of them
    where the kernel does not say."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"procs_running"):
                    return cores - max(0, int(line.split()[1]) - own_running)
    except OSError:
        pass
    return cores


@dataclass
class _Estimate:
    at: float  # tuner clock of the last step it took in
    baseline: float  # its value when the tuner last decided; `drift` is measured from it
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT))  # seconds per token

    @property
    def seconds_per_token(self) -> float:
        return statistics.median(self.recent)


_RECENT = 5  # steps an estimate remembers


@dataclass
class _Probe:
    threads: int
    ratios: list[float]  # the probed count's seconds per token / the best count's, same shape
    seconds: float = 0.0  # spent in the probe's steps


class ThreadTuner:
    """Picks a thread count in 1..`max_threads`; see the module docstring.

    `choose(tokens)` gives the count for a step of that many tokens; `observe` takes each step's
    count, token count and seconds. `best` is the count it settled on (a probe's steps differ from
    it); `switches` counts how often that changed. Not thread-safe: one decode thread owns it
    (reading `best` from elsewhere is fine)."""

    def __init__(
        self,
        max_threads: int,
        *,
        period: float = 2.0,  # seconds of decoding between probes, when the last probe won
        max_period: float = 8.0,  # the longest wait after probes that kept losing...
        cost_ratio: float = 20.0,  # ...unless the last lost probe took more than 1/cost_ratio of it
        probe_steps: int = 5,  # comparable steps a probe needs before it can win
        margin: float = 0.1,  # how much faster (per token) a count must be to replace the best
        give_up: float = 3.0,  # a probe step this much slower ends the probe at once
        drift: float = 0.3,  # the best count's speed moving this much brings the next probe forward
        free_cores: Callable[[int], int] | None = None,  # (our threads running) -> cores free now
    ) -> None:
        self.counts = thread_counts(max_threads)
        self.best = self.counts[0]
        self.switches = 0
        self._period, self._max_period, self._cost_ratio = period, max_period, cost_ratio
        self._probe_steps, self._margin, self._give_up = probe_steps, margin, give_up
        self._drift = drift
        self._free_cores = free_cores
        self._clock = 0.0
        self._wait = period
        self._next_probe = period
        self._not_before = 0.0  # no probe before this, however the speed drifts
        self._estimates: dict[tuple[int, int], _Estimate] = {}
        self._probe: _Probe | None = None
        self._upward = True  # which neighbour the next probe tries first

    def choose(self, tokens: int) -> int:
        """The thread count for a step of `tokens` tokens: the best count, or during a probe the
        probed one where the best count has fresh figures for a step of that shape."""
        probe = self._probe
        if probe is None or self._fresh(self.best, tokens.bit_length()) is None:
            return self.best
        return probe.threads

    def observe(self, threads: int, tokens: int, seconds: float) -> None:
        """Take in one step: `tokens` fed in `seconds` at `threads`."""
        if tokens <= 0 or seconds <= 0:
            return
        self._clock += seconds
        shape = tokens.bit_length()
        per_token = seconds / tokens
        self._take(threads, shape, per_token)
        if self._probe is not None:
            if threads == self._probe.threads:
                self._probe.seconds += seconds
                self._probed(shape, per_token)
        elif threads == self.best:
            if self._drifted(shape):
                self._next_probe = self._clock  # contention came or went: look again
                self._wait = self._period
            due = max(self._next_probe, self._not_before)
            if self._clock >= due and self._fresh(self.best, shape):
                self._start_probe()

    # -- figures -------------------------------------------------------------------------------

    def _take(self, threads: int, shape: int, per_token: float) -> None:
        est = self._estimates.get((threads, shape))
        if est is None or self._clock - est.at > self._max_period:  # too old to go on from
            est = self._estimates[(threads, shape)] = _Estimate(self._clock, per_token)
        est.recent.append(per_token)
        est.at = self._clock

    def _fresh(self, threads: int, shape: int) -> _Estimate | None:
        est = self._estimates.get((threads, shape))
        return est if est is not None and self._clock - est.at <= 2 * self._period else None

    def _drifted(self, shape: int) -> bool:
        est = self._estimates[(self.best, shape)]
        return abs(est.seconds_per_token / est.baseline - 1) > self._drift

    # -- probes --------------------------------------------------------------------------------

    def _start_probe(self) -> None:
        i = self.counts.index(self.best)
        up, down = self.counts[i + 1 : i + 2], self.counts[max(0, i - 1) : i]
        if up and self._free_cores is not None and self._free_cores(self.best) < up[0]:
            up = []  # other work holds the cores more threads would need
        candidates = up + down if self._upward else down + up
        self._upward = not self._upward
        if not candidates:  # one core, or no room to grow: look again later
            self._next_probe = self._clock + self._wait if len(self.counts) > 1 else float("inf")
            return
        self._probe = _Probe(candidates[0], [])

    def _probed(self, shape: int, per_token: float) -> None:
        probe = self._probe
        assert probe is not None
        best = self._fresh(self.best, shape)
        if best is None:  # (its figures aged during this very step)
            return
        probe.ratios.append(per_token / best.seconds_per_token)
        if probe.ratios[-1] > self._give_up:
            self._end_probe(won=False)
        elif len(probe.ratios) >= 3 and statistics.median(probe.ratios) >= 1:  # not winning: stop paying
            self._end_probe(won=False)
        elif len(probe.ratios) >= self._probe_steps:
            self._end_probe(won=statistics.median(probe.ratios) < 1 - self._margin)

    def _end_probe(self, *, won: bool) -> None:
        probe = self._probe
        assert probe is not None
        self._probe = None
        if won:
            self.best = probe.threads
            self.switches += 1
            self._wait = self._period
        else:
            self._wait = min(2 * self._wait, self._max_period)
            self._not_before = self._clock + self._cost_ratio * probe.seconds
        self._next_probe = self._clock + self._wait
        for est in self._estimates.values():
            est.baseline = est.seconds_per_token
