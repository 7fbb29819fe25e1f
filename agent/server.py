"""The enrollment listener: drives firsttrust.enrollment.ServerEnrollment over asyncio.

This module only moves bytes, upgrades the stream to TLS when the state machine says so,
reports the peer certificate, and persists what it is told to persist. Everything about the
protocol is decided in firsttrust/; everything about one appliance's policy (is enrollment
open? how many failures? back-off?) is decided here, in `EnrollmentGate`.

Per connection:  gate check -> hello -> challenge -> client_proof (a failure is charged before
the proof is checked, and back-off is checked again then; if M1 verifies, the charge is cleared
by the commit that enrolls, or refunded if the attempt fails in any way after M1 verified, so a
crash can only over-count) -> no plaintext behind it (STARTTLS injection) -> server_proof + STARTTLS ->
appliance_proof -> finish -> prepare, commit, apply the grant (agent/grant.py; under a lock: when
two requesters race, exactly one wins) -> enrolled.

Until the proof arrives a connection holds a post-hello slot (agent/frontdoor.py) and may be
evicted for another hello; its end is counted per source (agent/doorlog.py) and, when the peer
caused it, penalized. Plaintext refusals are drained (agent/drain.py) so that they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import ssl
import time
from typing import TYPE_CHECKING, Awaitable, Callable, NamedTuple, TypeVar

from firsttrust import limits
from firsttrust.errors import AuthenticationFailed, FirsttrustError, PeerRefused, StateError
from firsttrust.framing import HEADER, FrameDecoder, encode_error
from firsttrust.identity import file_stamp
from firsttrust.tlspolicy import SharedContext

from . import audit
from .config import AgentConfig
from .doorlog import DoorLog
from .drain import MAX_DRAINING, Drains
from .frontdoor import EVICTED, FIRST_FRAME_TIMEOUT, MAX_UNAUTHENTICATED, PER_SOURCE_MAX_UNAUTHENTICATED, \
    DoorProtocol, DoorSocket, Entry, FrontDoor, source_key
from .grant import GrantRefused, apply_grant, commit_grant, prepare_grant
from .listening import listen_on, passive_addresses
from .sshkeys import HOST_KEY_GLOB, SSHKeyError, host_public_keys
from .state import AgentState, StateDir

if TYPE_CHECKING:
    from firsttrust.enrollment import Authorization

log = logging.getLogger("firsttrust.server")


@functools.cache
def _enrollment_module():
    """The enrollment state machine and its events, imported with the first connection that gets
    that far, not at start-up: with pysrp (ctypes, libssl) and the message schemas that is ~20 ms
    of the agent's start before READY=1, for a connection that may come minutes later or never
    (an appliance enrolled long ago restarts without one). Logs the SRP backend, once."""
    from firsttrust import enrollment
    from firsttrust.srp6a import BACKEND

    log.info("enrollment code loaded (SRP backend %s)", BACKEND)
    return enrollment

# The pre-authentication limits (MAX_UNAUTHENTICATED, per source, first-frame deadline) and
# their reasons live in agent/frontdoor.py.
READ_CHUNK = 16 * 1024
# The first byte of a TLS handshake record (RFC 8446 section 5.1, ContentType handshake(22)).
TLS_HANDSHAKE_RECORD = b"\x16"
# Back-off after the n-th failed attempt: base * 2^(n-1) seconds, capped.
BACKOFF_CAP = 300.0

T = TypeVar("T")


def _checkpoint(step: str) -> None:
    """Tests replace this to kill the process between enrollment steps."""


class Refusal(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    code: str
    message: str
    retry_after: int | None = None  # seconds, sent in the error frame (backing_off)


class EnrollmentGate:
    """The appliance's enrollment policy and its persistent counters. One per process; every
    mutation happens under `lock` and is written to state.json before it takes effect."""

    def __init__(self, config: AgentConfig, store: StateDir, *, clock: Callable[[], float] = time.time,
                 backoff_base: float = 1.0) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.backoff_base = backoff_base
        self.lock = asyncio.Lock()
        self.last_failure_at = 0.0

    def _state(self) -> AgentState | None:
        return self.store.load()

    def check(self) -> Refusal | tuple[AgentState, str]:
        """May a new attempt start now? Returns the armed state and SEC-B, or a Refusal."""
        state = self._state()
        if state is None or (state.phase != "enrolled" and not state.armed):
            return Refusal("not_provisioned", "this appliance has no enrollment secrets")
        if state.phase == "enrolled":
            return Refusal("already_enrolled", "this appliance is already enrolled; SRP enrollment is closed")
        if state.failures >= self.config.max_failures:
            return Refusal("locked_out", f"locked after {state.failures} failed attempts; re-arm with fresh secrets")
        if state.window_expires_at is not None and self.clock() >= state.window_expires_at:
            return Refusal("window_closed", "the enrollment window has expired; re-arm with fresh secrets")
        refusal = self._backing_off(state.failures)
        if refusal is not None:
            return refusal
        sec_b = self.store.load_sec_b(state.sec_b_sha256)
        if sec_b is None:
            return Refusal("not_provisioned", "SEC-B is missing or does not match the armed state")
        return state, sec_b

    def _backing_off(self, failures: int) -> Refusal | None:
        """The `backing_off` refusal, with its machine-readable retry_after, while the back-off
        after `failures` failed attempts lasts."""
        if not failures:
            return None
        wait = min(BACKOFF_CAP, self.backoff_base * 2 ** (failures - 1))
        left = self.last_failure_at + wait - self.clock()
        if left <= 0:
            return None
        seconds = min(limits.MAX_RETRY_AFTER, math.ceil(left))
        return Refusal("backing_off", f"a recent attempt failed; retry in {seconds} s", seconds)

    async def charge(self) -> Refusal | None:
        """Count an attempt as failed before its proof is checked (crash-safe). Refuses, charging
        nothing, when the limit was reached meanwhile (concurrent connections that all passed
        `check` cannot get more than max_failures proofs checked between them) or when a failure
        since this connection opened put the appliance into back-off: the back-off applies when
        the proof arrives, not only when the connection opens. The disk work runs in a thread:
        an fsync must not stall every other connection's event loop."""
        refusal, _ = await self.charge_while(lambda: None)
        return refusal

    async def charge_while(self, check: Callable[[], T]) -> tuple[Refusal | None, T | Exception]:
        """`charge`, with `check` (the proof's verification) computed on this thread while the
        charge is written and fsync'ed on another. Returns once the charge is durable (or
        refused): (the refusal or None, what `check` returned or raised). The caller releases
        the proof's verdict only after this returns, and not at all when the charge was refused.
        """
        async with self.lock:
            pending = asyncio.get_running_loop().run_in_executor(None, self._charge)
            outcome: T | Exception
            try:
                outcome = check()
            except Exception as exc:  # handed back: the verdict waits for the charge
                outcome = exc
            refusal = await pending
            if refusal is None:
                self.last_failure_at = self.clock()
            return refusal, outcome

    def _charge(self) -> Refusal | None:
        state = self._state()
        if state is None or not state.armed:
            return Refusal("already_enrolled", "another requester enrolled while this attempt was open")
        if state.failures >= self.config.max_failures:  # reached by concurrent attempts since `check`
            return Refusal("locked_out", "locked: too many failed attempts; re-arm with fresh secrets")
        refusal = self._backing_off(state.failures)
        if refusal is not None:
            return refusal
        state.failures += 1
        self.store.save(state)
        return None

    async def refund(self) -> None:
        """Undo a charge whose proof verified but whose enrollment did not complete."""
        async with self.lock:
            await asyncio.to_thread(self._add_failures, -1)

    def _add_failures(self, delta: int) -> None:
        state = self._state()
        if state is not None and state.armed and state.failures + delta >= 0:
            state.failures += delta
            self.store.save(state)

    async def enroll(self, verifier_hex: str, authorization: Authorization, peer: str) -> Refusal | None:
        """Prepare, commit and apply the grant (agent/grant.py), unless someone else won first.
        Returns None once committed, or the Refusal to send (nothing was committed then)."""
        async with self.lock:
            return await asyncio.to_thread(self._enroll, verifier_hex, authorization, peer)

    def _enroll(self, verifier_hex: str, authorization: Authorization, peer: str) -> Refusal | None:
        try:
            grant = prepare_grant(self.config, self.store, verifier_hex, authorization)
            _checkpoint("prepared")
            state = commit_grant(self.store, grant)
        except GrantRefused as exc:
            return Refusal(exc.code, str(exc))
        _checkpoint("committed")
        try:
            apply_grant(self.store, state, clock=self.clock)
        except SSHKeyError as exc:  # committed: rolled forward at the next start, said loudly now
            audit.event("repaired", f"enrollment committed but the SSH key is not installed yet: {exc}",
                        peer=peer, outcome="apply_incomplete")
        _checkpoint("applied")
        return None


