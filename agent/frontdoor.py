"""The enrollment listener's front door: who may hold a pre-authentication slot, for how long.

`FrontDoor` is the one object here: a table of the connections that have not authenticated yet
(no verified SRP proof), keyed by source. It is sans-IO (no sockets, no asyncio; the clock is
injected) so every policy decision is a three-line test; `agent/server.py` only asks it and
closes what it says. `FirstFrameWatch` tells, from the bytes as they arrive, when a connection's
first frame is complete and whether it is a valid `hello`; `DoorProtocol` is the thin asyncio
glue: it holds a connection until then and hands a hello, bytes and all, to the enrollment driver.

The threat: anyone who can reach port 8790 can open connections. Before this, 32 idle sockets
got every real requester `busy` for as long as they were held. The rules, after OpenSSH's sshd
and nginx/HAProxy's slow-client handling:

1. A connection must complete its first frame (a `hello`, ~530 bytes, one round trip) within
   FIRST_FRAME_TIMEOUT, far shorter than the per-phase timeout: idle and slowloris sockets are
   dropped after seconds, not held for a whole phase.
2. One source (an IPv4 address, an IPv6 /64) holds at most PER_SOURCE_MAX_UNAUTHENTICATED slots.
3. When the table (MAX_UNAUTHENTICATED) or the source's share is full, the newcomer is admitted
   and room is made by dropping a connection that has *not yet sent a valid hello*: from the
   source holding the most such connections, its oldest first. A connection that sent a valid
   hello is never dropped to make room; only when every slot holds one is the newcomer refused
   with `busy`.
4. SRP work (computing B) is only done for a valid hello: the table decides before the
   enrollment driver runs at all, and a first frame that is not a valid hello is answered with
   its error code here, without reading the appliance's state.

A flood therefore costs the attacker a socket per slot and buys it seconds; a requester that
says hello at once is admitted past the flood and keeps its slot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Callable

from firsttrust.errors import FirsttrustError, UnexpectedFrame
from firsttrust.framing import FrameDecoder, encode_error
from firsttrust.messages import validate

# --- the limits, with their reasons and precedents ----------------------------------------------

# Deadline for a connection's first complete frame. A requester sends `hello` as soon as TCP is
# up: one round trip, ~530 bytes. 5 s covers a slow WAN and a loaded requester many times over,
# while an idle or byte-a-second (slowloris) socket loses its slot after 5 s instead of a whole
# PHASE_TIMEOUT (15 s). Precedents: OpenSSH `LoginGraceTime 120` bounds the whole login, not the
# first packet; nginx `client_header_timeout 60s` and HAProxy `timeout http-request` (commonly
# 5-10 s, the HAProxy docs' advice against slowloris) bound the request head, which is what our
# first frame is.
FIRST_FRAME_TIMEOUT = 5.0

# Connections without a verified SRP proof, in total. One appliance has one requester; even a
# batch enrolls each appliance over one connection, so a handful would do. 64 leaves room for
# retries and lab scripts while keeping what a flood can make us hold small (each slot is a
# socket and ~10 KiB of buffers). OpenSSH `MaxStartups 10:30:100` starts dropping at 10 and
# refuses every new unauthenticated connection at 100; we drop pre-hello connections instead of
# refusing newcomers, so a full table does not lock the door.
MAX_UNAUTHENTICATED = 64

# Slots one source may hold. A requester needs one (two while a retry overlaps a dying attempt);
# 8 lets a NAT'ed lab share an address while one source can take at most 1/8 of the table.
# OpenSSH `PerSourceMaxStartups` (off by default; 10 in hardened configs) and
# `PerSourceNetBlockSize 32:128` (the key below uses /64 for IPv6: a host gets a /64, so a
# per-address key would let one host use 2^64 sources).
PER_SOURCE_MAX_UNAUTHENTICATED = 8

# IPv6 sources are grouped by this prefix (RFC 7421: a /64 is one link's subnet, typically one host
# or one customer). IPv4 sources are single addresses.
IPV6_SOURCE_PREFIX = 64


def source_key(address: str) -> str:
    """The per-source key of a peer address: the IPv4 address; for IPv6 its /64 network; an
    IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) counts as its IPv4
    address. Anything that is not an IP address (a UNIX socket) is its own key.

    >>> source_key("::ffff:10.0.0.5"), source_key("2001:db8:1:2:aaaa::1")
    ('10.0.0.5', '2001:db8:1:2::/64')
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_SOURCE_PREFIX), strict=False))
    return str(ip)


