"""The batch against its shape, in alternating rounds: `requester/shape` and `appliance/shape`.

Each round runs one batch of firsttrust enrollments (bench/batch.py, one requester process as the
shape has: enroll_many with one worker, its concurrency) and one batch of the shape with both
sides' durable writes (bench/skeleton.py `shape_batch`), the same size and concurrency, each
against its own freshly started appliance process, each warmed up before its timed window. The
two take turns: batch first in even rounds, shape first in odd ones, so neither always runs in
the other's wake (page cache, the other engineers' load on a shared machine).

A round's ratio on each side is that side's CPU per enrollment in the batch over the same side's
in the shape, both measured minutes apart at most and seconds apart at best; the printed line is
the median of the rounds' ratios (`measure.paired_ratio`): what firsttrust's own code adds to
the message flow and the transaction it implements.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, NamedTuple

from .batch import BatchResult, run_batch
from .measure import WARMUP, paired_ratio
from .skeleton import ShapeBatch, shape_batch


class Round(NamedTuple):
    batch: BatchResult
    shape: ShapeBatch  # with both sides' durable writes

    @property
    def requester(self) -> float:
        return self.batch.requester_cpu / self.batch.count / self.shape.requester_cpu

    @property
    def appliance(self) -> float:
        return self.batch.appliances_cpu / self.batch.count / self.shape.appliance_cpu


class Rounds(NamedTuple):
    rounds: list[Round]

    @property
    def requester(self) -> float:
        """requester/shape: the median over rounds of the batch's requester CPU per enrollment
        over the shape's."""
        return paired_ratio([r.batch.requester_cpu / r.batch.count for r in self.rounds],
                            [r.shape.requester_cpu for r in self.rounds])

    @property
    def appliance(self) -> float:
        return paired_ratio([r.batch.appliances_cpu / r.batch.count for r in self.rounds],
                            [r.shape.appliance_cpu for r in self.rounds])

    def spread(self, side: str) -> str:
        values = sorted(getattr(r, side) for r in self.rounds)
        return " / ".join(f"{v:.2f}" for v in values)

    def failures(self) -> list[str]:
        return [f"round {i}: {'; '.join(r.batch.failures)} ({r.batch.not_enrolled} not enrolled)"
                for i, r in enumerate(self.rounds) if r.batch.failures or r.batch.not_enrolled]


def shape_rounds(rounds: int, count: int, concurrency: int,
                 log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)) -> Rounds:
    """`rounds` rounds, each a batch of `count` firsttrust enrollments (1 worker) and `count`
    enrollments of the shape with the durable writes, in alternating order."""
    warmup = min(WARMUP * 4, count)
    done: list[Round] = []
    for index in range(rounds):
        started = time.perf_counter()
        if index % 2 == 0:
            batch = run_batch(count, concurrency, workers=1, warmup=warmup)
            shape = shape_batch(count, concurrency, durable=True)
        else:
            shape = shape_batch(count, concurrency, durable=True)
            batch = run_batch(count, concurrency, workers=1, warmup=warmup)
        done.append(Round(batch, shape))
        log(f"         round {index + 1}/{rounds} ({time.perf_counter() - started:.0f} s): requester "
            f"{done[-1].requester:.2f}, appliance {done[-1].appliance:.2f}")
    return Rounds(done)