class OwnIdentity:
    """The appliance's identity as enrollment presents it: its certificate (DER) and one shared
    TLS server context with its key loaded, made once, not per connection (docs/protocol.md
    section 7.3), and again when identity.key or identity.crt is replaced (every write of them is
    a rename: a new inode). Checked with the ssl module alone: loading the key and certificate
    into a context fails unless the key is the certificate's (OpenSSL compares them), so the
    agent does not load cryptography's x509 before an enrollment needs it."""

    def __init__(self, store: StateDir) -> None:
        self.store = store
        self._stamp: tuple | None = None
        self.cert_der: bytes | None = None
        self.tls: SharedContext | None = None

    def load(self) -> bytes | None:
        """The certificate (DER) of the current identity, or None if it is missing, corrupt, or
        its key and certificate disagree. Reads the files only when they changed."""
        stamp = (file_stamp(self.store.key_path), file_stamp(self.store.cert_path))
        if stamp != self._stamp or self.cert_der is None:
            self._stamp, self.cert_der, self.tls = stamp, None, None
            try:
                cert_der = ssl.PEM_cert_to_DER_cert(self.store.cert_path.read_text("ascii"))
                context = self._new_context()
            except (OSError, ValueError, ssl.SSLError) as exc:  # missing, corrupt, or a key mismatch
                log.debug("the appliance identity is not usable: %s", exc)
                return None
            self.cert_der, self.tls = cert_der, SharedContext(self._new_context, fresh=context)
        return self.cert_der

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.store.cert_path, self.store.key_path)
        return context


