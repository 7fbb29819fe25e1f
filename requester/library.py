"""The requester library's top level: safe by default.

    record = await enroll_appliance("10.0.0.5", secrets, name="app-01")   # pins only after every check
    record = enroll_appliance_sync(...)                                    # the same, for sync callers
"""

from __future__ import annotations

import asyncio
import time

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import DEFAULT_ENROLL_PORT
from firsttrust.identity import certificate_pem

from .enroll import ClientIdentityFiles, enroll, parse_address
from .truststore import ApplianceRecord, TrustStore


async def enroll_appliance(address: str, secrets: EnrollmentSecrets, *, name: str, ssh_key: str | None = None,
                           store: TrustStore | None = None, **timeouts: float) -> ApplianceRecord:
    """Enroll the appliance at `address` (HOST[:PORT], default port 8790) and pin it as `name`.

    The record is written only after the appliance passed every check (SRP, commitments,
    SEC-B proof, key confirmation); on any failure nothing is stored and a typed error is raised.
    """
    store = store or TrustStore()
    store.identity()  # created once per home, before any network traffic
    host, port = parse_address(address, DEFAULT_ENROLL_PORT)
    result = await enroll(host, port, secrets, ClientIdentityFiles(store.cert_path, store.key_path), name=name,
                          ssh_key=ssh_key, **timeouts)
    record = ApplianceRecord(name=name, address=host, pin=result.appliance_pin,
                             certificate=certificate_pem(result.appliance_certificate).decode("ascii"),
                             api_port=result.api_port, ssh_host_keys=result.ssh_host_keys, embodiment="srp",
                             enrolled_at=time.time())
    store.save(record)
    return record


def enroll_appliance_sync(address: str, secrets: EnrollmentSecrets, **kwargs) -> ApplianceRecord:
    return asyncio.run(enroll_appliance(address, secrets, **kwargs))
