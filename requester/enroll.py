"""The client half of enrollment over asyncio: drives firsttrust.enrollment.ClientEnrollment.

Only moves bytes, upgrades to TLS when the state machine says so (strict lockstep: the
appliance's server_proof is the last plaintext frame), and reports the appliance's TLS
certificate. The machine frames the stream: the driver feeds it whatever a read returns, and
what it tells people it is waiting for follows the machine's events, never its state. The
caller stores the pin only after `enroll_connection` returns: every check (SRP proofs,
commitments, SEC-B proof, key confirmation, pin) has passed by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, NoReturn

from firsttrust import limits
from firsttrust.common.files import read_bounded
from firsttrust.common.streams import FrameDeadline, unread_in_kernel
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.enrollment import ClientEnrolled, ClientEnrollment, EnrollmentResult, PendingPin, SendFrame, StartTLS
from firsttrust.errors import BindingFailed, FirsttrustError, InvalidCertificate, TruncatedFrame
from firsttrust.framing import HEADER
from firsttrust.identity import certificate_der, file_stamp
from firsttrust.tlspolicy import apply_enrollment_client_policy, load_own_identity

from .errors import RequesterError

CONNECT_TIMEOUT = 10.0

# What the requester is waiting for after each step, for messages people read (never a state name).
CONNECTING = "the TCP connection"
CHALLENGE = "the appliance's SRP challenge (is this a firsttrust agent's enrollment port?)"
SERVER_PROOF = "the appliance's SRP proof (the appliance may be overloaded)"
HANDSHAKE = "the TLS handshake after SRP"
APPLIANCE_PROOF = "the appliance's SEC-B proof inside TLS"
CONFIRMATION = "the appliance to confirm the enrollment (run the same command again to recover)"
# One read takes everything the stream holds (asyncio's StreamReader keeps at most twice its
# 64 KiB limit plus one 256 KiB receive): bytes behind server_proof reach the state machine,
# which refuses them, and none can wait in the stream to be read as if TLS had protected them.
READ_ALL = 1 << 20
INTERCEPTED = ("the appliance's TLS certificate is not the one bound to the SRP exchange: "
               "the connection is being intercepted")

OnPending = Callable[[PendingPin], Awaitable[None]]


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


class InvalidAddress(RequesterError, ValueError):
    """An address that is not HOST, HOST:PORT or [V6]:PORT (a ValueError too, as it always was)."""

    code = "invalid_address"


def parse_address(address: str, default_port: int) -> tuple[str, int]:
    """HOST, HOST:PORT or [V6]:PORT.

    Raises:
        InvalidAddress: anything else, or not a string; the message quotes the address.
    """
    if not isinstance(address, str):
        raise InvalidAddress(f"an address is a string HOST[:PORT], not {type(address).__name__}")
    host, port = address, default_port
    try:
        if address.startswith("["):
            host, closed, rest = address[1:].partition("]")
            if not closed:
                raise ValueError(address)
            if rest.startswith(":"):
                port = int(rest[1:])
            elif rest:
                raise ValueError(rest)
        elif address.count(":") == 1:
            host, _, text = address.partition(":")
            port = int(text)
    except ValueError:
        port = 0
    if not _HOST_RE.fullmatch(host) or not 0 < port < 65536 or not _labels_fit(host):
        raise InvalidAddress(f"invalid address {address[:80]!r}: expected HOST[:PORT] or [IPv6]:PORT")
    return host, port


def _labels_fit(host: str) -> bool:
    """A DNS name's labels are 1-63 characters (RFC 1035); the resolver's IDNA codec raises
    UnicodeError, not a connection error, on any other (`x..y`). An IP address passes."""
    if ":" in host:
        return True
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return all(0 < len(label) <= 63 for label in labels)


# A DNS name, an IPv4 address, or (inside brackets) an IPv6 address.
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?")


class _Progress:
    """What the requester waits for now, as its events have told it (for messages people read)."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = CONNECTING


class _OwnIdentity:
    """The requester's key and certificate as enrollment uses them: the certificate read and
    converted once, and one TLS client context shared by every enrollment of this process that
    uses these files (docs/protocol.md section 7.3), instead of a context per connection. It
    trusts no anchor: the appliance's certificate is checked by section 7.4 after the handshake."""

    def __init__(self, files: ClientIdentityFiles) -> None:
        self.files = files
        self.certificate_der = certificate_der(read_bounded(files.cert_path, limits.MAX_IDENTITY_FILE,
                                                            too_large=InvalidCertificate))
        self.context = load_own_identity(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), files.cert_path, files.key_path)
        apply_enrollment_client_policy(self.context)


# Keyed by the files' paths and stamps: a replaced key or certificate (a new inode) is read anew.
_OWN: dict[tuple, _OwnIdentity] = {}
_OWN_LOCK = threading.Lock()
_OWN_MAX = 8  # identities kept per process; more is a test suite, not a requester


def _own_identity(files: ClientIdentityFiles) -> _OwnIdentity:
    key = (files.cert_path, files.key_path, file_stamp(files.cert_path), file_stamp(files.key_path))
    with _OWN_LOCK:
        own = _OWN.get(key)
        if own is None:
            own = _OwnIdentity(files)
            if len(_OWN) >= _OWN_MAX:
                _OWN.clear()
            _OWN[key] = own
        return own


def _client_context(files: ClientIdentityFiles) -> ssl.SSLContext:
    """The requester's shared TLS context for `files` (section 7.3; the certificate the appliance
    presents is checked by `tls_established` after the handshake, section 7.4)."""
    return _own_identity(files).context