class EnrollmentServer:
    """Accepts connections and runs one ServerEnrollment per connection."""

    def __init__(self, gate: EnrollmentGate, *, api_port: int, host_key_glob: str = HOST_KEY_GLOB,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED, phase_timeout: float = limits.PHASE_TIMEOUT,
                 enrollment_timeout: float = limits.ENROLLMENT_TIMEOUT,
                 on_enrolled: Callable[[Authorization], Awaitable[None]] | None = None,
                 per_source_max: int = PER_SOURCE_MAX_UNAUTHENTICATED,
                 first_frame_timeout: float = FIRST_FRAME_TIMEOUT, own: OwnIdentity | None = None,
                 max_draining: int = MAX_DRAINING, doorlog: DoorLog | None = None, **door_args) -> None:
        self.gate = gate
        self.own = own or OwnIdentity(gate.store)  # `own`: one the caller has loaded already
        self.api_port = api_port
        self.host_key_glob = host_key_glob
        # The first frame's deadline is the shorter one: never longer than a whole phase.
        # door_args: the post-hello caps and the hello rate (tests shrink them); the exempt
        # networks come from agent.toml.
        door_args.setdefault("exempt", gate.config.penalty_exempt)
        self.door = FrontDoor(max_unauthenticated, per_source_max, min(first_frame_timeout, phase_timeout),
                              **door_args)
        self.drains = Drains(max_draining)
        self.doorlog = doorlog or DoorLog("enroll")
        self._pending: dict[Entry, DoorProtocol] = {}  # connections that have not said hello yet
        self._post_hello: dict[Entry, _Slot] = {}  # connections that said hello, until SRP verified
        self.phase_timeout = phase_timeout
        self.enrollment_timeout = enrollment_timeout
        self.on_enrolled = on_enrolled

    def prepare(self) -> None:
        """Load the own identity and its TLS context before serving, when there is one to load
        (a missing or broken identity is reported to each connection)."""
        self.own.load()

    @property
    def unauthenticated(self) -> int:
        """Connections holding a pre-authentication slot now."""
        return len(self.door)

    def protocol(self) -> DoorProtocol:
        """A new connection's protocol: the front door (agent/frontdoor.py) admits it and, once
        it said a valid hello, hands it to `handle`."""
        return DoorProtocol(self.door, self._pending, self._said_hello, drains=self.drains, doorlog=self.doorlog,
                            evict=self._evict)

    def _evict(self, entry: Entry) -> None:
        """The front door dropped `entry` to make room: close its connection with `busy`."""
        protocol = self._pending.pop(entry, None)
        if protocol is not None:
            protocol.drop(EVICTED, None, "evicted")
            return
        slot = self._post_hello.pop(entry, None)
        if slot is not None:
            slot.evict()

    def _said_hello(self, transport: asyncio.Transport, received: bytes, entry: Entry) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limits.MAX_FRAME_BODY + 4, loop=loop)
        slot = _Slot(self, entry)
        slot.reader, slot.transport = reader, transport
        protocol = asyncio.StreamReaderProtocol(reader, lambda r, w: self.handle(r, w, slot), loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        reader.feed_data(received)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     slot: "_Slot | None" = None) -> None:
        """One connection that said a valid hello (its bytes are in `reader`), holding `slot`.
        Without a slot (a caller that bypasses the front door) one is taken here."""
        peer = _peer_name(writer)
        enrolled: Authorization | None = None
        try:
            if slot is None:
                slot = _Slot.take(self, _peer_host(writer))
                if slot is None:
                    await self._refuse(writer, "busy", "too many unauthenticated connections; retry later")
                    return
                slot.reader, slot.transport = reader, writer.transport
            async with asyncio.timeout(self.enrollment_timeout):
                enrolled = await self._run(reader, writer, peer, slot)
        except TimeoutError:
            await self._refuse(writer, "timeout", "enrollment took too long")
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.debug("connection from %s ended: %s", peer, exc)
        except Exception:  # a bug on our side: say so to the peer, keep serving others
            log.exception("enrollment from %s failed inside the agent", peer)
            await self._refuse(writer, "internal", "the agent failed on its side; nothing was authorized")
        finally:
            if slot is not None:
                slot.release()
            if writer.get_extra_info("ssl_object") is None and not reader.at_eof():
                # Plaintext: whatever refusal was written arrives (shut down, drain, close).
                self.drains.close(writer.transport)
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 2)
        # After the connection is closed: opening the API imports its web framework (a few hundred
        # ms on a slow appliance) and the requester, which waits for the close, need not wait for it.
        if enrolled is not None and self.on_enrolled:
            try:
                await self.on_enrolled(enrolled)
            except Exception:  # committed all the same; the API opens at the next start
                log.exception("enrolled %s, but opening the API failed; it opens at the next start", peer)

    def _before_proof(self, source: str, offence: str) -> None:
        """A connection that said hello ended, through the peer, before its proof: the source
        accrues `offence` (agent/frontdoor.py PENALTY_SECONDS) and it is counted, not logged."""
        self.door.penalize(source, offence)
        self.doorlog.count(source, offence)

    def _enrolled(self, authorization: Authorization, peer: str) -> Authorization:
        _checkpoint("enrolled-sent")
        audit.event("enrolled", f"enrolled requester {authorization.requester_pin} from {peer}", peer=peer,
                    pin=authorization.requester_pin, requester=authorization.name, outcome="enrolled")
        return authorization

    async def _refuse(self, writer: asyncio.StreamWriter, code: str, message: str,
                      retry_after: int | None = None) -> None:
        with contextlib.suppress(Exception):
            writer.write(encode_error(code, message, retry_after))
            await asyncio.wait_for(writer.drain(), 2)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str,
                   slot: "_Slot") -> Authorization | None:
        """One enrollment attempt; the requester's Authorization once enrolled, else None."""
        gate = self.gate
        source = slot.source
        decision = gate.check()
        if isinstance(decision, Refusal):
            # Read the hello first, so the requester gets the error as the answer to it. Not
            # logged per connection (a flood would flood the journal): counted (agent/doorlog.py).
            await _read_first_frame(reader, self.phase_timeout)
            self.doorlog.count(source, decision.code)
            await self._refuse(writer, decision.code, decision.message, decision.retry_after)
            return
        state, sec_b = decision
        if self.own.load() is None or self.own.tls is None:
            await self._refuse(writer, "internal", "the appliance identity is missing or unusable")
            return
        own_tls = self.own.tls  # the context that goes with the certificate the machine sends
        enrollment = _enrollment_module()
        machine = enrollment.ServerEnrollment(
            salt=bytes.fromhex(state.srp_salt), verifier=bytes.fromhex(state.srp_verifier), sec_b=sec_b,
            certificate=self.own.cert_der, api_port=self.api_port,
            ssh_host_keys=host_public_keys(self.host_key_glob), clock=gate.clock)
        charged = committed = False
        proof = False  # the proof frame arrived: from then on, lines per connection (doorlog)
        enrolled: Authorization | None = None
        try:
            while machine.state is not enrollment.State.DONE:
                data, eof = await _read_frame(reader, min(machine.timeout or self.phase_timeout, self.phase_timeout))
                if slot.evicted:  # dropped to make room for another hello (counted, penalized)
                    return
                if machine.state is enrollment.State.AWAIT_CLIENT_PROOF and not eof:
                    # client_proof is the requester's last plaintext frame: whatever it sent behind
                    # it in the same read is injection, refused before server_proof is sent.
                    data += _take_buffered(reader)
                    proof = True
                    slot.proof()  # a proof in flight is never evicted
                    if self.doorlog.detail(source):
                        audit.event("enroll-attempt", f"enrollment attempt from {peer}", peer=peer)
                if machine.state is enrollment.State.AWAIT_CLIENT_PROOF and not charged and not eof:
                    # The proof is in hand: count the attempt as failed, durably, before its
                    # verdict leaves. The charge is written while the proof is checked; the
                    # verdict (server_proof or an error frame) is held until the charge is on disk.
                    refusal, outcome = await gate.charge_while(lambda: machine.receive_data(data))
                    if refusal is not None:
                        writer.write(machine.abort(refusal.code, refusal.message, refusal.retry_after))
                        await writer.drain()
                        if refusal.code == "locked_out" and self.doorlog.detail(source):
                            audit.event("locked-out", f"refused a proof from {peer}: locked", peer=peer,
                                        outcome="locked_out")
                        return
                    charged = True
                    _checkpoint("charged")
                    if isinstance(outcome, Exception):
                        raise outcome
                    events = outcome
                else:
                    events = machine.receive_data(data) if data else []
                if eof:
                    if not proof:  # a hello (SRP work done), then the peer left: noauth
                        self._before_proof(source, "abandoned")
                        return
                    machine.receive_eof()
                    return
                for event in events:
                    if isinstance(event, enrollment.SendFrame):
                        writer.write(event.data)
                        await writer.drain()
                    elif isinstance(event, enrollment.StartTLS):
                        _checkpoint("verified")
                        slot.release()  # authenticated by SRP: no longer an unauthenticated peer
                        # Plaintext that arrived after client_proof and before TLS: injection.
                        leftover = _take_buffered(reader) or _peek_plaintext(writer)
                        if leftover:
                            machine.receive_data(leftover)  # raises UnexpectedFrame
                        try:
                            await writer.start_tls(_server_context(own_tls, event.peer_certificate),
                                                   ssl_handshake_timeout=self.phase_timeout)
                        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
                            # After a verified SRP proof, a failed handshake is what a relay that
                            # terminates TLS with its own key looks like: worth an audit line.
                            audit.event("enroll-failed", f"TLS after SRP failed for {peer}: {exc}", peer=peer,
                                        outcome="tls_failed")
                            raise
                        ssl_object = writer.get_extra_info("ssl_object")
                        peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                        for sent in machine.tls_established(peer_der):
                            writer.write(sent.data)
                        await writer.drain()
                        _checkpoint("tls")
                    elif isinstance(event, enrollment.PersistAuthorization):
                        refusal = await gate.enroll(state.srp_verifier, event.authorization, peer)
                        if refusal is not None:
                            audit.event("enroll-failed", f"enrollment from {peer} not committed: {refusal.message}",
                                        peer=peer, outcome=refusal.code)
                            # Refund before answering: the requester may retry at once.
                            await gate.refund()
                            charged = False
                            writer.write(machine.abort(refusal.code, refusal.message))
                            await writer.drain()
                            return
                        committed = True
                        for done in machine.authorization_persisted():
                            if isinstance(done, enrollment.SendFrame):
                                writer.write(done.data)
                                await writer.drain()
                            elif isinstance(done, enrollment.Enrolled):
                                enrolled = self._enrolled(done.result, peer)
            return enrolled
        except PeerRefused as exc:
            if not proof:
                self._before_proof(source, "abandoned")
            elif self.doorlog.detail(source):
                audit.event("enroll-failed", f"requester {peer} gave up: {exc.code}", peer=peer, outcome=exc.code)
            return
        except StateError:
            raise
        except FirsttrustError as exc:
            outcome = exc.code
            if not proof:  # garbage after hello: counted and penalized, its error frame still sent
                self._before_proof(source, "garbage")
            elif self.doorlog.detail(source):
                audit.event("enroll-failed", f"enrollment from {peer} failed: {exc}", peer=peer, outcome=outcome)
            frame = machine.error_frame()
            if frame:
                with contextlib.suppress(Exception):
                    writer.write(frame)
                    await writer.drain()
            if isinstance(exc, AuthenticationFailed):
                current = gate.store.load()
                if current is not None and current.failures >= gate.config.max_failures and proof:
                    audit.event("locked-out", f"enrollment locked after {current.failures} failures",
                                peer=peer, outcome="locked_out")
            return
        except TimeoutError:
            state_name = machine.state.value
            with contextlib.suppress(Exception):
                writer.write(machine.abort("timeout", f"no answer within {machine.timeout or 0:.0f} s"))
                await writer.drain()
            if not proof:  # a hello, then no proof within the phase: grace-exceeded
                self._before_proof(source, "stalled")
            elif self.doorlog.detail(source):
                audit.event("enroll-failed", f"enrollment from {peer} timed out in {state_name}",
                            peer=peer, outcome="timeout")
            return
        finally:
            # A verified proof is not a failed guess: refund its charge unless the commit (which
            # clears the count) happened, whatever refused the attempt after M1 verified (bytes
            # injected behind the proof, a binding failure, a timeout). The machine says whether
            # M1 verified. A crash before this line can only over-count.
            if charged and machine.proof_verified and not committed:
                await asyncio.shield(gate.refund())  # even when the listener is being shut down


