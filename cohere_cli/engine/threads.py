"""The decode thread count, chosen by measurement while decoding (stream_generate).

Why: a decode step is hundreds of short parallel regions (each matmul, each kernel call), and every region waits
for its slowest thread. When another process keeps a core busy, the thread that shares that core is preempted for
a scheduler slice (milliseconds) in region after region, while its partner spins: on the 2-core machine, 2 threads
then decoded at 0.1-0.3x their quiet speed, where 1 thread keeps ~0.5x (platform-notes: one thread reads memory at
about half the bandwidth of two). Which count is faster depends on what else runs, and that changes while we run,
so ThreadTuner measures: after every `wait` steps it runs a few steps with a neighbouring count (one fewer, or one
more when it is below the maximum) and keeps whichever is faster. A probe that loses doubles the wait (up to
MAX_WAIT: in a long quiet run probes cost under 1%), a step much slower than the recent ones probes at once.

At the caller's full count, only steps that show contention count towards the next probe: a step whose process CPU
time falls short of threads x wall time by more than LOST x wall had a thread off its core. On the 2-core machine,
CPU / (threads x wall) per step was 1.0-1.1 quiet (OpenMP's spinning threads count; 0.75-1.14 at the extremes) and
with one core kept busy median 0.74, at most 0.88: the thread sharing a core loses about half its time, whatever
the thread count (the others spin at each barrier), so the shortfall is measured in threads, not as a share (a
share of 0.9 would call 5 threads with a core taken quiet).
Why: each probe runs 3 steps at one thread fewer, 1.4-1.9x slower on the 2-core machine, so a quiet 64-token
answer paid ~8% for probes at steps 8, 27 and 62 that could not win.
stream_generate keeps one tuner per caller's count for the whole process (its choice and its back-off carry from one
answer to the next) and sets the tuned count around each decode step only, so nothing else runs at it."""

from __future__ import annotations

import statistics
from collections import deque


class ThreadTuner:
    PROBE = 3  # steps per probe (their median is compared: one slow step, e.g. oneDNN's first call, does not decide)
    FIRST = 8  # steps before the first probe, and after a switch
    MAX_WAIT = 512
    SLOWER = 2.0  # a step this many times the recent median starts a probe at once
    GAIN = 0.9  # a probe wins when its median step is under this fraction of the current count's
    LOST = 0.2  # threads x wall - CPU time, in walls, above which a step saw contention

    def __init__(self, threads: int):
        """`threads`: the most to use (the caller's count). `threads` is the count for the next step; the caller
        runs the step at it and reports its duration to step()."""
        self.max = max(1, threads)
        self.current, self.wait, self.count = self.max, self.FIRST, 0
        self.recent: deque[float] = deque(maxlen=8)  # step seconds at the current count
        self.trial: int | None = None  # the count being probed
        self.trial_times: list[float] = []
        self.down = True  # which neighbour the next probe tries, where both exist

    @property
    def threads(self) -> int:
        return self.current if self.trial is None else self.trial

    def step(self, seconds: float, cpu: float | None = None) -> None:
        """Record one decode step's duration (and the process CPU time it took, where known); may change the
        thread count for the next step."""
        if self.max == 1:
            return
        if self.trial is not None:
            self.trial_times.append(seconds)
            if len(self.trial_times) >= self.PROBE:
                self._decide()
            return
        sudden = len(self.recent) >= self.PROBE and seconds > self.SLOWER * statistics.median(self.recent)
        self.recent.append(seconds)
        if cpu is None or self.current < self.max or self.current * seconds - cpu > self.LOST * seconds:
            self.count += 1  # (at the full count, a quiet step is no reason to try fewer threads)
        if (self.count >= self.wait or sudden) and len(self.recent) >= self.PROBE:
            self._probe()

    def _probe(self) -> None:
        down = self.current > 1 and (self.down or self.current == self.max)
        self.trial = self.current - 1 if down else self.current + 1
        self.down = not down
        self.trial_times = []

    def _decide(self) -> None:
        mine = statistics.median(list(self.recent)[-self.PROBE :])
        if statistics.median(self.trial_times) < self.GAIN * mine:
            self.current, self.wait = self.trial, self.FIRST
            self.recent.clear()
            self.recent.extend(self.trial_times)
        else:
            self.wait = min(2 * self.wait, self.MAX_WAIT)
        self.trial, self.count = None, 0
