"""The client half of enrollment over asyncio: drives firsttrust.enrollment.ClientEnrollment.

Only moves bytes, upgrades to TLS when the state machine says so (strict lockstep: the
appliance's server_proof is the last plaintext frame), and reports the appliance's TLS
certificate. The caller stores the pin only after `enroll_connection` returns: every check
(SRP proofs, commitments, SEC-B proof, key confirmation, pin) has passed by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from firsttrust import limits
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.enrollment import ClientEnrollment, Enrolled, EnrollmentResult, SendFrame, StartTLS, State
from firsttrust.framing import HEADER
from firsttrust.identity import certificate_der
from firsttrust.tlspolicy import apply_policy

from .errors import RequesterError

CONNECT_TIMEOUT = 10.0


class EnrollmentConnectionError(RequesterError):
    """The appliance could not be reached, or the connection broke. `retry_reason` says whether
    trying again may help (requester/retry.py): "refused", "reset", "timeout", "unreachable", or None."""

    code = "connection"

    def __init__(self, message: str, retry_reason: str | None = None) -> None:
        super().__init__(message)
        self.retry_reason = retry_reason


# What a booting appliance looks like before its address is up (ARP/ND gets no answer).
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


@dataclass(frozen=True)
class ClientIdentityFiles:
    """The requester's own key and certificate, as files (stdlib ssl loads them from paths)."""

    cert_path: Path
    key_path: Path


def parse_address(address: str, default_port: int) -> tuple[str, int]:
    """HOST, HOST:PORT or [V6]:PORT."""
    host, port = address, default_port
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
        elif rest:
            raise ValueError("address must be HOST[:PORT]")
    elif address.count(":") == 1:
        host, _, text = address.partition(":")
        port = int(text)
    if not _HOST_RE.fullmatch(host) or not 0 < port < 65536:
        raise ValueError("address must be HOST[:PORT]")
    return host, port


# A DNS name, an IPv4 address, or (inside brackets) an IPv6 address.
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?")


async def _read_frame(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    try:
        header = await asyncio.wait_for(reader.readexactly(HEADER.size), timeout)
    except asyncio.IncompleteReadError as exc:
        return exc.partial, True
    (length,) = HEADER.unpack(header)
    if length == 0 or length > limits.MAX_FRAME_BODY:
        return header, False
    try:
        body = await asyncio.wait_for(reader.readexactly(length), timeout)
    except asyncio.IncompleteReadError as exc:
        return header + exc.partial, True
    return header + body, False


def _client_context(files: ClientIdentityFiles, appliance_certificate: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(files.cert_path, files.key_path)
    return apply_policy(context, [appliance_certificate])


async def enroll_connection(host: str, port: int, machine: ClientEnrollment, files: ClientIdentityFiles, *,
                            phase_timeout: float = limits.PHASE_TIMEOUT,
                            total_timeout: float = limits.ENROLLMENT_TIMEOUT) -> EnrollmentResult:
    """Run one enrollment to its end.

    Raises:
        firsttrust errors from the state machine (AuthenticationFailed, SecBProofFailed,
        BindingFailed, PeerRefused, ...), EnrollmentConnectionError for network trouble or a
        timeout. Nothing is returned unless every check passed.
    """
    try:
        async with asyncio.timeout(total_timeout):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
            try:
                return await _drive(reader, writer, machine, files, host, phase_timeout)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 2)
    except TimeoutError:
        raise EnrollmentConnectionError(f"{host}:{port}: timed out in state {machine.state.value}",
                                        "timeout") from None
    except ssl.SSLError as exc:
        raise EnrollmentConnectionError(f"{host}:{port}: TLS failed: {exc.reason or exc}") from None
    except ConnectionRefusedError as exc:
        raise EnrollmentConnectionError(f"{host}:{port}: {exc.strerror or exc}", "refused") from None
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
        raise EnrollmentConnectionError(f"{host}:{port}: {exc.strerror or exc}", "reset") from None
    except OSError as exc:
        reason = "unreachable" if exc.errno in _UNREACHABLE else None
        raise EnrollmentConnectionError(f"{host}:{port}: {exc.strerror or exc}", reason) from None


async def _drive(reader, writer, machine: ClientEnrollment, files: ClientIdentityFiles, host: str,
                 phase_timeout: float) -> EnrollmentResult:
    pending = machine.start()
    while True:
        for event in pending:
            if isinstance(event, SendFrame):
                writer.write(event.data)
                await writer.drain()
            elif isinstance(event, StartTLS):
                await writer.start_tls(_client_context(files, event.peer_certificate),
                                       ssl_handshake_timeout=phase_timeout)
                ssl_object = writer.get_extra_info("ssl_object")
                machine.tls_established(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
            elif isinstance(event, Enrolled):
                assert isinstance(event.result, EnrollmentResult)
                return event.result
        data, eof = await _read_frame(reader, min(machine.timeout or phase_timeout, phase_timeout))
        pending = machine.receive_data(data) if data else []
        if eof and machine.state is not State.DONE and not any(isinstance(e, Enrolled) for e in pending):
            machine.receive_eof()


async def enroll(host: str, port: int, secrets: EnrollmentSecrets, files: ClientIdentityFiles, *, name: str,
                 ssh_key: str | None = None, **timeouts: float) -> EnrollmentResult:
    """Enroll one appliance with its secrets, as the requester whose identity is in `files`."""
    certificate = files.cert_path.read_bytes()
    machine = ClientEnrollment(sec_a=secrets.sec_a, sec_b=secrets.sec_b, certificate=certificate_der(certificate),
                               name=name, ssh_key=ssh_key)
    return await enroll_connection(host, port, machine, files, **timeouts)
