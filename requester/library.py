"""The requester library's top level: safe by default.

    secrets = load_secrets("app-01.json")                                 # as `firsttrust secrets new` wrote it
    record = await enroll_appliance("10.0.0.5", secrets, name="app-01")   # pins only after every check
    targets = read_targets("rack7.csv")                                   # a targets file (requester/batch.py)
    outcomes = await enroll_many(targets, concurrency=32)                 # hundreds at once, on every core
    BatchReport(outcomes).entries()                                       # what `enroll --targets --json` prints
    async with open_session("app-01") as api:                             # pinned mTLS
        await api.get("/v1/identity")
    await rotate_appliance("app-01")                                      # re-pin from the old key's signature
    pin_certificate("app-02", "10.0.0.6", cert_pem)                       # injected-certificate or guest-command mode
    enroll_appliance_sync(...)                                            # the same, for sync callers
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterable

from firsttrust.common.files import read_bounded
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import DEFAULT_API_PORT, DEFAULT_ENROLL_PORT
from firsttrust.enrollment import PendingPin
from firsttrust.errors import FirsttrustError, InvalidSecret, PeerRefused
from firsttrust.identity import certificate_pem, pin_of_certificate
from firsttrust.limits import MAX_SSH_HOST_KEYS, MAX_SSH_KEY_LINE
from firsttrust.messages import SSH_KEY_PATTERN

from .batch import BatchReport, InvalidTargets, Outcome, Target, read_targets
from .deployspec import InvalidDeploySpec, secrets_from_json
from .enroll import ClientIdentityFiles, enroll, parse_address
from .errors import ApiError, BadResponse, ConnectionFailed, PinMismatch, RequesterError
from .identitycheck import IdentityChanged, changed, different_deployment, probe, refuse_other_pin, save_pin
from .retry import DEFAULT_DEADLINE, Waiting, retry_until
from .session import PinnedSession
from .store import open_store
from .store.claims import claimed
from .truststore import ApplianceRecord, PinConflict, TrustStore, TrustStoreError, UnknownAppliance
from .workers import MIN_TARGETS_PER_WORKER, WORKER_KINDS, default_workers, enroll_in_workers

MAX_SECRETS_FILE = 64 * 1024


class EnrollmentUnconfirmed(RequesterError):
    """An earlier run verified this appliance and sent `finish`, but neither its API confirms
    that this requester is authorized nor does SRP enrollment accept the secrets any more."""

    code = "unconfirmed"


class NameTaken(RequesterError):
    """The name is pinned to another appliance; enrolling under it needs `replace=True`."""

    code = "name_taken"


class AlreadyPinned(RequesterError):
    """The name is already pinned to this address: nothing to do (`record` is the pin)."""

    code = "already_pinned"

    def __init__(self, record: ApplianceRecord) -> None:
        super().__init__(f"{record.name} is already pinned ({record.pin}); nothing to do")
        self.record = record


async def enroll_appliance(address: str, secrets: EnrollmentSecrets, *, name: str, ssh_key: str | None = None,
                           store: TrustStore | None = None, api_address: str | None = None,
                           replace: bool = False, deadline: float = DEFAULT_DEADLINE,
                           on_wait: Callable[[Waiting], None] | None = None, deployment_id: str | None = None,
                           **timeouts: float) -> ApplianceRecord:
    """Enroll the appliance at `address` (HOST[:PORT], default port 8790) and pin it as `name`.

    `api_address` (HOST[:PORT]) overrides where the API is reached afterwards, for appliances
    behind NAT or port forwarding; by default the enrollment host and the port it reported.

    Exactly once, with recovery: the verified appliance is kept as a pending pin before `finish`
    is sent. If `enrolled` never arrived (either side crashed, the connection dropped), calling
    this again with the same name confirms the commit over the pinned mutual-TLS API with this
    requester's own key, or, if the appliance never committed, enrolls afresh with the same
    secrets. The pin is written only after every check; on any failure a typed error is raised.

    The name is checked before anything is sent (refusing after the enrollment would spend the
    secrets and leave the appliance enrolled to nobody): a name pinned to another address is
    refused unless `replace` is true. A name pinned at this address is checked the same way
    (requester/identitycheck.py): `deployment_id` (the secrets file's) against the record's, else
    one TLS probe of the pinned API for the key it presents; a changed appliance is refused unless
    `replace` is true, and then enrolled and pinned in place of the old one (one atomic write).

    Failures that mean "not now" (connection refused, reset or timed out, `busy`, `backing_off`,
    a connection lost after `finish`) are retried with jittered exponential back-off,
    `backing_off` after its retry_after, until `deadline` seconds have passed (default 300: an
    appliance that is still booting); then requester.retry.DeadlineExceeded. The deadline bounds
    when a try may start: a try in progress runs to its own timeouts (each phase's, and at most
    limits.ENROLLMENT_TIMEOUT, 60 s, in all), so a peer that accepts and then stalls can hold the
    call up to that long past `deadline`; wrap it in asyncio.timeout for a hard bound. Each retry starts
    with the recovery step, so a crash of the appliance after its commit ends pinned once it is
    back. `on_wait` is called once per change of the reason for waiting (requester.retry.Waiting);
    by default the wait is quiet. `phase_timeout` and `total_timeout` (the only other keyword
    arguments) bound each phase of one try and the whole try, in seconds (defaults
    limits.PHASE_TIMEOUT and limits.ENROLLMENT_TIMEOUT).

    Raises:
        TypeError: `secrets` is not an EnrollmentSecrets, `ssh_key` not a str, or an unknown
            keyword argument (before anything is made or sent).
        AlreadyPinned: `name` is pinned to this address already, and the appliance there still
            presents the pinned key or does not answer (nothing was sent).
        IdentityChanged: `name` is pinned at this address to another deployment, or the appliance
            there presents another key or has enrolled nobody, and `replace` is false (nothing sent).
        NameTaken: `name` is pinned to another address and `replace` is false (nothing was sent).
        EnrollmentUnconfirmed: see the class.
        DeadlineExceeded: "not now" answers went on until `deadline`.
        InvalidAddress: `address` or `api_address` is not HOST[:PORT] (also a ValueError).
        TrustStoreError: `name` is not a name the store can hold, or the store cannot be used.
        firsttrust errors (PeerRefused, AuthenticationFailed, BindingFailed, ...) and
        EnrollmentConnectionError.
    """
    if not isinstance(secrets, EnrollmentSecrets):
        raise TypeError(f"secrets must be an EnrollmentSecrets (load_secrets, EnrollmentSecrets.generate), "
                        f"not {type(secrets).__name__}")
    _check_arguments("enroll_appliance", ssh_key=ssh_key, timeouts=timeouts)
    _check_deadline(deadline)
    store = store or open_store()
    store.identity()  # created once per home, before any network traffic
    return await _enroll_appliance(address, secrets, name=name, ssh_key=ssh_key, store=store, api_address=api_address,
                                   replace=replace, deadline=deadline, on_wait=on_wait, deployment_id=deployment_id,
                                   **timeouts)


# What enroll_appliance passes on to each connection (requester/enroll.py enroll_connection).
TIMEOUT_ARGUMENTS = ("phase_timeout", "total_timeout")
# What enroll_many passes on to every enroll_appliance: the rest is per target, or its own.
MANY_ARGUMENTS = ("ssh_key", "replace", "on_wait", *TIMEOUT_ARGUMENTS)


def _check_arguments(function: str, *, ssh_key: object = None, timeouts: dict | None = None,
                     allowed: tuple[str, ...] = TIMEOUT_ARGUMENTS) -> None:
    """A wrong type or an unknown keyword argument, named at once, before any key or connection
    is made (rather than an AttributeError from deep inside, or a TypeError naming an internal function)."""
    for key in timeouts or ():
        if key not in allowed:
            raise TypeError(f"{function}() got an unexpected keyword argument {key!r}")
    if ssh_key is not None and not isinstance(ssh_key, str):
        raise TypeError(f"ssh_key must be an OpenSSH public key line (str) or None, not {type(ssh_key).__name__}")


def _check_deadline(deadline: object) -> None:
    """A NaN deadline retried for ever, a str one failed deep inside: refused at once."""
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline) \
            or deadline < 0:
        raise ValueError(f"deadline must be a number of seconds >= 0, not {deadline!r}")


async def _enroll_appliance(address: str, secrets: EnrollmentSecrets, *, name: str, store: TrustStore,
                            ssh_key: str | None = None, api_address: str | None = None, replace: bool = False,
                            deadline: float = DEFAULT_DEADLINE, on_wait: Callable[[Waiting], None] | None = None,
                            deployment_id: str | None = None, **timeouts: float) -> ApplianceRecord:
    """enroll_appliance once the requester's identity exists (enroll_many checks it once)."""
    host, port = parse_address(address, DEFAULT_ENROLL_PORT)
    api_host, api_port = parse_address(api_address, DEFAULT_API_PORT) if api_address else (host, None)
    async def check_name() -> None:
        if await _store_call(store, store.get_pending, name) is None:
            with contextlib.suppress(UnknownAppliance):
                pinned = await _store_call(store, store.get, name)
                if pinned.address == api_host:
                    await _same_appliance(pinned, deployment_id, replace)
                elif (change := different_deployment(pinned, deployment_id)) is not None:
                    if not replace:  # the name's appliance was redeployed, at another address this time
                        raise change
                elif not replace:
                    raise NameTaken(f"{name} is already pinned to another appliance ({pinned.address}, "
                                    f"{pinned.pin}); choose another name, or pass --replace to re-pin it")

    async def keep_pending(verified: PendingPin) -> None:
        record = ApplianceRecord(name=name, address=api_host, pin=verified.appliance_pin,
                                 certificate=certificate_pem(verified.appliance_certificate).decode("ascii"),
                                 api_port=api_port or verified.api_port, embodiment="srp", enrolled_at=time.time(),
                                 deployment_id=deployment_id)
        await asyncio.to_thread(store.save_pending, record)

    tries = 0

    async def attempt() -> ApplianceRecord:
        nonlocal tries
        if tries and (renew := getattr(store, "renew", None)) is not None:
            await asyncio.to_thread(renew, name)  # a fleet claim: its lease again, or HeldByHost
        tries += 1
        pending = await _store_call(store, store.get_pending, name)
        if pending is not None and pending.address == api_host:
            confirmed = await _confirm_pending(store, pending, replace)
            if confirmed is not None:
                return confirmed
        try:
            result = await enroll(host, port, secrets, files_of(store), name=name, ssh_key=ssh_key,
                                  on_pending=keep_pending, **timeouts)
        except PeerRefused as exc:
            if exc.code == "already_enrolled" and pending is not None:
                raise EnrollmentUnconfirmed(
                    f"{name}: an earlier run sent finish to {address}, but the appliance's API at "
                    f"{pending.address}:{pending.api_port} does not accept this requester's key and SRP "
                    "enrollment is closed: the appliance was enrolled by another requester (or its agent has "
                    "not restarted since a crash; run the same command again)") from None
            raise
        record = ApplianceRecord(name=name, address=api_host, pin=result.appliance_pin,
                                 certificate=certificate_pem(result.appliance_certificate).decode("ascii"),
                                 api_port=api_port or result.api_port, ssh_host_keys=result.ssh_host_keys,
                                 embodiment="srp", enrolled_at=time.time(), deployment_id=deployment_id)
        # Two fsyncs: off the event loop, where other enrollments of a batch are waiting.
        await _promote(store, record, replace, asyncio.to_thread)
        return record

    async def run() -> ApplianceRecord:
        await check_name()
        return await retry_until(attempt, address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                                 deadline=deadline, on_wait=on_wait)

    # A fleet store claims the appliance for this host first, and the name is checked under the
    # claim (exactly once across hosts, docs/fleet.md section 5); the file store runs it as is.
    return await claimed(store, name, run)


async def _same_appliance(pinned: ApplianceRecord, deployment_id: str | None, replace: bool) -> None:
    """Returns only when the name may be (re-)enrolled: the appliance changed and `replace`.

    Raises:
        AlreadyPinned: the same appliance, or none answering (the pin stands, nothing was sent).
        IdentityChanged: it changed (identitycheck.py) and not `replace`.
    """
    change = different_deployment(pinned, deployment_id)
    if change is None:
        seen = await probe(pinned.address, pinned.api_port)
        change = changed(pinned, seen)
        if change is None:
            raise AlreadyPinned(pinned)
    if not replace:
        raise change


def files_of(store: TrustStore) -> ClientIdentityFiles:
    return ClientIdentityFiles(store.cert_path, store.key_path)


async def _promote(store: TrustStore, record: ApplianceRecord, replace: bool, call) -> None:
    """Pin the enrolled `record`. Without `replace` its name was unpinned when the enrollment
    began (check_name): a pin another process wrote meanwhile (`pin-cert`, another host's
    enrollment) is never replaced silently. IdentityChanged then, and the pending pin stays, so
    that the same command with --replace pins this appliance in its place."""
    try:
        await call(functools.partial(store.promote, record, same_key_only=not replace))
    except PinConflict as exc:
        raise IdentityChanged(f"{record.name} was pinned to another key ({exc.pin}) while this enrollment ran; the "
                              f"appliance it enrolled ({record.pin}) is kept as pending, not pinned. If that was "
                              "intended: the same command with --replace pins it in its place") from None


async def _confirm_pending(store: TrustStore, pending: ApplianceRecord, replace: bool) -> ApplianceRecord | None:
    """Recovery: does the appliance's API accept this requester's key, presenting the pending
    pin? Then the appliance committed this requester's enrollment: pin it. None: not (yet)
    confirmed, the caller runs SRP again (which the appliance refuses if it did commit)."""
    try:
        async with PinnedSession(pending.address, pending.api_port, pending.certificate.encode(), store.key_path,
                                 store.cert_path) as api:
            identity = await api.get("/v1/identity")
    except (ApiError, ConnectionFailed, PinMismatch, BadResponse):
        return None
    if not isinstance(identity, dict) or identity.get("pin") != pending.pin:
        return None
    host_keys = identity.get("ssh_host_keys")
    # As the enrollment's own `enrolled` frame would carry them (messages.py): a key that frame
    # would refuse, or one past its count, is not pinned (it would make the record unreadable).
    record = dataclasses.replace(pending, enrolled_at=time.time(), ssh_host_keys=tuple(
        key for key in (host_keys if isinstance(host_keys, list) else []) if isinstance(key, str)
        and len(key) <= MAX_SSH_KEY_LINE and re.fullmatch(SSH_KEY_PATTERN, key))[:MAX_SSH_HOST_KEYS])
    await _promote(store, record, replace, lambda call: _store_call(store, call))
    return record


async def _store_call(store: TrustStore, call, *args):
    """A trust store read or write from the event loop: a remote store's (the fleet store's
    network round trips, and retries that sleep through an outage) on a thread, a local one's
    (a bounded read of a small file) in place, as the batch's cost was measured (bench/)."""
    if store.remote:
        return await asyncio.to_thread(call, *args)
    return call(*args)


def known_hosts_lines(record: ApplianceRecord, port: int = 22) -> list[str]:
    """OpenSSH known_hosts lines for the appliance's pinned SSH host keys (`[host]:port` when the
    port is not 22). Empty when the appliance reported none."""
    host = f"[{record.address}]:{port}" if port != 22 else record.address
    return [f"{host} {' '.join(key.split()[:2])}" for key in record.ssh_host_keys]


def load_secrets(path: str | Path) -> EnrollmentSecrets:
    """Read a secrets file as `firsttrust secrets new` writes it (JSON with sec_a and sec_b).

    Raises:
        InvalidDeploySpec, InvalidSecret: the file is not a valid secrets file (the message
            names the file, never a value); TrustStoreError if it cannot be read.
    """
    path = Path(path)
    data = read_bounded(path, MAX_SECRETS_FILE, what=f"secrets file {path}", error=TrustStoreError,
                        too_large=InvalidDeploySpec)
    try:
        return secrets_from_json(data)
    except (InvalidDeploySpec, InvalidSecret) as exc:
        raise type(exc)(f"secrets file {path}: {exc}") from None


def enroll_appliance_sync(address: str, secrets: EnrollmentSecrets, **kwargs) -> ApplianceRecord:
    """enroll_appliance in an event loop of its own (asyncio.run): its arguments, result and errors."""
    return asyncio.run(enroll_appliance(address, secrets, **kwargs))


async def enroll_many(targets: Iterable[Target], *, concurrency: int = 32, store: TrustStore | None = None,
                      on_done: Callable[[Outcome], None] | None = None, deadline: float = DEFAULT_DEADLINE,
                      workers: int | None = None, worker_kind: str = "process", **kwargs) -> list[Outcome]:
    """Enroll many appliances with at most `concurrency` in flight. Never raises for one
    appliance's failure: each Outcome carries its record or its typed error, in the order of
    `targets`. `deadline` is each appliance's (see enroll_appliance): a booting appliance holds
    one of the `concurrency` slots.

    The work is CPU-bound (SRP and TLS), so it is spread over `workers` (default: one per CPU)
    worker processes, each with its own event loop and a share of `concurrency`; the trust store
    is shared (it locks across processes). `worker_kind="thread"` uses threads instead (pysrp's
    OpenSSL calls and the TLS handshake release the GIL, the rest does not: bench/README.md says
    which is faster). Batches smaller than MIN_TARGETS_PER_WORKER per worker use fewer workers,
    down to this process alone. With workers, `on_done` is still called in this process, and the
    keyword arguments passed on to enroll_appliance must be picklable (no callbacks).

    The keyword arguments passed on to each enroll_appliance are those of MANY_ARGUMENTS.

    Raises:
        ValueError: `concurrency` is not a whole number >= 1, `worker_kind` is unknown, a name
            appears twice among the targets, or `deadline` is not a number of seconds >= 0.
        TypeError: a target is not a Target or its secrets not EnrollmentSecrets, or another
            keyword argument (before anything is sent).
        TrustStoreError: the store (or its identity) cannot be used.
    """
    targets = list(targets)
    _check_arguments("enroll_many", ssh_key=kwargs.get("ssh_key"), timeouts=kwargs, allowed=MANY_ARGUMENTS)
    if type(concurrency) is not int or concurrency < 1:  # Semaphore(0) would wait forever
        raise ValueError(f"concurrency must be a whole number >= 1, not {concurrency!r}")
    names: set[str] = set()
    for target in targets:
        if not isinstance(target, Target):
            raise TypeError(f"enroll_many takes Target objects (requester.batch), not {type(target).__name__}")
        if not isinstance(target.secrets, EnrollmentSecrets):
            raise TypeError(f"{target.name}: secrets must be an EnrollmentSecrets, not {type(target.secrets).__name__}")
        if target.name in names:  # both would enroll, the second pin would replace the first: one orphaned
            raise ValueError(f"the name {str(target.name)[:64]!r} appears twice among the targets")
        names.add(target.name)
    _check_deadline(deadline)
    store = store or open_store()
    store.identity()
    if worker_kind not in WORKER_KINDS:
        raise ValueError(f"worker_kind must be one of {', '.join(WORKER_KINDS)}")
    # At most `concurrency` workers: each runs at least one enrollment at a time, and the shares
    # add up to `concurrency` exactly (enroll_in_workers).
    workers = max(1, min(workers or default_workers(), len(targets) // MIN_TARGETS_PER_WORKER, concurrency))
    if workers == 1:
        return await _enroll_here(targets, concurrency, store, on_done, deadline, kwargs)
    return await enroll_in_workers(_enroll_here, targets, concurrency, store, on_done, deadline, kwargs, workers,
                                   worker_kind)


async def _enroll_here(targets: list[Target], concurrency: int, store: TrustStore,
                       on_done: Callable[[Outcome], None] | None, deadline: float, kwargs: dict) -> list[Outcome]:
    limit = asyncio.Semaphore(concurrency)

    async def one(target: Target) -> Outcome:
        async with limit:
            start = time.perf_counter()
            try:
                record = await _enroll_appliance(target.address, target.secrets, name=target.name, store=store,
                                                 deadline=deadline, deployment_id=target.deployment_id, **kwargs)
                outcome = Outcome(target, record, None, time.perf_counter() - start)
            except AlreadyPinned as exc:
                outcome = Outcome(target, exc.record, None, time.perf_counter() - start, already_pinned=True)
            except FirsttrustError as exc:
                outcome = Outcome(target, None, exc, time.perf_counter() - start)
        if on_done:
            on_done(outcome)
        return outcome

    tasks = [asyncio.ensure_future(one(t)) for t in targets]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        # A bug, or the caller's cancellation: no enrollment goes on unseen, spending an
        # appliance's secrets with nobody to record its pin.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# The ways in whose certificate the manager hands over (the SRP way pins through enroll_appliance).
PINNED_EMBODIMENTS = ("injected-certificate", "guest-command")


def pin_certificate(name: str, address: str, certificate: bytes | str, *, api_port: int = DEFAULT_API_PORT,
                    embodiment: str = "injected-certificate", store: TrustStore | None = None,
                    replace: bool = False) -> ApplianceRecord:
    """Pin an appliance certificate handed over by the manager over its own secure channel
    (injected-certificate mode: read from guestinfo; guest-command mode: `firsttrust-agent
    show-identity` via guest operations). The appliance must also authorize the requester's
    certificate (`store.identity()`): the injected-certificate mode injects it, the guest-command
    mode runs `firsttrust-agent authorize`. `certificate` is PEM or DER (bytes, or PEM as str).

    Raises:
        InvalidCertificate: `certificate` is not one certificate this protocol accepts.
        InvalidAddress: `address` is not HOST[:PORT] (also a ValueError).
        ValueError: `api_port` is not a port, `embodiment` not one of PINNED_EMBODIMENTS.
        IdentityChanged: `name` is pinned to another key and `replace` is false (nothing pinned).
        TrustStoreError: `name` is not a name the store can hold, or the store cannot be used.
    """
    if type(api_port) is not int or not 0 < api_port < 65536:
        raise ValueError(f"api_port must be a port number (1-65535), not {api_port!r}")
    if embodiment not in PINNED_EMBODIMENTS:
        raise ValueError(f"embodiment must be one of {', '.join(PINNED_EMBODIMENTS)}, not {str(embodiment)[:40]!r}")
    if isinstance(certificate, str):
        certificate = certificate.encode("utf-8")
    host, port = parse_address(address, api_port)
    pem = certificate_pem(certificate).decode("ascii")
    store = store or open_store()
    pin = pin_of_certificate(pem.encode())
    how = f"firsttrust pin-cert {name} ... --replace"
    refuse_other_pin(store, name, pin, replace=replace, how=how)
    store.identity()  # the certificate the appliance must authorize exists from now on
    record = ApplianceRecord(name=name, address=host, pin=pin, certificate=pem,
                             api_port=port, embodiment=embodiment, enrolled_at=time.time())
    save_pin(store, record, replace=replace, how=how)  # the check again, under the store's lock
    return record


def open_session(name: str, *, store: TrustStore | None = None, **kwargs) -> PinnedSession:
    """A pinned mTLS session to the appliance pinned as `name` (keyword arguments: PinnedSession's).

    Raises:
        UnknownAppliance: nothing is pinned as `name`; TrustStoreError: its record is unusable.
    """
    store = store or open_store()
    record = store.get(name)
    for path in (store.key_path, store.cert_path):  # never made here: the appliance trusts the one it has
        if not os.path.isfile(path):
            raise TrustStoreError(f"{path} is missing: this requester's identity, which {name} trusts, is gone "
                                  "(restore it from a backup)")
    return PinnedSession(record.address, record.api_port, record.certificate.encode(), store.key_path,
                         store.cert_path, **kwargs)


async def rotate_appliance(name: str, *, store: TrustStore | None = None) -> ApplianceRecord:
    """Ask the appliance for a new key; move the pin after checking the old key signed it.

    Raises:
        UnknownAppliance, TrustStoreError: as open_session. ConnectionFailed, PinMismatch: the
        pinned API cannot be reached, or presents another key. RotationError: the answer does not
        prove that the old key signed the new one (the pin stays).
    """
    store = store or open_store()
    record = store.get(name)
    # The new pin must be writable before the appliance re-keys: a rotation whose pin cannot be
    # stored leaves the appliance on a key nothing pins, and SRP is closed. The record written
    # back as it is (a compare-and-set: still this key) proves the store takes a write now.
    await _store_call(store, functools.partial(store.save, record, same_key_only=True))
    async with open_session(name, store=store) as api:
        rotation = await api.rotate()
    updated = dataclasses.replace(record, pin=rotation.pin, certificate=rotation.certificate_pem.decode("ascii"))
    try:
        await _store_call(store, store.save, updated)
    except TrustStoreError as exc:
        raise TrustStoreError(
            f"{name} rotated to {rotation.pin} (verified: signed by the pinned key), but the new pin could not be "
            f"stored ({exc}); the store still pins the old key. Fix the store, then pin the certificate {name} "
            f"presents now if its pin is {rotation.pin}: firsttrust pin-cert {name} {record.address}:"
            f"{record.api_port} --cert FILE --replace") from None
    return updated


class CallRefused(RequesterError):
    """`call` refuses a path: not absolute, with '.' or '..' segments, or the rotate path (a
    rotation whose answer only came back as data would leave the pin on the old key)."""

    code = "call_refused"


def check_call_path(path: str) -> None:
    """Raise CallRefused for a path `call` must not send, however it is spelled: as the appliance
    routes it, percent-escapes decoded, repeated slashes one, no query."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise CallRefused("PATH must start with '/'")
    plain = re.sub("/+", "/", urllib.parse.unquote(path.partition("?")[0]))
    if {".", ".."} & set(plain.split("/")):
        raise CallRefused("PATH must not contain '.' or '..' segments")
    if plain.rstrip("/") == "/v1/identity/rotate":
        raise CallRefused("use rotate_appliance (`firsttrust rotate NAME`): it verifies the rotation and moves the pin")


async def call(name: str, method: str, path: str, body=None, *, store: TrustStore | None = None):
    """One request to the pinned API of `name` (PinnedSession.request): its decoded answer.

    Raises:
        CallRefused: `path` is one check_call_path refuses (nothing sent).
        as open_session; ConnectionFailed, PinMismatch, ApiError (the appliance refused it).
    """
    check_call_path(path)
    async with open_session(name, store=store) as api:
        return await api.request(method, path, body)