async def enroll_connection(host: str, port: int, machine: ClientEnrollment, files: ClientIdentityFiles, *,
                            phase_timeout: float = limits.PHASE_TIMEOUT,
                            total_timeout: float = limits.ENROLLMENT_TIMEOUT,
                            on_pending: OnPending | None = None) -> EnrollmentResult:
    """Run one enrollment to its end.

    `on_pending` is awaited with the verified appliance before `finish` is sent; it must store
    it durably (the pending pin that a lost `enrolled` is recovered from).

    Raises:
        firsttrust errors from the state machine (AuthenticationFailed, SecBProofFailed,
        BindingFailed, PeerRefused, ...), EnrollmentConnectionError for network trouble or a
        timeout. Nothing is returned unless every check passed.
    """
    progress = _Progress()
    try:
        async with asyncio.timeout(total_timeout):
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
            deadline = FrameDeadline(reader)
            try:
                return await _drive(reader, writer, machine, files, phase_timeout, on_pending, progress, deadline)
            except FirsttrustError:
                # Tell the appliance why we stop (docs/protocol.md section 8.4), then close.
                frame = machine.error_frame()
                if frame and not writer.is_closing():
                    with contextlib.suppress(Exception):
                        writer.write(frame)
                        await asyncio.wait_for(writer.drain(), 2)
                raise
            finally:
                deadline.close()
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):  # not wait_for: no task for it
                        await writer.wait_closed()
    except TimeoutError:
        raise EnrollmentConnectionError(f"{host}:{port}: timed out waiting for {progress.waiting}",
                                        "timeout") from None
    except ssl.SSLError as exc:
        # The peer went away or broke off mid-handshake (a crash, a reset): not a verdict on it.
        raise EnrollmentConnectionError(f"{host}:{port}: the TLS handshake broke off ({_reason(exc)})",
                                        "reset") from None
    except ConnectionRefusedError:
        raise EnrollmentConnectionError(f"{host}:{port} refuses connections (not listening yet?)", "refused") from None
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError) as exc:
        raise EnrollmentConnectionError(f"{host}:{port}: {_lost(progress, exc)}", "reset") from None
    except OSError as exc:
        reason = "unreachable" if exc.errno in _UNREACHABLE else None
        raise EnrollmentConnectionError(f"{host}:{port}: {_reason(exc)}", reason) from None


def _reason(exc: BaseException) -> str:
    """A reason people can read, never empty: an exception whose text is empty (a bare
    ConnectionResetError()) is named by its type."""
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)


def _lost(progress: _Progress, exc: OSError) -> str:
    """What was lost: the step the requester was waiting for when the connection broke, and why."""
    return f"connection lost while waiting for {progress.waiting} ({_reason(exc)})"


async def _drive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, machine: ClientEnrollment,
                 files: ClientIdentityFiles, phase_timeout: float, on_pending: OnPending | None,
                 progress: _Progress, deadline: FrameDeadline) -> EnrollmentResult:
    pending = machine.start()
    progress.waiting = CHALLENGE
    while True:
        for event in pending:
            kind = type(event)
            if kind is SendFrame:
                writer.write(event.data)
                await writer.drain()
            elif kind is StartTLS:
                progress.waiting = HANDSHAKE
                # Nothing may follow server_proof: what the stream held reached the machine with
                # it (READ_ALL); what waits in the kernel is looked at here (in TLS the appliance
                # speaks second, so any byte waiting now is plaintext behind server_proof).
                leftover = unread_in_kernel(writer, HEADER.size)
                if leftover:
                    machine.receive_data(leftover)  # raises UnexpectedFrame: STARTTLS injection
                await writer.start_tls(_client_context(files), ssl_handshake_timeout=phase_timeout)
                ssl_object = writer.get_extra_info("ssl_object")
                try:
                    machine.tls_established(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
                except BindingFailed:
                    raise BindingFailed(INTERCEPTED) from None
                progress.waiting = APPLIANCE_PROOF
            elif kind is PendingPin:
                progress.waiting = CONFIRMATION
                if on_pending is not None:
                    await on_pending(event)
            elif kind is ClientEnrolled:
                return event.result
        pending = []
        # One deadline for the whole frame, however many reads it takes (docs/protocol.md section 8.2).
        deadline.start(min(machine.timeout or phase_timeout, phase_timeout))
        while not pending:
            data = await reader.read(READ_ALL)  # TimeoutError once the deadline passed
            if not data:
                _closed(machine, progress)
            pending = machine.receive_data(data)
        deadline.stop()
        if progress.waiting is CHALLENGE:
            progress.waiting = SERVER_PROOF  # the challenge is answered


def _closed(machine: ClientEnrollment, progress: _Progress) -> NoReturn:
    """The appliance closed the connection before the enrollment completed."""
    with contextlib.suppress(TruncatedFrame):
        machine.receive_eof()  # the machine fails too: the enrollment cannot go on
    # Not retried, also after finish: a closed door is an answer, and after finish the message
    # says what recovers (the same call, run again, confirms a commit over the API). The driver
    # before issue 29 meant to retry there, but asked the machine's state after receive_eof had
    # put it into ERROR, so it never did; tests/integration/test_transaction.py holds it so.
    raise EnrollmentConnectionError(f"the appliance closed the connection while the requester waited "
                                    f"for {progress.waiting}", None)


async def enroll(host: str, port: int, secrets: EnrollmentSecrets, files: ClientIdentityFiles, *, name: str,
                 ssh_key: str | None = None, on_pending: OnPending | None = None,
                 **timeouts: float) -> EnrollmentResult:
    """Enroll one appliance with its secrets, as the requester whose identity is in `files`."""
    machine = ClientEnrollment(sec_a=secrets.sec_a, sec_b=secrets.sec_b,
                               certificate=_own_identity(files).certificate_der, name=name, ssh_key=ssh_key)
    return await enroll_connection(host, port, machine, files, on_pending=on_pending, **timeouts)
