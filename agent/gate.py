"""The appliance's enrollment policy and its persistent counters: may an attempt start, the
failure charge before a proof is checked, its refund, lockout, back-off, the window, and the
commit that enrolls (agent/grant.py). One `EnrollmentGate` per process; `Attempt` is one
connection's standing with it. The connection driver (agent/server.py) asks; nothing here
touches a socket.

Crash points: `EnrollmentGate(checkpoint=...)` is the one hook the kill tests use
(tests/integration/test_serve.py); it is called with the name of each step as it is reached
(`charged`, `verified`, `tls`, `prepared`, `committed`, `applied`, `enrolled-sent`; the first
three and the last by the driver). The product passes none.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Callable, NamedTuple, TypeVar

from firsttrust import limits

from . import audit
from .config import AgentConfig
from .grant import GrantRefused, apply_grant, commit_grant, prepare_grant
from .sshkeys import SSHKeyError
from .state import AgentState, StateDir

if TYPE_CHECKING:
    from firsttrust.enrollment import Authorization

# Back-off after the n-th failed attempt: base * 2^(n-1) seconds, capped.
BACKOFF_CAP = 300.0

T = TypeVar("T")
Checkpoint = Callable[[str], None]


def _no_checkpoint(step: str) -> None:
    return None


class Refusal(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    code: str
    message: str
    retry_after: int | None = None  # seconds, sent in the error frame (backing_off)


class EnrollmentGate:
    """The appliance's enrollment policy and its persistent counters. One per process; every
    mutation happens under `lock` and is written to state.json before it takes effect."""

    def __init__(self, config: AgentConfig, store: StateDir, *, clock: Callable[[], float] = time.time,
                 backoff_base: float = 1.0, checkpoint: Checkpoint | None = None) -> None:
        self.config = config
        self.checkpoint = checkpoint or _no_checkpoint  # see the module's docstring
        self.store = store
        self.clock = clock
        self.backoff_base = backoff_base
        self.lock = asyncio.Lock()
        self.last_failure_at = 0.0

    def _state(self) -> AgentState | None:
        return self.store.load()

    def check(self) -> Refusal | tuple[AgentState, str]:
        """May a new attempt start now? Returns the armed state and SEC-B, or a Refusal."""
        state = self._state()
        if state is None or (state.phase != "enrolled" and not state.armed):
            return Refusal("not_provisioned", "this appliance has no enrollment secrets")
        if state.phase == "enrolled":
            return Refusal("already_enrolled", "this appliance is already enrolled; SRP enrollment is closed")
        if state.failures >= self.config.max_failures:
            return Refusal("locked_out", f"locked after {state.failures} failed attempts; re-arm with fresh secrets")
        if state.window_expires_at is not None and self.clock() >= state.window_expires_at:
            return Refusal("window_closed", "the enrollment window has expired; re-arm with fresh secrets")
        refusal = self._backing_off(state.failures)
        if refusal is not None:
            return refusal
        sec_b = self.store.load_sec_b(state.sec_b_sha256)
        if sec_b is None:
            return Refusal("not_provisioned", "SEC-B is missing or does not match the armed state")
        return state, sec_b

    def _backing_off(self, failures: int) -> Refusal | None:
        """The `backing_off` refusal, with its machine-readable retry_after, while the back-off
        after `failures` failed attempts lasts."""
        if not failures:
            return None
        wait = min(BACKOFF_CAP, self.backoff_base * 2 ** (failures - 1))
        left = self.last_failure_at + wait - self.clock()
        if left <= 0:
            return None
        seconds = min(limits.MAX_RETRY_AFTER, math.ceil(left))
        return Refusal("backing_off", f"a recent attempt failed; retry in {seconds} s", seconds)

    async def charge(self) -> Refusal | None:
        """Count an attempt as failed before its proof is checked (crash-safe). Refuses, charging
        nothing, when the limit was reached meanwhile (concurrent connections that all passed
        `check` cannot get more than max_failures proofs checked between them) or when a failure
        since this connection opened put the appliance into back-off: the back-off applies when
        the proof arrives, not only when the connection opens. The disk work runs in a thread:
        an fsync must not stall every other connection's event loop."""
        refusal, _ = await self.charge_while(lambda: None)
        return refusal

    async def charge_while(self, check: Callable[[], T], attempt: "Attempt | None" = None
                           ) -> tuple[Refusal | None, T | Exception]:
        """`charge`, with `check` (the proof's verification) computed on this thread while the
        charge is written and fsync'ed on another. Returns once the charge is durable (or
        refused): (the refusal or None, what `check` returned or raised). The caller releases
        the proof's verdict only after this returns, and not at all when the charge was refused.
        `attempt` remembers what the back-off clock was, for a refund to put it back.
        """
        async with self.lock:
            pending = asyncio.get_running_loop().run_in_executor(None, self._charge)
            outcome: T | Exception
            try:
                outcome = check()
            except Exception as exc:  # handed back: the verdict waits for the charge
                outcome = exc
            refusal = await _to_the_end(pending)
            if refusal is None:
                previous, self.last_failure_at = self.last_failure_at, self.clock()
                if attempt is not None:
                    attempt.backoff = (previous, self.last_failure_at)
            return refusal, outcome

    def _charge(self) -> Refusal | None:
        state = self._state()
        if state is None or not state.armed:
            return Refusal("already_enrolled", "another requester enrolled while this attempt was open")
        if state.failures >= self.config.max_failures:  # reached by concurrent attempts since `check`
            return Refusal("locked_out", "locked: too many failed attempts; re-arm with fresh secrets")
        refusal = self._backing_off(state.failures)
        if refusal is not None:
            return refusal
        state.failures += 1
        self.store.save(state)
        return None

    async def refund(self, backoff: tuple[float, float] | None = None) -> None:
        """Undo a charge whose proof verified but whose enrollment did not complete: the count,
        and the back-off clock (`backoff`: what it was before the charge, and what the charge set)
        unless another charge moved it since. A refunded attempt starts no back-off: the next
        requester is not told to wait for a guess that was right (an injector, a relay, a reset)."""
        async with self.lock:
            await _to_the_end(asyncio.ensure_future(asyncio.to_thread(self._add_failures, -1)))
            if backoff is not None and self.last_failure_at == backoff[1]:
                self.last_failure_at = backoff[0]

    def _add_failures(self, delta: int) -> None:
        state = self._state()
        if state is not None and state.armed and state.failures + delta >= 0:
            state.failures += delta
            self.store.save(state)

    async def enroll(self, verifier_hex: str, authorization: Authorization, peer: str) -> Refusal | None:
        """Prepare, commit and apply the grant (agent/grant.py), unless someone else won first.
        Returns None once committed, or the Refusal to send (nothing was committed then)."""
        async with self.lock:
            return await _to_the_end(asyncio.ensure_future(asyncio.to_thread(self._enroll, verifier_hex,
                                                                                authorization, peer)))

    def _enroll(self, verifier_hex: str, authorization: Authorization, peer: str) -> Refusal | None:
        try:
            grant = prepare_grant(self.config, self.store, verifier_hex, authorization)
            self.checkpoint("prepared")
            state = commit_grant(self.store, grant)
        except GrantRefused as exc:
            return Refusal(exc.code, str(exc))
        self.checkpoint("committed")
        try:
            apply_grant(self.store, state, clock=self.clock)
        except SSHKeyError as exc:  # committed: rolled forward at the next start, said loudly now
            audit.event("repaired", f"enrollment committed but the SSH key is not installed yet: {exc}",
                        peer=peer, outcome="apply_incomplete")
        self.checkpoint("applied")
        return None