# --- the table ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Entry:
    """One connection's slot. `hello` once it sent a valid hello (then it is never evicted)."""

    source: str
    admitted_at: float
    deadline: float
    hello: bool = False
    held: bool = True


@dataclass(frozen=True)
class Admission:
    """What `FrontDoor.admit` decided: the newcomer's entry (None: refuse it with `busy`) and
    the entries dropped to make room (close each with `busy`)."""

    entry: Entry | None
    evicted: tuple[Entry, ...] = ()


@dataclass
class FrontDoor:
    """The pre-authentication table of one listener.

    Args:
        max_unauthenticated: slots in total (MAX_UNAUTHENTICATED).
        per_source: slots one source may hold (PER_SOURCE_MAX_UNAUTHENTICATED).
        first_frame_timeout: seconds a new entry has to complete its first frame.
        clock: monotonic seconds; injectable for tests.
    """

    max_unauthenticated: int = MAX_UNAUTHENTICATED
    per_source: int = PER_SOURCE_MAX_UNAUTHENTICATED
    first_frame_timeout: float = FIRST_FRAME_TIMEOUT
    clock: Callable[[], float] = time.monotonic
    entries: list[Entry] = field(default_factory=list)  # oldest first
    evictions: int = 0
    refusals: int = 0

    def __len__(self) -> int:
        return len(self.entries)

    def count(self, source: str) -> int:
        return sum(1 for e in self.entries if e.source == source)

    def admit(self, source: str) -> Admission:
        """A connection from `source` arrived: admit it, making room if needed.

        Returns:
            The Admission. Room is made by evicting a pre-hello entry: the source's own oldest
            when the source is at its cap, else the oldest of the source holding the most
            pre-hello entries. The newcomer is refused (entry None) only when no pre-hello entry
            can be evicted: every slot concerned belongs to a connection that sent a valid hello.
        """
        evicted: list[Entry] = []
        if self.count(source) >= self.per_source:
            victim = self._oldest_pre_hello(source)
            if victim is None:
                self.refusals += 1
                return Admission(None)
            evicted.append(victim)
            self._remove(victim)
        if len(self.entries) >= self.max_unauthenticated:
            victim = self._victim()
            # (never after a per-source eviction: that one already made room)
            if victim is None:
                self.refusals += 1
                return Admission(None)
            evicted.append(victim)
            self._remove(victim)
        now = self.clock()
        entry = Entry(source, now, now + self.first_frame_timeout)
        self.entries.append(entry)
        self.evictions += len(evicted)
        return Admission(entry, tuple(evicted))

    def mark_hello(self, entry: Entry) -> None:
        """The entry's first frame is a valid hello: from now on it is never evicted."""
        entry.hello = True

    def release(self, entry: Entry) -> None:
        """Free the entry's slot (authenticated, closed, refused, evicted). Idempotent."""
        if entry.held:
            self._remove(entry)

    def remaining(self, entry: Entry) -> float:
        """Seconds left before `entry`'s first-frame deadline (0 when passed)."""
        return max(0.0, entry.deadline - self.clock())

    def overdue(self) -> list[Entry]:
        """Pre-hello entries whose first-frame deadline has passed."""
        now = self.clock()
        return [e for e in self.entries if not e.hello and now >= e.deadline]

    def _remove(self, entry: Entry) -> None:
        entry.held = False
        self.entries.remove(entry)

    def _oldest_pre_hello(self, source: str | None = None) -> Entry | None:
        for entry in self.entries:  # oldest first
            if not entry.hello and (source is None or entry.source == source):
                return entry
        return None

    def _victim(self) -> Entry | None:
        pre_hello: dict[str, int] = {}
        for entry in self.entries:
            if not entry.hello:
                pre_hello[entry.source] = pre_hello.get(entry.source, 0) + 1
        if not pre_hello:
            return None
        most = max(pre_hello.values())
        # Among the sources holding the most, the one whose oldest entry is oldest.
        for entry in self.entries:
            if not entry.hello and pre_hello[entry.source] == most:
                return entry
        return None  # pragma: no cover - unreachable: some source holds `most`


