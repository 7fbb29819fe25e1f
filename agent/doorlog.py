"""The doors' journal under a flood: what reaches the proof is logged per connection, what does
not is counted per source and logged once per interval.

`DoorLog` is the one object. Per-connection audit lines (`enroll-attempt`, `enroll-failed`,
`enrolled`) are written only for enrollment attempts whose proof arrived: those are bounded by
the failure counter and its back-off, and they are what an operator must see one by one. What
never reaches the proof (a hello and a close, a stalled hello, garbage, a refusal at accept, a
`busy`, `locked_out` or `backing_off` answer, an API connection that never authenticated) is
only counted, per source and outcome, and written as one `door-summary` line per source per
SUMMARY_INTERVAL. Running out of descriptors is counted the same way and written once per
interval with its count, never per accept.

The bound, whatever the flood: in any SUMMARY_INTERVAL the doors write at most
MAX_LINES_PER_INTERVAL lines: DETAIL_LINES per-connection lines (beyond them, attempts are
counted in the summary as `unlogged`), SUMMARY_SOURCES per-source summaries plus one for all
other sources, and one descriptor-exhaustion line per door. Before this, one source's 3,668
hello-and-close connections in 15 s wrote 7,338 lines (issue #25).

Sans-IO: the clock and the writer are injected; `flush` is called by the interval's timer
(armed with the first count of an interval) or by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Callable

from . import audit

log = logging.getLogger("firsttrust.server")

# --- the limits, with their reasons -------------------------------------------------------------

# One summary per source per minute: journald's default rate limit is 10,000 messages per 30 s
# per service (RateLimitIntervalSec/RateLimitBurst), and it drops, not delays, beyond it; our
# own bound must sit far below it so that the lines that matter are never the ones dropped.
# fail2ban and sshguard read such summaries as well as per-line logs.
SUMMARY_INTERVAL = 60.0
# Sources summarised by name per interval (the most active first); the rest in one line. A flood
# from a /16 still writes SUMMARY_SOURCES + 1 lines.
SUMMARY_SOURCES = 16
# Per-connection lines per interval. An appliance sees one enrollment; its failed guesses are
# at most 10 (lockout) with back-off between them. 32 leaves every legitimate line in, while a
# flood of correct proofs (someone who knows SEC-A) cannot write more.
DETAIL_LINES = 32
# Doors that report descriptor exhaustion (enrollment, API): one line each per interval.
DOORS = 2
MAX_LINES_PER_INTERVAL = DETAIL_LINES + SUMMARY_SOURCES + 1 + DOORS
# Sources counted per interval at most (bounded memory); beyond, counted under "other sources".
TRACKED_SOURCES = 4096
OTHERS = "other sources"


class DoorLog:
    """Counts per source and outcome, flushed as `door-summary` lines once per interval.

    Args:
        door: "enroll" or "api", in each line.
        clock: monotonic seconds.
        interval: SUMMARY_INTERVAL.
        write: writes one line: (event name, message, fields); audit.event by default.
    """

    def __init__(self, door: str, *, clock: Callable[[], float] = time.monotonic,
                 interval: float = SUMMARY_INTERVAL,
                 write: Callable[..., None] | None = None) -> None:
        self.door, self.clock, self.interval = door, clock, interval
        self._write = write or _audit_write
        self.counts: dict[str, dict[str, int]] = {}
        self.exhausted = 0  # accepts closed at once for want of a descriptor, this interval
        self.details = 0  # per-connection lines written this interval
        self.lines = 0  # lines written in all (tests)
        self._started = clock()
        self._timer: asyncio.TimerHandle | None = None

    def count(self, source: str, outcome: str) -> None:
        """One connection from `source` ended without reaching the proof, with `outcome`."""
        self._roll()
        per_source = self.counts.get(source)
        if per_source is None:
            if len(self.counts) >= TRACKED_SOURCES:
                source = OTHERS
            per_source = self.counts.setdefault(source, {})
        per_source[outcome] = per_source.get(outcome, 0) + 1
        self._arm()

    def descriptors_exhausted(self) -> None:
        """An accept found no descriptor left (EMFILE/ENFILE) and its connection was closed."""
        self._roll()
        self.exhausted += 1
        self._arm()

    def detail(self, source: str) -> bool:
        """May a per-connection line be written for an attempt from `source` now? When not, the
        attempt is counted as `unlogged` in the source's summary."""
        self._roll()
        if self.details < DETAIL_LINES:
            self.details += 1
            self.lines += 1
            return True
        self.count(source, "unlogged")
        return False

    def flush(self) -> None:
        """Write this interval's summaries and start the next interval."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, exhausted, elapsed = self.counts, self.exhausted, self.clock() - self._started
        self.counts, self.exhausted, self.details, self._started = {}, 0, 0, self.clock()
        seconds = max(1, round(elapsed))
        ranked = sorted(counts.items(), key=lambda item: -sum(item[1].values()))
        named, rest = ranked[:SUMMARY_SOURCES], ranked[SUMMARY_SOURCES:]
        if rest:
            merged: dict[str, int] = {}
            for _, outcomes in rest:
                for outcome, n in outcomes.items():
                    merged[outcome] = merged.get(outcome, 0) + n
            named.append((f"{len(rest)} {OTHERS}", merged))
        for source, outcomes in named:
            text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
            self._emit("door-summary", f"{self.door} port: {source}: {text} in the last {seconds} s",
                       door=self.door, peer=source, interval=seconds, **outcomes)
        if exhausted:
            self._emit("door-summary", f"{self.door} port: out of file descriptors: {exhausted} connections "
                       f"accepted and closed at once in the last {seconds} s", door=self.door,
                       outcome="descriptors_exhausted", descriptors_exhausted=exhausted, interval=seconds)

    def _emit(self, name: str, message: str, **fields: Any) -> None:
        self.lines += 1
        self._write(name, message, **fields)

    def _roll(self) -> None:
        if self.clock() - self._started >= self.interval:
            self.flush()

    def _arm(self) -> None:
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: flushed by the next count
                loop = asyncio.get_running_loop()
                left = max(0.0, self._started + self.interval - self.clock())
                self._timer = loop.call_later(left, self.flush)


def _audit_write(name: str, message: str, **fields: Any) -> None:
    audit.event(name, message, **fields)
