"""Retrying an enrollment that failed for a reason that means "not now", until a deadline.

An appliance that is still booting refuses connections (or resets them while its agent starts);
one under a connection flood answers `busy`; one that saw a failed guess answers `backing_off`
with `retry_after`. None of these means "no": the requester tries again, with jittered
exponential back-off, until its deadline. Everything else (a wrong secret, a binding failure,
`locked_out`, `already_enrolled`, ...) is final and raised at once.

`Backoff` and `classify` are pure; `retry_until` takes its clock, sleep and random source as
arguments, so every schedule is a deterministic test.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from firsttrust.errors import FirsttrustError, PeerRefused

from .errors import RequesterError

T = TypeVar("T")

# Long enough for an appliance that is still booting: a VM's first boot (firmware, kernel,
# cloud-init-like provisioning, key generation) takes one to a few minutes.
DEFAULT_DEADLINE = 300.0

# Why a failure is worth retrying, as the state a person is shown (one line per change).
WAITING_FOR = {
    "refused": "refuses connections (still booting?)",
    "unreachable": "is unreachable (still booting?)",
    "reset": "reset the connection (agent restarting?)",
    "timeout": "did not answer in time",
    "busy": "is busy (too many unauthenticated connections)",
    "backing_off": "is backing off after a failed attempt",
}
RETRYABLE_REFUSALS = frozenset({"busy", "backing_off"})


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n (0-based): "equal jitter" over a capped exponential, i.e. uniform in
    [d/2, d] with d = min(cap, first * factor**n). Half the delay is guaranteed (no hammering
    when many requesters retry at once), half is random (they spread out); see "Exponential
    Backoff And Jitter", AWS Architecture Blog, 2015. Cap 10 s: a booting appliance is noticed
    within 10 s of its agent listening."""

    first: float = 0.25
    factor: float = 2.0
    cap: float = 10.0

    def delay(self, attempt: int, random: Callable[[], float] = _random.random) -> float:
        ceiling = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return ceiling / 2 + random() * ceiling / 2


def classify(error: BaseException) -> str | None:
    """The WAITING_FOR key of a retryable failure, or None when it is final."""
    if isinstance(error, PeerRefused):
        return error.code if error.code in RETRYABLE_REFUSALS else None
    reason = getattr(error, "retry_reason", None)
    return reason if reason in WAITING_FOR else None


@dataclass(frozen=True)
class Waiting:
    """Handed to `on_wait` when the reason for waiting changes: `reason` (a WAITING_FOR key),
    `until` (wall-clock time of the deadline), `error` (the failure that started this wait)."""

    reason: str
    until: float
    error: FirsttrustError

    def describe(self, address: str) -> str:
        until = time.strftime("%H:%M:%S", time.localtime(self.until))
        return f"{address} {WAITING_FOR[self.reason]}; retrying until {until}, Ctrl-C to stop"


class DeadlineExceeded(RequesterError):
    """Retryable failures went on until the deadline; the message names the address and the last one."""

    code = "deadline"


async def retry_until(attempt: Callable[[], Awaitable[T]], *, address: str, deadline: float,
                      backoff: Backoff = Backoff(), on_wait: Callable[[Waiting], None] | None = None,
                      clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                      random: Callable[[], float] = _random.random) -> T:
    """Run `attempt` until it returns, fails for good, or `deadline` seconds have passed.

    Args:
        attempt: one try (a new connection each time).
        address: HOST:PORT, for messages.
        deadline: seconds from now after which no new try starts. A try in progress runs to its own
            timeouts. A refusal's retry_after (`backing_off`; `busy` for an address sitting out a
            penalty) is waited for as asked, unless it ends past the deadline (then it is final at
            once).
        on_wait: called once per change of reason (not per retry); None: quiet.

    Raises:
        The attempt's own error when it is not retryable; DeadlineExceeded when retryable
        failures lasted until the deadline.
    """
    start = clock()
    end, until = start + deadline, wall_clock() + deadline
    tries, last_reason = 0, None
    while True:
        try:
            return await attempt()
        except FirsttrustError as exc:
            reason = classify(exc)
            if reason is None:
                raise
            error = exc
        advised = isinstance(error, PeerRefused) and error.retry_after is not None
        if advised:
            pause = float(error.retry_after) + backoff.first * random()  # a little jitter past the advice
        else:
            pause = backoff.delay(tries, random)
        tries += 1
        left = end - clock()
        if left <= 0 or (advised and pause > left):
            raise DeadlineExceeded(f"{address}: gave up after {clock() - start:.0f} s (deadline {deadline:g} s): "
                                   f"{_reason_text(reason, error)}") from error
        if reason != last_reason and on_wait is not None:
            on_wait(Waiting(reason, until, error))
        last_reason = reason
        await sleep(min(pause, left))


def _reason_text(reason: str, error: FirsttrustError) -> str:
    if isinstance(error, PeerRefused):
        return f"{error.code}: {error.peer_message}"
    return WAITING_FOR[reason]
