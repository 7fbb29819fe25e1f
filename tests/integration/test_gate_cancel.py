"""The gate's lock covers its disk work to the end (agent/gate.py `_to_the_end`): an enrollment
cancelled while its commit runs on a thread (the overall timeout, a shutdown) keeps the lock
until that thread ends, so the refund that follows reads the committed state, never the armed
one it would then write back over the commit."""

from __future__ import annotations

import asyncio
import threading

import pytest
from agent_fixture import provisioned

from firsttrust.agent.gate import EnrollmentGate


@pytest.mark.parametrize("cancels", [1, 3])
async def test_a_cancelled_commit_keeps_the_gate_locked_until_its_thread_ends(tmp_path, cancels):
    appliance = provisioned(tmp_path / "app")
    gate = EnrollmentGate(appliance.config, appliance.store)
    release, order = threading.Event(), []

    def committing(*args):
        release.wait(10)
        order.append("commit")
        return None

    gate._enroll = committing
    gate._add_failures = lambda delta: order.append("refund")
    enrolling = asyncio.create_task(gate.enroll("verifier", None, "peer"))
    await asyncio.sleep(0.05)
    for _ in range(cancels):  # a second cancellation while it waits changes nothing
        enrolling.cancel()
        await asyncio.sleep(0.05)
    refunding = asyncio.create_task(gate.refund())
    await asyncio.sleep(0.2)
    assert order == [] and gate.lock.locked(), "the refund ran while the commit's thread still ran"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await enrolling
    await asyncio.wait_for(refunding, 10)
    assert order == ["commit", "refund"]
