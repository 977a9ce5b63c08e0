"""How many threads llama.cpp should use for the next step, chosen from the steps' own timings.

llama.cpp's CPU threads meet at a barrier at the end of every step. On quiet cores more threads
make a step faster; when anything else holds a core (a neighbour, a database, a CPU-bound request
handler) the barrier waits for whichever thread the scheduler preempted, and fewer threads make
more tokens per second (docs/performance.md, "Under contention"). Which wins changes while the
server runs, so the decode loop asks `ThreadTuner` before each step and tells it after:

    tuner = ThreadTuner(os.cpu_count())
    while ...:
        n = tuner.threads                      # set on the context if it changed
        seconds = time of one llama_decode at n threads
        tuner.observe(n, tokens_in_the_batch, seconds)

It keeps, for every thread count and batch shape (the step's token count, by powers of two: a
step of 16 decoded tokens is compared only with steps of 16–31), a moving average of the seconds
per token. It runs the best count it knows; every `period` seconds of decoding it probes a
neighbouring count for a few steps and moves there only when that is faster by `margin` in the
same shapes. A probe that loses is given up at its first clearly slower step, and the next is
tried twice as late (up to `max_period`), so a settled choice costs little; when the best count's
own speed moves by `drift` (contention came or went) the next probe comes at once.

Its clock is the decoding time it is told of, not the wall clock: idle time between requests
does not age its figures, and tests drive it with synthetic timings.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class _Estimate:
    seconds_per_token: float  # moving average
    at: float  # tuner clock of the last step it took in
    baseline: float  # its value when the tuner last chose; `drift` is measured from it


@dataclass
class _Probe:
    threads: int
    ratios: list[float]  # the probed count's seconds per token / the best count's, same shape
    steps: int = 0


class ThreadTuner:
    """Picks a thread count in 1..`max_threads`, starting at `max_threads`; see module docstring.

    `threads` is the count for the next step; `observe` takes each step's count, token count and
    seconds and returns the count for the next one. Not thread-safe: one decode thread owns it
    (reading `threads` from elsewhere is fine)."""

    def __init__(
        self,
        max_threads: int,
        *,
        period: float = 2.0,  # seconds of decoding between probes, when the last probe won
        max_period: float = 8.0,  # the longest wait after probes that kept losing
        probe_steps: int = 5,  # comparable steps a probe needs before it can win
        margin: float = 0.1,  # how much faster (per token) a count must be to replace the best
        give_up: float = 1.5,  # a probe step this much slower ends the probe at once
        drift: float = 0.3,  # the best count's speed moving this much brings the next probe forward
        smoothing: float = 0.25,  # weight of the newest step in the moving averages
    ) -> None:
        self.max_threads = max(1, max_threads)
        self.threads = self.best = self.max_threads
        self.switches = 0  # times the best count changed
        self._period, self._max_period, self._probe_steps = period, max_period, probe_steps
        self._margin, self._give_up, self._drift, self._smoothing = margin, give_up, drift, smoothing
        self._clock = 0.0
        self._wait = period
        self._next_probe = period
        self._estimates: dict[tuple[int, int], _Estimate] = {}
        self._probe: _Probe | None = None
        self._upward = True  # which neighbour the next probe tries first

    def observe(self, threads: int, tokens: int, seconds: float) -> int:
        """Take in one step (`tokens` fed in `seconds` at `threads`); return the next step's count."""
        if tokens <= 0 or seconds <= 0:
            return self.threads
        self._clock += seconds
        shape = tokens.bit_length()
        per_token = seconds / tokens
        self._take(threads, shape, per_token)
        if self._probe is not None and threads == self._probe.threads:
            self._probed(shape, per_token)
        elif threads == self.best:
            if self._drifted(shape):
                self._next_probe = self._clock  # contention came or went: look again now
                self._wait = self._period
            if self._clock >= self._next_probe and self._fresh(self.best, shape):
                self._start_probe()
        return self.threads

    # -- figures -------------------------------------------------------------------------------

    def _take(self, threads: int, shape: int, per_token: float) -> None:
        est = self._estimates.get((threads, shape))
        if est is None or self._clock - est.at > self._max_period:  # too old to average with
            self._estimates[(threads, shape)] = _Estimate(per_token, self._clock, per_token)
            return
        # One step preempted for a whole time slice moves the average by a bounded amount.
        sample = min(max(per_token, est.seconds_per_token / 2), est.seconds_per_token * 2)
        est.seconds_per_token += self._smoothing * (sample - est.seconds_per_token)
        est.at = self._clock

    def _fresh(self, threads: int, shape: int) -> _Estimate | None:
        est = self._estimates.get((threads, shape))
        return est if est is not None and self._clock - est.at <= 2 * self._period else None

    def _drifted(self, shape: int) -> bool:
        est = self._estimates[(self.best, shape)]
        return abs(est.seconds_per_token / est.baseline - 1) > self._drift

    # -- probes --------------------------------------------------------------------------------

    def _start_probe(self) -> None:
        up, down = self.best + 1, self.best - 1
        order = (up, down) if self._upward else (down, up)
        candidates = [n for n in order if 1 <= n <= self.max_threads]
        if not candidates:  # one core: nothing to choose
            self._next_probe = float("inf")
            return
        self._upward = not self._upward
        self._probe = _Probe(candidates[0], [])
        self.threads = candidates[0]

    def _probed(self, shape: int, per_token: float) -> None:
        probe = self._probe
        assert probe is not None
        probe.steps += 1
        best = self._fresh(self.best, shape)
        if best is not None:
            probe.ratios.append(per_token / best.seconds_per_token)
        if probe.ratios and probe.ratios[-1] > self._give_up:
            self._end_probe(won=False)
        elif len(probe.ratios) >= 3 and statistics.median(probe.ratios) >= 1:  # not winning: stop paying
            self._end_probe(won=False)
        elif len(probe.ratios) >= self._probe_steps:
            self._end_probe(won=statistics.median(probe.ratios) < 1 - self._margin)
        elif probe.steps >= 2 * self._probe_steps:  # the shapes kept changing: no verdict, retry
            self._end_probe(won=False, verdict=False)

    def _end_probe(self, *, won: bool, verdict: bool = True) -> None:
        probe = self._probe
        assert probe is not None
        self._probe = None
        if won:
            self.best = probe.threads
            self.switches += 1
            self._wait = self._period
        elif verdict:
            self._wait = min(2 * self._wait, self._max_period)
        self.threads = self.best
        self._next_probe = self._clock + self._wait
        for est in self._estimates.values():
            est.baseline = est.seconds_per_token