class _Slot:
    """A connection's entry in the server's FrontDoor, once it said hello; released exactly once
    (at the TLS upgrade, when SRP authenticated the peer, or when the connection ends). Until
    its proof arrives the front door may evict it to make room for another hello (`evict`)."""

    def __init__(self, server: EnrollmentServer, entry: Entry) -> None:
        self.server = server
        self.entry: Entry | None = entry
        self.source = entry.source
        self.evicted = False
        self.reader: asyncio.StreamReader | None = None
        self.transport: asyncio.BaseTransport | None = None
        server._post_hello[entry] = self

    @classmethod
    def take(cls, server: EnrollmentServer, host: str) -> "_Slot | None":
        admission = server.door.admit(source_key(host))
        for victim in admission.evicted:
            server._evict(victim)
        if admission.entry is None:
            return None
        verdict = server.door.hello(admission.entry)
        for victim in verdict.evicted:
            server._evict(victim)
        if verdict.entry is None:
            server.door.release(admission.entry)
            return None
        return cls(server, admission.entry)

    @property
    def held(self) -> bool:
        return self.entry is not None and self.entry.held

    def proof(self) -> None:
        if self.entry is not None:
            self.server.door.mark_proof(self.entry)

    def evict(self) -> None:
        """Dropped by the front door (its entry is already released): tell the peer `busy`, and
        end the handler's read (it returns quietly; the drain closes the connection)."""
        self.evicted = True
        self.server.doorlog.count(self.source, "evicted")
        if self.entry is not None:
            self.server._post_hello.pop(self.entry, None)
            self.entry = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(EVICTED)  # type: ignore[attr-defined]
        if self.reader is not None:
            self.reader.feed_eof()

    def release(self) -> None:
        if self.entry is not None:
            self.server._post_hello.pop(self.entry, None)
            self.server.door.release(self.entry)
            self.entry = None


