"""The requester library's top level: safe by default.

    record = await enroll_appliance("10.0.0.5", secrets, name="app-01")   # pins only after every check
    records = await enroll_many(targets, concurrency=32)                  # hundreds at once
    async with open_session("app-01") as api:                             # pinned mTLS
        await api.get("/v1/identity")
    await rotate_appliance("app-01")                                      # re-pin from the old key's signature
    pin_certificate("app-02", "10.0.0.6", cert_pem)                       # FIG. 2/3: handed over by the manager
    enroll_appliance_sync(...)                                            # the same, for sync callers
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import DEFAULT_API_PORT, DEFAULT_ENROLL_PORT
from firsttrust.errors import FirsttrustError
from firsttrust.identity import certificate_pem, pin_of_certificate

from .enroll import ClientIdentityFiles, enroll, parse_address
from .retry import DEFAULT_DEADLINE, Waiting, retry_until
from .session import PinnedSession
from .truststore import ApplianceRecord, TrustStore


async def enroll_appliance(address: str, secrets: EnrollmentSecrets, *, name: str, ssh_key: str | None = None,
                           store: TrustStore | None = None, api_address: str | None = None,
                           deadline: float = DEFAULT_DEADLINE, on_wait: Callable[[Waiting], None] | None = None,
                           **timeouts: float) -> ApplianceRecord:
    """Enroll the appliance at `address` (HOST[:PORT], default port 8790) and pin it as `name`.

    `api_address` (HOST[:PORT]) overrides where the API is reached afterwards, for appliances
    behind NAT or port forwarding; by default the enrollment host and the port it reported.

    The record is written only after the appliance passed every check (SRP, commitments,
    SEC-B proof, key confirmation); on any failure nothing is stored and a typed error is raised.

    Failures that mean "not now" (connection refused, reset or timed out, `busy`, `backing_off`)
    are retried with jittered exponential back-off, `backing_off` after its retry_after, until
    `deadline` seconds have passed (default 300: an appliance that is still booting); then
    requester.retry.DeadlineExceeded. Any other failure is raised at once. `on_wait` is called
    once per change of the reason for waiting (requester.retry.Waiting); by default the wait is quiet.
    """
    store = store or TrustStore()
    store.identity()  # created once per home, before any network traffic
    host, port = parse_address(address, DEFAULT_ENROLL_PORT)
    if api_address:
        parse_address(api_address, DEFAULT_API_PORT)  # refuse a bad one before enrolling
    files = ClientIdentityFiles(store.cert_path, store.key_path)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    result = await retry_until(lambda: enroll(host, port, secrets, files, name=name, ssh_key=ssh_key, **timeouts),
                               address=shown, deadline=deadline, on_wait=on_wait)
    api_host, api_port = parse_address(api_address, result.api_port) if api_address else (host, result.api_port)
    record = ApplianceRecord(name=name, address=api_host, pin=result.appliance_pin,
                             certificate=certificate_pem(result.appliance_certificate).decode("ascii"),
                             api_port=api_port, ssh_host_keys=result.ssh_host_keys, embodiment="srp",
                             enrolled_at=time.time())
    store.save(record)
    return record


def enroll_appliance_sync(address: str, secrets: EnrollmentSecrets, **kwargs) -> ApplianceRecord:
    return asyncio.run(enroll_appliance(address, secrets, **kwargs))


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    secrets: EnrollmentSecrets = field(repr=False)


@dataclass(frozen=True)
class Outcome:
    target: Target
    record: ApplianceRecord | None
    error: FirsttrustError | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.record is not None


async def enroll_many(targets: Iterable[Target], *, concurrency: int = 32, store: TrustStore | None = None,
                      on_done: Callable[[Outcome], None] | None = None, deadline: float = DEFAULT_DEADLINE,
                      **kwargs) -> list[Outcome]:
    """Enroll many appliances with at most `concurrency` in flight. Never raises for one
    appliance's failure: each Outcome carries its record or its typed error. `deadline` is each
    appliance's (see enroll_appliance): a booting appliance holds one of the `concurrency` slots."""
    store = store or TrustStore()
    store.identity()
    limit = asyncio.Semaphore(concurrency)

    async def one(target: Target) -> Outcome:
        async with limit:
            start = time.perf_counter()
            try:
                record = await enroll_appliance(target.address, target.secrets, name=target.name, store=store,
                                                deadline=deadline, **kwargs)
                outcome = Outcome(target, record, None, time.perf_counter() - start)
            except FirsttrustError as exc:
                outcome = Outcome(target, None, exc, time.perf_counter() - start)
        if on_done:
            on_done(outcome)
        return outcome

    return list(await asyncio.gather(*(one(t) for t in targets)))


def pin_certificate(name: str, address: str, certificate: bytes, *, api_port: int = DEFAULT_API_PORT,
                    embodiment: str = "injected-certificate", store: TrustStore | None = None) -> ApplianceRecord:
    """Pin an appliance certificate handed over by the manager over its own secure channel
    (seed FIG. 2: read from guestinfo; FIG. 3: `firsttrust-agent show-identity` via guest
    operations). The appliance must also authorize the requester's certificate (`store.identity()`):
    FIG. 2 injects it, FIG. 3 runs `firsttrust-agent authorize`."""
    store = store or TrustStore()
    store.identity()  # the certificate the appliance must authorize exists from now on
    host, port = parse_address(address, api_port)
    pem = certificate_pem(certificate).decode("ascii")
    record = ApplianceRecord(name=name, address=host, pin=pin_of_certificate(pem.encode()), certificate=pem,
                             api_port=port, embodiment=embodiment, enrolled_at=time.time())
    store.save(record)
    return record


def open_session(name: str, *, store: TrustStore | None = None, **kwargs) -> PinnedSession:
    """A pinned mTLS session to the appliance pinned as `name`."""
    store = store or TrustStore()
    record = store.get(name)
    return PinnedSession(record.address, record.api_port, record.certificate.encode(), store.key_path,
                         store.cert_path, **kwargs)


async def rotate_appliance(name: str, *, store: TrustStore | None = None) -> ApplianceRecord:
    """Ask the appliance for a new key; move the pin after checking the old key signed it."""
    store = store or TrustStore()
    record = store.get(name)
    async with open_session(name, store=store) as api:
        rotation = await api.rotate()
    updated = dataclasses.replace(record, pin=rotation.pin, certificate=rotation.certificate_pem.decode("ascii"))
    store.save(updated)
    return updated


async def call(name: str, method: str, path: str, body=None, *, store: TrustStore | None = None):
    async with open_session(name, store=store) as api:
        return await api.request(method, path, body)


def run_sync(coroutine: Awaitable):
    return asyncio.run(coroutine)
