"""The front door's asyncio adapter: the table (agent/frontdoor.py, sans-IO) applied to real
connections.

`DoorProtocol` holds a connection until its first frame: it asks the table to admit it, feeds its
bytes to a `FirstFrameWatch`, arms the first-frame deadline on the event loop, and either hands a
valid hello, bytes and all, to the enrollment driver or closes the connection with the answer the
table chose. `DoorSocket` is the listening socket whose accept() refuses a source sitting out a
penalty before asyncio makes a transport for it. Neither decides anything: the rules, the limits
and their reasons are in agent/frontdoor.py.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from firsttrust.framing import encode_error

from .descriptors import shed_when_exhausted
from .frontdoor import EVICTED, FULL, TOO_SLOW, Entry, FirstFrameWatch, FrontDoor, hello_refused, penalized, \
    source_key


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
        drains: closes refused connections so that their refusal arrives (agent/drain.py).
        doorlog: counts what was refused, per source (agent/doorlog.py).
        evict: closes the connection of an entry the door evicted (default: a pre-hello one
            from `pending`).
    """

    def __init__(self, door: FrontDoor, pending: dict[Entry, "DoorProtocol"],
                 on_hello: Callable[[asyncio.Transport, bytes, Entry], None], *, drains=None, doorlog=None,
                 evict: Callable[[Entry], None] | None = None) -> None:
        self.door, self.pending, self.on_hello = door, pending, on_hello
        self.drains, self.doorlog = drains, doorlog
        self.evict = evict or self._evict_pending
        self.transport: asyncio.Transport | None = None
        self.entry: Entry | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = bytearray()  # (both made anew for an admitted connection)
        self.watch: FirstFrameWatch | None = None
        self.source = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        source = source_key(str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "unknown"))
        self.source = source
        admission = self.door.admit(source)
        for victim in admission.evicted:
            self.evict(victim)
        if admission.entry is None:
            self._count("busy")
            self._close(FULL)
            return
        self.entry = admission.entry
        self.pending[self.entry] = self
        self.buffer = bytearray()
        self.watch = FirstFrameWatch()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.door.remaining(self.entry), self.drop, TOO_SLOW, "too_slow")

    def data_received(self, data: bytes) -> None:
        if self.entry is None or not self.entry.held or self.watch is None:
            return
        self.buffer += data
        outcome = self.watch.feed(data)
        if outcome is None:
            return
        if not outcome.hello:
            self.drop(encode_error(outcome.code or "protocol_error", outcome.message or ""), "garbage")
            return
        # A valid hello: the post-hello caps and the hello rate decide, before any SRP work.
        verdict = self.door.hello(self.entry)
        for victim in verdict.evicted:
            self.evict(victim)
        if verdict.entry is None:
            # (the rate's penalty was charged by the door; a source at its share accrues none)
            self.drop(hello_refused(verdict.retry_after), None,
                      "hello_rate" if verdict.retry_after else "busy_after_hello")
            return
        self._forget()
        entry, self.entry = self.entry, None
        self.on_hello(self.transport, bytes(self.buffer), entry)

    def eof_received(self) -> bool:
        self.drop(None, "no_hello")
        return True  # drop() closes (or drains) it

    def connection_lost(self, exc: Exception | None) -> None:
        if self.entry is not None:
            self._forget()
            self.door.release(self.entry)
            self.door.penalize(self.entry.source, "no_hello")
            self.entry = None
            self._count("no_hello")

    def drop(self, frame: bytes | None, offence: str | None = None, outcome: str | None = None) -> None:
        """Release the slot, send `frame` (if any) and close, draining; the source accrues
        `offence`'s penalty (None: none here; an eviction's was charged by FrontDoor.admit) and
        the door log counts `outcome` (default: the offence)."""
        if self.entry is not None:
            self._forget()
            self.door.release(self.entry)
            if offence is not None:
                self.door.penalize(self.entry.source, offence)
            self.entry = None
            self._count(outcome or offence)
        self._close(frame)

    def _close(self, frame: bytes | None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.drains is not None and frame:  # nothing to deliver: nothing to drain for
            self.drains.close(self.transport, frame)
            return
        if frame:
            self.transport.write(frame)
        self.transport.close()

    def _count(self, outcome: str | None) -> None:
        if self.doorlog is not None and outcome:
            self.doorlog.count(self.source, outcome)

    def _evict_pending(self, victim: Entry) -> None:
        protocol = self.pending.pop(victim, None)
        if protocol is not None:
            protocol.drop(EVICTED, None, "evicted")

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.entry is not None:
            self.pending.pop(self.entry, None)


class DoorSocket(socket.socket):
    """The enrollment port's listening socket: its accept() (which asyncio's server calls)
    answers a connection from a source sitting out a penalty with `busy` and closes it at once,
    before asyncio makes a transport, a protocol and a task for it; it returns only the others.
    `door` is the listener's FrontDoor (set before serving)."""

    door: FrontDoor | None = None
    drains = None  # agent/drain.py Drains: a refusal at accept is drained too
    doorlog = None  # agent/doorlog.py DoorLog: refusals and descriptor exhaustion are counted

    def accept(self):  # type: ignore[override]
        door = self.door
        for _ in range(REFUSALS_PER_ACCEPT):
            try:
                conn, address = super().accept()
            except BlockingIOError:
                # None is waiting: asyncio's cue. Re-raised unbound: `except ... as exc` around a
                # raise leaves a frame-traceback-exception cycle for the collector per accept.
                raise
            except OSError as exc:
                shed_when_exhausted(self, exc, self.doorlog)
                raise BlockingIOError from None  # shed one; asyncio tries again on its next turn
            source = source_key(str(address[0])) if address else ""
            blocked = door.blocked_for(source) if door is not None and address else 0.0
            if not blocked:
                return conn, address
            door.penalty_refusals += 1
            if self.doorlog is not None:
                self.doorlog.count(source, "penalized")
            if self.drains is not None:
                self.drains.close_socket(conn, penalized(blocked))
                continue
            with conn:
                try:
                    conn.send(penalized(blocked), socket.MSG_DONTWAIT)
                except OSError:
                    pass
        # Refused a batch: let the event loop run other work before the next (the socket is still
        # readable, so asyncio calls again on its next turn).
        raise BlockingIOError




# Refusals in one accept() call before the event loop gets a turn.
REFUSALS_PER_ACCEPT = 64