# --- the first frame ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstFrame:
    """How a connection's first frame ended: a valid hello, an error (code, message: answer with
    an error frame), or the peer closed before completing it (eof)."""

    hello: bool
    code: str | None = None
    message: str | None = None
    eof: bool = False


class FirstFrameWatch:
    """Watches a copy of a connection's first bytes until its first frame is complete.

    `feed(data)` returns None while the frame is incomplete, then a FirstFrame once (later calls
    return None). It only keeps bytes up to the end of the first frame, bounded by the frame cap.
    """

    def __init__(self) -> None:
        self._decoder: FrameDecoder | None = FrameDecoder()

    @property
    def done(self) -> bool:
        return self._decoder is None

    def feed(self, data: bytes) -> FirstFrame | None:
        if self._decoder is None:
            return None
        try:
            self._decoder.feed(data)
            frame = self._decoder.next_frame()
            if frame is None:
                return None
            if frame.type != "hello":
                raise UnexpectedFrame(f"got {frame.type} while expecting hello (state await_hello)")
            validate(frame)
            outcome = FirstFrame(hello=True)
        except FirsttrustError as exc:
            outcome = FirstFrame(hello=False, code=exc.code, message=str(exc))
        self._decoder = None
        return outcome

    def eof(self) -> FirstFrame | None:
        if self._decoder is None:
            return None
        self._decoder = None
        return FirstFrame(hello=False, eof=True)


# --- asyncio glue -------------------------------------------------------------------------------


class DoorProtocol(asyncio.Protocol):
    """A connection until its first frame: admitted (or refused) the moment it is accepted, its
    bytes watched, and either handed over with them to `on_hello` (a valid hello) or closed.

    A hostile connection never gets a task, a StreamReader or a StreamWriter: admitting, evicting,
    answering garbage and timing out are a few calls on the transport. That keeps the agent
    cheaper per connection than the flood that opens them, so the accept queue stays short and
    a real requester's connection is not stuck behind it.

    Args:
        door: the listener's FrontDoor.
        pending: the listener's map of pre-hello entries to their protocols (for eviction).
        on_hello: takes over the transport with the bytes received so far and the entry.
    """

    def __init__(self, door: FrontDoor, pending: dict[Entry, "DoorProtocol"],
                 on_hello: Callable[[asyncio.Transport, bytes, Entry], None]) -> None:
        self.door, self.pending, self.on_hello = door, pending, on_hello
        self.transport: asyncio.Transport | None = None
        self.entry: Entry | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = bytearray()
        self.watch = FirstFrameWatch()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "unknown")
        admission = self.door.admit(source_key(host))
        for victim in admission.evicted:
            protocol = self.pending.pop(victim, None)
            if protocol is not None:
                protocol.drop(EVICTED)
        if admission.entry is None:
            self.transport.write(FULL)
            self.transport.close()
            return
        self.entry = admission.entry
        self.pending[self.entry] = self
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.door.remaining(self.entry), self.drop, TOO_SLOW)

    def data_received(self, data: bytes) -> None:
        if self.entry is None or not self.entry.held:
            return
        self.buffer += data
        outcome = self.watch.feed(data)
        if outcome is None:
            return
        if not outcome.hello:
            self.drop(encode_error(outcome.code or "protocol_error", outcome.message or ""))
            return
        self.door.mark_hello(self.entry)
        self._forget()
        entry, self.entry = self.entry, None
        self.on_hello(self.transport, bytes(self.buffer), entry)

    def eof_received(self) -> bool:
        self.drop(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.entry is not None:
            self._forget()
            self.door.release(self.entry)
            self.entry = None

    def drop(self, frame: bytes | None) -> None:
        """Release the slot, send `frame` (if any) and close."""
        if self.entry is not None:
            self._forget()
            self.door.release(self.entry)
            self.entry = None
        if self.transport is not None and not self.transport.is_closing():
            if frame:
                self.transport.write(frame)
            self.transport.close()

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.entry is not None:
            self.pending.pop(self.entry, None)


# What a refused, evicted or too slow connection is told before it is closed.
FULL = encode_error("busy", "too many unauthenticated connections; retry later")
EVICTED = encode_error("busy", "dropped to make room: no hello yet while the appliance is busy; retry at once")
TOO_SLOW = encode_error("timeout", "no hello within the first-frame deadline")
