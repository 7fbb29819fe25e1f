"""One enrollment connection, after the gate let it in: feeds the appliance's state machine
(firsttrust.enrollment.ServerEnrollment) whatever the stream delivers and obeys its events.

The machine decides everything about the protocol, framing included: a read's bytes go in whole
(`READ_ALL`), and the machine says when the proof is in (`ProofReceived`, the charge point), what
the verdict is (`ProofVerified`), and refuses bytes behind the last plaintext frame itself. What
this module decides is the appliance's: the charge and its refund (agent/gate.py `Attempt`),
what is logged, counted and penalized (agent/doorlog.py, agent/frontdoor.py), and the look at the
kernel's receive buffer right before the TLS upgrade. The listener, the front door hand-off and
the slots are agent/server.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from typing import TYPE_CHECKING

from firsttrust.common.streams import FrameDeadline, unread_in_kernel
from firsttrust.errors import FirsttrustError, PeerRefused, StateError
from firsttrust.framing import HEADER
from firsttrust.tlspolicy import SharedContext

from . import audit
from .gate import Attempt

if TYPE_CHECKING:
    from firsttrust.enrollment import Authorization, ServerEnrollment

    from .server import EnrollmentServer, _Slot

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


# One read takes everything the stream holds, however much that is: asyncio's StreamReader keeps
# at most twice its limit (MAX_FRAME_BODY + 4 here) plus one receive (256 KiB) before it stops
# reading, so a read of 1 MiB leaves nothing behind. Bytes behind the last plaintext frame then
# reach the state machine, which refuses them; none can wait in the stream to be read as TLS.
READ_ALL = 1 << 20
# The first byte of a TLS handshake record (RFC 8446 section 5.1, ContentType handshake(22)).
TLS_HANDSHAKE_RECORD = b"\x16"


class Conversation:
    """One connection's enrollment after the gate let it in: feeds the machine what the stream
    delivers and obeys its events. What it decides itself is the appliance's, not the protocol's:
    the charge (at `ProofReceived`), the refund (`Attempt`), what is logged and penalized."""

    def __init__(self, server: EnrollmentServer, machine: ServerEnrollment, attempt: Attempt, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str, slot: "_Slot", own_tls: SharedContext) -> None:
        self.server, self.machine, self.attempt = server, machine, attempt
        self.reader, self.writer, self.peer, self.slot, self.own_tls = reader, writer, peer, slot, own_tls
        self.enrollment = _enrollment_module()
        self.deadline = FrameDeadline(reader)

    async def run(self, verifier_hex: str) -> Authorization | None:
        server, machine, attempt, writer, peer = self.server, self.machine, self.attempt, self.writer, self.peer
        source = self.slot.source
        try:
            while True:
                events = await self._receive()
                if events is None:
                    return None
                enrolled = await self._obey(events, verifier_hex)
                if enrolled is not False:
                    return enrolled  # type: ignore[return-value]
        except PeerRefused as exc:
            if attempt.stage == Attempt.OPEN:
                server._before_proof(source, "abandoned")
            elif server.doorlog.detail(source):
                # The peer chose that code: its own field, never `outcome`, where a peer's
                # `auth_failed` would read as a wrong SEC-A of ours.
                audit.event("enroll-failed", f"requester {peer} gave up: {exc.code}", peer=peer,
                            outcome="peer_refused", peer_code=exc.code)
            self._say_if_locked()
            return None
        except StateError:
            raise
        except FirsttrustError as exc:
            outcome = exc.code
            if attempt.stage == Attempt.OPEN:  # garbage after hello: counted and penalized, its error frame still sent
                server._before_proof(source, "garbage")
            elif server.doorlog.detail(source):
                audit.event("enroll-failed", f"enrollment from {peer} failed: {exc}", peer=peer, outcome=outcome)
            frame = machine.error_frame()
            if frame:
                with contextlib.suppress(Exception):
                    writer.write(frame)
                    await writer.drain()
            self._say_if_locked()
            return None
        except TimeoutError:
            waited = machine.timeout or 0
            with contextlib.suppress(Exception):
                writer.write(machine.abort("timeout", f"no answer within {waited:.0f} s"))
                await writer.drain()
            if attempt.stage == Attempt.OPEN:  # a hello, then no proof within the phase: grace-exceeded
                server._before_proof(source, "stalled")
            elif server.doorlog.detail(source):
                audit.event("enroll-failed", f"enrollment from {peer} timed out after {waited:.0f} s",
                            peer=peer, outcome="timeout")
            return None
        except OSError:  # after TimeoutError, its subclass: a reset, not a FIN
            if attempt.stage == Attempt.OPEN:  # a hello (SRP work done), then a reset: as a close
                server._before_proof(source, "abandoned")
            raise
        finally:
            # A verified proof is not a failed guess: refunded unless the commit (which clears the
            # count) happened, whatever refused the attempt after M1 verified. A crash before this
            # line can only over-count.
            self.deadline.close()
            await attempt.settle()

    def _say_if_locked(self) -> None:
        """The `locked-out` audit event, for the charged failure that reached max_failures,
        whatever the proof was (a wrong SEC-A, or a malformed frame where the proof was due)."""
        if self.attempt.stage != Attempt.CHARGED:
            return
        gate = self.server.gate
        current = gate.store.load()
        if current is not None and current.failures >= gate.config.max_failures:
            audit.event("locked-out", f"enrollment locked after {current.failures} failures",
                        peer=self.peer, outcome="locked_out")

    async def _receive(self) -> list | None:
        """What the machine makes of the stream's next bytes: read until it has something to say,
        within the current state's deadline, one for the whole frame (a peer that sends a header
        just before the deadline gets no second one for the body, docs/protocol.md section 8.1).
        None: the connection ended (evicted, or the peer closed it before its proof)."""
        machine, reader, server = self.machine, self.reader, self.server
        events: list = []
        self.deadline.start(min(machine.timeout or server.phase_timeout, server.phase_timeout))
        while not events:
            data = await reader.read(READ_ALL)  # TimeoutError once the deadline passed
            if self.slot.evicted:  # dropped to make room for another hello (counted, penalized)
                return None
            if not data:
                if self.attempt.stage == Attempt.OPEN:  # a hello (SRP work done), then the peer left: noauth
                    server._before_proof(self.slot.source, "abandoned")
                    return None
                machine.receive_eof()  # truncated_frame: the peer left mid-enrollment
                return None
            events = machine.receive_data(data)
        self.deadline.stop()
        return events

    async def _obey(self, events: list, verifier_hex: str) -> Authorization | None | bool:
        """Carry out the machine's events in order. Returns the Authorization once enrolled, None
        when the attempt ended here, False to go on reading."""
        enrollment, machine, writer, attempt = self.enrollment, self.machine, self.writer, self.attempt
        gate, peer = self.server.gate, self.peer
        pending = list(events)
        while pending:
            event = pending.pop(0)
            kind = type(event)
            if kind is enrollment.SendFrame:
                writer.write(event.data)
                await writer.drain()
            elif kind is enrollment.ProofReceived:
                outcome = await self._charge()
                if outcome is None:
                    return None
                pending[:0] = outcome
            elif kind is enrollment.ProofVerified:
                attempt.stage = Attempt.VERIFIED
                pending[:0] = machine.proceed()
            elif kind is enrollment.StartTLS:
                gate.checkpoint("verified")
                self.slot.release()  # authenticated by SRP: no longer an unauthenticated peer
                await self._start_tls(event.peer_certificate)
                gate.checkpoint("tls")
            elif kind is enrollment.PersistAuthorization:
                refusal = await gate.enroll(verifier_hex, event.authorization, peer)
                if refusal is not None:
                    audit.event("enroll-failed", f"enrollment from {peer} not committed: {refusal.message}",
                                peer=peer, outcome=refusal.code)
                    await attempt.settle()  # refund before answering: the requester may retry at once
                    writer.write(machine.abort(refusal.code, refusal.message))
                    await writer.drain()
                    return None
                attempt.stage = Attempt.COMMITTED
                pending[:0] = machine.authorization_persisted()
            elif kind is enrollment.ServerEnrolled:
                gate.checkpoint("enrolled-sent")
                authorization = event.authorization
                audit.event("enrolled", f"enrolled requester {authorization.requester_pin} from {peer}", peer=peer,
                            pin=authorization.requester_pin, requester=authorization.name, outcome="enrolled")
                return authorization
        return False

    async def _charge(self) -> list | None:
        """The proof is in hand: count the attempt as failed, durably, before its verdict leaves.
        The charge is written while the proof is checked; the verdict (server_proof or an error
        frame) is held until the charge is on disk. None: the gate refused the attempt."""
        server, machine, writer, peer, source = self.server, self.machine, self.writer, self.peer, self.slot.source
        # Whatever the peer sends from now until the TLS upgrade stays in the kernel, where the
        # look before the upgrade (_peek_plaintext) finds it: nothing may follow client_proof.
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        self.attempt.stage = Attempt.RECEIVED
        self.slot.proof()  # a proof in flight is never evicted
        if server.doorlog.detail(source):
            audit.event("enroll-attempt", f"enrollment attempt from {peer}", peer=peer)
        refusal, outcome = await server.gate.charge_while(machine.check_proof, self.attempt)
        if refusal is not None:
            writer.write(machine.abort(refusal.code, refusal.message, refusal.retry_after))
            await writer.drain()
            if refusal.code == "locked_out" and server.doorlog.detail(source):
                audit.event("locked-out", f"refused a proof from {peer}: locked", peer=peer, outcome="locked_out")
            return None
        self.attempt.stage = Attempt.CHARGED
        server.gate.checkpoint("charged")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _start_tls(self, requester_certificate: bytes) -> None:
        writer, peer = self.writer, self.peer
        # Plaintext that arrived after client_proof and before TLS: injection.
        leftover = _peek_plaintext(writer)
        if leftover:
            self.machine.receive_data(leftover)  # raises UnexpectedFrame
        try:
            await writer.start_tls(_server_context(self.own_tls, requester_certificate),
                                   ssl_handshake_timeout=self.server.phase_timeout)
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            # After a verified SRP proof, a failed handshake is what a relay that terminates TLS
            # with its own key looks like: worth an audit line.
            audit.event("enroll-failed", f"TLS after SRP failed for {peer}: {exc}", peer=peer, outcome="tls_failed")
            raise
        ssl_object = writer.get_extra_info("ssl_object")
        peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        for sent in self.machine.tls_established(peer_der):
            writer.write(sent.data)
        await writer.drain()


def _peek_plaintext(writer: asyncio.StreamWriter) -> bytes:
    """Bytes waiting in the kernel's receive buffer that do not start a TLS record. Called right
    after server_proof is sent: the requester's next bytes must be its ClientHello (a TLS
    handshake record, 0x16), anything else arrived in plaintext behind client_proof."""
    data = unread_in_kernel(writer, HEADER.size)
    return b"" if not data or data[:1] == TLS_HANDSHAKE_RECORD else data


def _server_context(own_tls: SharedContext, requester_certificate: bytes) -> ssl.SSLContext:
    """The appliance's shared TLS context, now also trusting the certificate this connection's
    requester committed to (docs/protocol.md sections 7.3 and 7.4)."""
    return own_tls.for_peer(requester_certificate)
