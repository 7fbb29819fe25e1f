"""The enrollment listener: drives firsttrust.enrollment.ServerEnrollment over asyncio.

This module only moves bytes, upgrades the stream to TLS when the state machine says so,
reports the peer certificate, and persists what it is told to persist. Everything about the
protocol is decided in firsttrust/ (the machine frames the stream too: the driver feeds it
whatever a read returns and never asks what state it is in); everything about one appliance's
policy (is enrollment open? how many failures? back-off?) in agent/gate.py (`EnrollmentGate`,
and `Attempt`, one connection's standing with it). One connection's enrollment, from hello to
enrolled, is agent/conversation.py; here: the listener, the hand-off from the front door, the
post-hello slots.

Per connection:  gate check -> hello -> challenge -> client_proof (`ProofReceived`: a failure is
charged before the proof is checked, and back-off is checked again then; on `ProofVerified` the
charge is cleared by the commit that enrolls, or refunded if the attempt fails in any way after
M1 verified, so a crash can only over-count) -> no plaintext behind it (STARTTLS injection) ->
server_proof + STARTTLS -> appliance_proof -> finish -> prepare, commit, apply the grant
(agent/grant.py; under a lock: when two requesters race, exactly one wins) -> enrolled.

Until the proof arrives a connection holds a post-hello slot (agent/frontdoor.py) and may be
evicted for another hello; its end is counted per source (agent/doorlog.py) and, when the peer
caused it, penalized. Plaintext refusals are drained (agent/drain.py) so that they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Awaitable, Callable

from firsttrust import limits
from firsttrust.framing import FrameDecoder, encode_error
from firsttrust.identity import file_stamp
from firsttrust.tlspolicy import SharedContext

from .doorlog import DoorLog
from .drain import MAX_DRAINING, Drains
from .conversation import Conversation, _enrollment_module
from .frontdoor import EVICTED, FIRST_FRAME_TIMEOUT, MAX_UNAUTHENTICATED, PER_SOURCE_MAX_UNAUTHENTICATED, Entry, \
    FrontDoor
from .frontdoor_asyncio import DoorProtocol, DoorSocket
from .gate import Attempt, EnrollmentGate, Refusal
from .listening import listen_on, passive_addresses
from .sshkeys import HOST_KEY_GLOB, HostKeys
from .state import StateDir, StateError, read_identity_file

__all__ = ["EnrollmentGate", "EnrollmentListener", "EnrollmentServer", "OwnIdentity", "Refusal",
           "start_enrollment_server"]

if TYPE_CHECKING:
    from firsttrust.enrollment import Authorization

log = logging.getLogger("firsttrust.server")


# The pre-authentication limits (MAX_UNAUTHENTICATED, per source, first-frame deadline) and
# their reasons live in agent/frontdoor.py.
READ_CHUNK = 16 * 1024


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
                pem = read_identity_file(self.store.cert_path) or b""  # b"": missing, a ValueError below
                cert_der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
                context = self._new_context()
            except (OSError, ValueError, ssl.SSLError, StateError) as exc:  # missing, corrupt, too large, a key mismatch
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
        self.host_keys = HostKeys(host_key_glob)
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
        (a missing or broken identity is reported to each connection), and the SSH host keys
        an enrollment sends."""
        self.own.load()
        self.host_keys()

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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: "_Slot") -> None:
        """One connection that said a valid hello (its bytes are in `reader`), holding `slot`."""
        peer = _peer_name(writer)
        enrolled: Authorization | None = None
        try:
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
            slot.release()
            if slot.evicted:
                pass  # the drain owns the transport since the eviction: its `busy` arrives, then the close
            elif writer.get_extra_info("ssl_object") is None and not reader.at_eof():
                # Plaintext: whatever refusal was written arrives (shut down, drain, close).
                self.drains.close(writer.transport)
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):  # not wait_for: no task for it
                        await writer.wait_closed()
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
            return None
        state, sec_b = decision
        if self.own.load() is None or self.own.tls is None:
            await self._refuse(writer, "internal", "the appliance identity is missing or unusable")
            return None
        enrollment = _enrollment_module()
        machine = enrollment.ServerEnrollment(
            salt=bytes.fromhex(state.srp_salt), verifier=bytes.fromhex(state.srp_verifier), sec_b=sec_b,
            certificate=self.own.cert_der, api_port=self.api_port,
            ssh_host_keys=self.host_keys(), clock=gate.clock)
        # The context that goes with the certificate the machine sends.
        conversation = Conversation(self, machine, Attempt(gate), reader, writer, peer, slot, self.own.tls)
        return await conversation.run(state.srp_verifier)


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
        if self.transport is not None:
            # The drain takes the transport over first (its protocol replaced), so the peer's
            # next bytes go to the drain, never to a reader already at EOF ("feed_data after
            # feed_eof": one asyncio ERROR line per eviction, a log flood any client could cause).
            self.server.drains.close(self.transport, EVICTED)
        if self.reader is not None:
            self.reader.feed_eof()

    def release(self) -> None:
        if self.entry is not None:
            self.server._post_hello.pop(self.entry, None)
            self.server.door.release(self.entry)
            self.entry = None


async def _read_first_frame(reader: asyncio.StreamReader, timeout: float) -> None:
    decoder = FrameDecoder()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            while decoder.next_frame() is None:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return
                decoder.feed(data)


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