async def _read_frame(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """Read exactly one frame (never a byte past it: after the last plaintext frame the next
    bytes belong to TLS) within `timeout`, one deadline for header and body together: a peer
    that sends a header just before the deadline gets no second one for the body (the phase
    timeout is the longest wait in a state, docs/protocol.md section 8.1). Returns (bytes, eof).
    An oversized or empty length is returned as the bare header, for the state machine to reject.

    Raises:
        TimeoutError: the frame was not complete within `timeout`.
    """
    # asyncio.timeout, not wait_for: no task per read (one per frame, both sides of every enrollment).
    async with asyncio.timeout(timeout):
        try:
            header = await reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as exc:
            return exc.partial, True
        (length,) = HEADER.unpack(header)
        if length == 0 or length > limits.MAX_FRAME_BODY:
            return header, False
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            return header + exc.partial, True
    return header + body, False


def _take_buffered(reader: asyncio.StreamReader) -> bytes:
    """Whatever the peer sent that the stream has read but nobody consumed yet. After the last
    plaintext frame that is never legitimate (docs/protocol.md section 7.2)."""
    buffer = reader._buffer  # asyncio keeps no public accessor; stable from 3.8 to 3.13
    data = bytes(buffer)
    buffer.clear()
    return data


def _peek_plaintext(writer: asyncio.StreamWriter) -> bytes:
    """Bytes waiting in the kernel's receive buffer that do not start a TLS record. Called right
    after server_proof is sent: the requester's next bytes must be its ClientHello (a TLS
    handshake record, 0x16), anything else arrived in plaintext behind client_proof."""
    transport_socket = writer.get_extra_info("socket")
    if transport_socket is None:
        return b""
    with transport_socket.dup() as sock:
        try:
            data = sock.recv(HEADER.size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError, OSError):
            return b""
    return b"" if not data or data[:1] == TLS_HANDSHAKE_RECORD else data


async def _read_first_frame(reader: asyncio.StreamReader, timeout: float) -> None:
    decoder = FrameDecoder()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            while decoder.next_frame() is None:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return
                decoder.feed(data)


def _server_context(own_tls: SharedContext, requester_certificate: bytes) -> ssl.SSLContext:
    """The appliance's shared TLS context, now also trusting the certificate this connection's
    requester committed to (docs/protocol.md sections 7.3 and 7.4)."""
    return own_tls.for_peer(requester_certificate)


def _peer_host(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    return str(address[0]) if isinstance(address, tuple) and address else str(address or "unknown")


def _peer_name(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "unknown")


# Accept queue length. asyncio's default (100) fills within one event-loop turn under a connect
# flood; the kernel then drops a real requester's SYN and its TCP stack retries only after the
# initial RTO of 1 s (RFC 6298), a second lost per dropped SYN. Linux caps it at
# net.core.somaxconn (4096 since 5.4); nginx and HAProxy default to 511 and somaxconn.
ACCEPT_BACKLOG = 1024
# Connections accepted per event-loop turn. asyncio accepts up to its `backlog` argument in one
# callback and starts a task for each; at 1024 one turn of a flood ran a thousand callbacks while
# a requester's next frame waited behind them. The kernel queue stays ACCEPT_BACKLOG long (listen
# is called again after asyncio's); only the draining per turn is bounded.
ACCEPT_BATCH = 32


class EnrollmentListener:
    """The enrollment port's listening sockets (one per address the host resolves to), each
    served by asyncio with the front door's accept (DoorSocket). Has what callers use of
    asyncio.Server: `sockets`, `close()`, `wait_closed()`."""

    def __init__(self, servers: list[asyncio.base_events.Server]) -> None:
        self.servers = servers

    @property
    def sockets(self) -> list:
        return [sock for server in self.servers for sock in server.sockets]

    def is_serving(self) -> bool:
        return any(server.is_serving() for server in self.servers)

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()


def _bound_sockets(host: str, port: int) -> list[DoorSocket]:
    """Listening sockets for host:port, as asyncio's create_server makes them (every address
    the host resolves to, SO_REUSEADDR, IPv6 sockets IPv6-only), but DoorSockets."""
    infos = passive_addresses(host, port)
    made: list[DoorSocket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            made.append(listen_on(DoorSocket(family, kind, proto), address, ACCEPT_BACKLOG))
    except OSError:
        for sock in made:
            sock.close()
        raise
    return made


async def start_enrollment_server(server: EnrollmentServer, host: str, port: int, *,
                                  sock: socket.socket | None = None) -> EnrollmentListener:
    """Listen on host:port, or on `sock` (handed over by systemd socket activation). Every
    connection meets the front door (agent/frontdoor.py) before `server.handle` runs: at accept
    (a source sitting out a penalty is refused there), then in DoorProtocol."""
    loop = asyncio.get_running_loop()
    server.prepare()
    if sock is not None:
        sockets = [DoorSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())]
        sockets[0].setblocking(False)
    else:
        sockets = _bound_sockets(host, port)
    servers = []
    try:
        for listening in sockets:
            listening.door, listening.drains, listening.doorlog = server.door, server.drains, server.doorlog
            servers.append(await loop.create_server(server.protocol, sock=listening, backlog=ACCEPT_BATCH))
            # asyncio's listen(ACCEPT_BATCH) sized the kernel queue too: make it ACCEPT_BACKLOG again.
            listening.listen(ACCEPT_BACKLOG)
    except BaseException:
        for made in servers:
            made.close()
        for listening in sockets:
            listening.close()
        raise
    return EnrollmentListener(servers)
