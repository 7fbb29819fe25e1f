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
from fault_cases import RESULTS, SLOTS, agent_case, requester_case
from fault_harness import MAX_N

pytestmark = pytest.mark.fault

AGENT_SYSCALLS = ["rename", "fsync", "unlink", "sendto"]
REQUESTER_SYSCALLS = ["rename", "fsync", "unlink", "sendto", "connect"]


def sweep(fault_env, side: str, syscall: str) -> list:
    """Run N = 1, 2, ... (SLOTS cases in flight, each with an account of its own) until the
    first N whose kill never fires; that unkilled run is the baseline and is checked too. Cases
    started beyond it are finished and dropped."""
    case = agent_case if side == "agent" else requester_case
    root = fault_env["root"] / f"{side}-{syscall}"
    accounts = queue.SimpleQueue()
    for account in fault_env["accounts"]:
        accounts.put(account)

    def run(n: int):
        account = accounts.get()
        try:
            return case(root / f"n{n}", account, fault_env["ssh_pub"], fault_env["deadline_flag"],
                        fault_env["template"], syscall, n)
        finally:
            accounts.put(account)

    done, end, next_n = {}, None, 1
    with ThreadPoolExecutor(SLOTS) as pool:
        running = {}
        while True:
            while len(running) < SLOTS and (end is None or next_n < end) and next_n <= MAX_N:
                running[pool.submit(run, next_n)] = next_n
                next_n += 1
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                n = running.pop(future)
                done[n] = future.result()
                if not done[n].killed and (end is None or n < end):
                    end = n
    if end is None:
        raise AssertionError(f"{side} {syscall}: still killed at N={MAX_N}; the sweep never completed")
    return [done[n] for n in sorted(done) if n <= end]


@pytest.mark.parametrize("side,syscall", [("agent", s) for s in AGENT_SYSCALLS]
                         + [("requester", s) for s in REQUESTER_SYSCALLS])
def test_kill_point_sweep(fault_env, side, syscall):
    started = time.monotonic()
    outcomes = sweep(fault_env, side, syscall)
    RESULTS[side][syscall] = outcomes
    kills = [o for o in outcomes if o.killed]
    report = "\n".join(o.line() for o in outcomes)
    print(f"\n{side} {syscall}: {len(kills)} kill point(s) in {time.monotonic() - started:.1f}s\n{report}")
    baseline = outcomes[-1]
    assert not baseline.violations, f"the unkilled baseline run breaks an invariant:\n{baseline.line()}"
    broken = [o for o in outcomes if o.violations]
    assert not broken, (f"{len(broken)} of {len(kills)} kill point(s) of {side}/{syscall} break an invariant:\n"
                        + "\n".join(o.line() for o in broken))
