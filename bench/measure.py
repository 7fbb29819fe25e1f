"""Timing helpers shared by every benchmark: wall time with perf_counter, CPU time with
process_time (all threads of this process), and the median over runs."""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Sequence

# Warm-up runs before the timed ones: first calls pay for lazy imports, OpenSSL's method tables
# and the allocator's first growth.
WARMUP = 5

# One timed run of a measurement: run number in, the run's own Stopwatch reading out (a runner
# times only its measured part, so set-up and clean-up stay outside).
Runner = Callable[[int], Awaitable["Stopwatch"]]


@dataclass(frozen=True)
class Sample:
    """Medians over `runs` runs, in seconds: wall time and this process's CPU time."""

    wall: float
    cpu: float
    runs: int

    @classmethod
    def of(cls, walls: list[float], cpus: list[float]) -> "Sample":
        return cls(statistics.median(walls), statistics.median(cpus), len(walls))

    def __str__(self) -> str:
        return f"{self.wall * 1e3:.2f} ms wall, {self.cpu * 1e3:.2f} ms CPU (median of {self.runs})"


class Timings:
    """Stopwatch readings, the first `warmup` ignored: `timings.add(i, sw)` per run i, then
    `timings.sample()`."""

    def __init__(self, warmup: int = 0) -> None:
        self.warmup = warmup
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def add(self, index: int, sw: "Stopwatch") -> None:
        if index >= self.warmup:
            self.walls.append(sw.wall)
            self.cpus.append(sw.cpu)

    def sample(self) -> Sample:
        return Sample.of(self.walls, self.cpus)


class Stopwatch:
    """`with Stopwatch() as sw: ...` then sw.wall, sw.cpu (seconds)."""

    wall = cpu = 0.0

    def __enter__(self) -> "Stopwatch":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def quiet_audit() -> None:
    """Route agent audit events through logging into a NullHandler, as the service routes them
    to the journal: without a handler audit.event() prints one stderr line per event, which
    would flood the output (and cost a write per event that the service does not pay)."""
    audit_log = logging.getLogger("firsttrust.audit")
    if not any(isinstance(h, logging.NullHandler) for h in audit_log.handlers):
        audit_log.addHandler(logging.NullHandler())


def machine_busy_seconds() -> float:
    """CPU time spent by everything on this machine so far (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest and guest_nice (fields 8, 9) are already counted in user and nice.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def process_cpu(pid: int) -> float:
    """utime + stime of another process `pid`, in seconds (clock ticks, 10 ms on most kernels)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def interleave_timings(runs: int, runners: dict[str, Runner]) -> dict[str, Timings]:
    """WARMUP + `runs` rounds; each round runs every runner once, in turn. Measurements that are
    to be divided by one another are taken in the same rounds, so this machine's drift (up to
    ~30 % within a minute) moves numerator and denominator together. Each runner's readings,
    in round order (the warm-up rounds left out)."""
    timings = {name: Timings(WARMUP) for name in runners}
    for index in range(WARMUP + runs):
        for name, runner in runners.items():
            timings[name].add(index, await runner(index))
    return timings


async def interleave(runs: int, runners: dict[str, Runner]) -> dict[str, Sample]:
    """`interleave_timings`, each runner's readings as their medians."""
    return {name: timing.sample() for name, timing in (await interleave_timings(runs, runners)).items()}


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median over rounds of numerator / denominator, each pair taken in the same round: a
    round divides by what was measured beside it, at the machine's speed of that moment, and
    the median drops the rounds that a burst of other work hit on one side only."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("paired_ratio needs one denominator per numerator, and at least one pair")
    return statistics.median(n / d for n, d in zip(numerators, denominators))