async def _to_the_end(work: asyncio.Future):
    """`await work` (disk work on a thread, under the gate's lock), except that a cancellation
    (the enrollment's overall timeout, the listener's shutdown) first waits for the thread to end
    and only then propagates: the lock is released with the work, never while a thread still
    writes state.json. Otherwise a refund could read the armed state, the cancelled commit then
    write the enrolled one, and the refund write the armed one back over it."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            try:
                await asyncio.shield(work)
            except asyncio.CancelledError:
                continue
            except Exception:  # noqa: BLE001 - its own failure: the caller hears of the cancellation
                break
        raise


class Attempt:
    """One connection's attempt, as the gate counts it: OPEN until its proof arrives (RECEIVED,
    the state machine's `ProofReceived`), CHARGED once the gate counted it as failed, VERIFIED
    on the machine's verdict (`ProofVerified`) until the commit that enrolls (which clears the
    count), COMMITTED after. `settle` refunds exactly a VERIFIED attempt, once: a verified proof
    whose enrollment then failed (a relay, bytes injected behind the proof, a timeout, a lost
    race) is not a failed guess. A crash before `settle` can only over-count."""

    __slots__ = ("gate", "stage", "backoff")
    OPEN, RECEIVED, CHARGED, VERIFIED, COMMITTED, REFUNDED = range(6)

    def __init__(self, gate: EnrollmentGate) -> None:
        self.gate = gate
        self.stage = Attempt.OPEN
        self.backoff: tuple[float, float] | None = None  # the back-off clock before and after its charge

    async def settle(self) -> None:
        """Refund a verified attempt that did not commit; nothing otherwise."""
        if self.stage == Attempt.VERIFIED:
            self.stage = Attempt.REFUNDED
            # even when the listener is being shut down
            await asyncio.shield(self.gate.refund(self.backoff))
