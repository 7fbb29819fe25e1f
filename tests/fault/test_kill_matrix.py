"""The kill -9 matrix of issue 9: every durable write and every send of an enrollment, on both
sides, is a kill point; after each one the appliance and the requester must recover by the
operator's ordinary means (restart the agent, run the same `firsttrust enroll` again) with the
invariants intact:

  I1  nothing accepts the requester's key (authorized.json, the account's authorized_keys, the
      pinned API) unless `firsttrust-agent status` says enrolled;
  I2  the re-run ends with the requester pinned to the appliance's real key and
      `firsttrust call app GET /v1/identity` working;
  I3  no sec-b on disk once enrolled and restarted;
  I4  the failure count never under-counts (all proofs here are right: it is 0 once enrolled,
      never negative, and never decreases except through the commit);
  and no secret outside sec-b (0600), the logs or the output; no temp file left after a restart.

Each test sweeps N = 1, 2, ... for one (side, syscall) until a run completes without the kill
firing; the number of kill points is what the code does, not a constant. How to run one kill
point by hand: see the docstring of fault_harness.py (the exact strace command).

    make test PYTEST_ARGS="tests/fault -k 'agent and rename' -s"
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pytest
from fault_cases import RESULTS, SLOTS, agent_case, repair_case, requester_case
from fault_harness import MAX_N

pytestmark = pytest.mark.fault

AGENT_SYSCALLS = ["rename", "fsync", "unlink", "sendto"]
REQUESTER_SYSCALLS = ["rename", "fsync", "unlink", "sendto", "connect"]


# The repair at start (agent/grant.py repair_at_start) writes and removes files too: killed inside it,
# the next start must still roll the enrollment forward.
REPAIR_SYSCALLS = ["rename", "fsync", "unlink"]

SWEEPS = ([("agent", s) for s in AGENT_SYSCALLS] + [("requester", s) for s in REQUESTER_SYSCALLS]
          + [("repair", s) for s in REPAIR_SYSCALLS])
CASES = {"agent": agent_case, "requester": requester_case, "repair": repair_case}


class Sweep:
    """N = 1, 2, ... for one (side, syscall), until the first N whose kill never fires; that
    unkilled run is the baseline and is checked too."""

    def __init__(self, side: str, syscall: str):
        self.side, self.syscall = side, syscall
        self.next_n, self.end = 1, None
        self.outcomes: dict[int, object] = {}
        self.started, self.seconds = time.monotonic(), 0.0

    def wants_more(self) -> bool:
        return (self.end is None or self.next_n < self.end) and self.next_n <= MAX_N

    def superseded(self, n: int) -> bool:
        return self.end is not None and n > self.end

    def record(self, n: int, outcome) -> None:
        self.outcomes[n] = outcome
        if not outcome.killed and not self.superseded(n):
            self.end = n
        if self.end is not None and all(k in self.outcomes for k in range(1, self.end + 1)):
            self.seconds = time.monotonic() - self.started

    def result(self) -> list:
        if self.end is None:
            raise AssertionError(f"{self.side} {self.syscall}: still killed at N={MAX_N}; the sweep never ended")
        return [self.outcomes[n] for n in range(1, self.end + 1)]


def run_matrix(fault_env, selected: list[tuple[str, str]]) -> dict:
    """All selected sweeps share SLOTS workers (one throwaway account each), so no sweep's tail
    leaves a worker idle. A case started beyond its sweep's end stops after its first run."""
    sweeps = [Sweep(side, syscall) for side, syscall in selected]
    accounts = queue.SimpleQueue()
    for account in fault_env["accounts"]:
        accounts.put(account)

    def run(sweep: Sweep, n: int):
        case = CASES[sweep.side]
        account = accounts.get()
        try:
            return case(fault_env["root"] / f"{sweep.side}-{sweep.syscall}" / f"n{n}", account,
                        fault_env["ssh_pub"], fault_env["deadline_flag"], fault_env["template"], sweep.syscall,
                        n, superseded=lambda: sweep.superseded(n))
        finally:
            accounts.put(account)

    running = {}
    with ThreadPoolExecutor(SLOTS) as pool:
        while True:
            for sweep in sweeps:  # breadth first: every sweep gets going early
                if len(running) < SLOTS and sweep.wants_more():
                    running[pool.submit(run, sweep, sweep.next_n)] = (sweep, sweep.next_n)
                    sweep.next_n += 1
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                sweep, n = running.pop(future)
                sweep.record(n, future.result())
    return {(sweep.side, sweep.syscall): sweep for sweep in sweeps}


@pytest.fixture(scope="session")
def matrix(fault_env, request):
    """The sweeps of every selected test_kill_point_sweep item, run together once."""
    selected = [key for key in SWEEPS if any(getattr(item, "callspec", None) and
                                             (item.callspec.params.get("side"), item.callspec.params.get("syscall"))
                                             == key for item in request.session.items)]
    started = time.monotonic()
    sweeps = run_matrix(fault_env, selected)
    print(f"\nkill -9 matrix: {len(selected)} sweeps in {time.monotonic() - started:.0f}s")
    return sweeps


@pytest.mark.parametrize("side,syscall", SWEEPS)
def test_kill_point_sweep(matrix, side, syscall):
    sweep = matrix[(side, syscall)]
    outcomes = sweep.result()
    RESULTS[side][syscall] = outcomes
    kills = [o for o in outcomes if o.killed]
    report = "\n".join(o.line() for o in outcomes)
    print(f"\n{side} {syscall}: {len(kills)} kill point(s), {sweep.seconds:.1f}s\n{report}")
    baseline = outcomes[-1]
    assert not baseline.violations, f"the unkilled baseline run breaks an invariant:\n{baseline.line()}"
    broken = [o for o in outcomes if o.violations]
    assert not broken, (f"{len(broken)} of {len(kills)} kill point(s) of {side}/{syscall} break an invariant:\n"
                        + "\n".join(o.line() for o in broken))
