"""One enrollment end to end, in this process over 127.0.0.1: an EnrollmentServer over a freshly
provisioned state dir (agent side, as shipped: state.json, SEC-B and the identity read from
disk, counters and the authorization written with fsync) and firsttrust.requester.enroll.enroll with the
requester's key and certificate as files (requester side, as shipped). Timed from the call to
enroll() until it returns the verified result.

Every run needs its own appliance (an enrolled appliance closes SRP enrollment), so they are
all provisioned and listening before the first measurement.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.requester.enroll import ClientIdentityFiles, enroll
from firsttrust.requester.truststore import TrustStore

from . import appliances
from .floor import WARMUP
from .measure import Sample, Stopwatch, Timings


async def _measure(root: Path, secrets: list[EnrollmentSecrets]) -> Sample:
    store = TrustStore(root / "requester")
    store.identity()
    files = ClientIdentityFiles(store.cert_path, store.key_path)
    served = [await appliances.serve(appliances.state_dir(root, i)) for i in range(len(secrets))]
    timings = Timings(WARMUP)
    try:
        for i, (appliance, pair) in enumerate(zip(served, secrets)):
            with Stopwatch() as sw:
                result = await enroll("127.0.0.1", appliance.port, pair, files, name=f"bench-{i}")
            assert result.appliance_pin
            timings.add(i, sw)
    finally:
        await appliances.stop(served)
    return timings.sample()


def enrollment(runs: int) -> Sample:
    secrets = [EnrollmentSecrets.generate() for _ in range(WARMUP + runs)]
    with tempfile.TemporaryDirectory(prefix="bench-enroll-") as tmp:
        root = Path(tmp)
        for index, pair in enumerate(secrets):
            appliances.provision_one(root, index, pair)
        return asyncio.run(_measure(root, secrets))
