"""One enrollment end to end, in this process over 127.0.0.1: an EnrollmentServer over a freshly
provisioned state dir (agent side, as shipped: state.json, SEC-B and the identity read from
disk, counters and the authorization written with fsync) and firsttrust.requester.enroll.enroll with the
requester's key and certificate as files (requester side, as shipped). Timed from the call to
enroll() until it returns the verified result.

Every run needs its own appliance (an enrolled appliance closes SRP enrollment), so they are
all provisioned and listening before the first measurement. `enrollment_runner` gives one
enrollment per call, for measuring in turns with the floor (bench/measure.py interleave).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import AsyncIterator

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.requester.enroll import ClientIdentityFiles, enroll
from firsttrust.requester.truststore import TrustStore

from . import appliances
from .measure import Runner, Stopwatch


@contextlib.asynccontextmanager
async def enrollment_runner(runs: int) -> AsyncIterator[Runner]:
    """`runs` appliances provisioned and served (not timed); call number i enrolls the i-th."""
    secrets = [EnrollmentSecrets.generate() for _ in range(runs)]
    with tempfile.TemporaryDirectory(prefix="bench-enroll-") as tmp:
        root = Path(tmp)
        for index, pair in enumerate(secrets):
            appliances.provision_one(root, index, pair)
        store = TrustStore(root / "requester")
        store.identity()
        files = ClientIdentityFiles(store.cert_path, store.key_path)
        served = [await appliances.serve(appliances.state_dir(root, i)) for i in range(runs)]

        async def once(index: int) -> Stopwatch:
            with Stopwatch() as sw:
                result = await enroll("127.0.0.1", served[index].port, secrets[index], files, name=f"bench-{index}")
            assert result.appliance_pin
            return sw

        try:
            yield once
        finally:
            await appliances.stop(served)
