"""Refusals that arrive: after a refusal frame, shut down the write side and read and discard
what the peer still sends, for a bounded time and byte count, before closing.

Closing a socket while the peer's bytes sit unread in its receive buffer makes the kernel answer
with a TCP reset (RFC 1122 section 4.2.2.13, RFC 2525 section 2.17), and a reset that reaches the
peer before it read our frame destroys the frame: the requester then sees ECONNRESET instead of
`busy` and its `retry_after` (issue #25: 2 of 2 over IPv6; 836 resets against 17,335 frames in
the 20-source case). docs/protocol.md section 8.4 says drivers SHOULD shut down their sending
side and drain before closing; this is that, for every plaintext refusal of the enrollment port.

`Drains` is the one object: it counts the connections draining now and refuses to drain more
than `limit` at once (a drain holds a descriptor; the descriptor budget, agent/descriptors.py,
reserves `limit` of them). A connection that cannot be drained is closed at once, as before. A
draining connection holds no front-door slot: the slot is released before the drain starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

# --- the limits, with their reasons and precedents ----------------------------------------------

# How long a refused connection is drained. The peer has our frame after one round trip and
# closes when it has read it; 2 s covers a slow WAN many times over. Precedents: Apache httpd's
# lingering close reads for up to 2 s per read (SECONDS_TO_LINGER) and 30 s in all
# (MAX_SECS_TO_LINGER); nginx `lingering_timeout 5s`, `lingering_time 30s`.
DRAIN_TIMEOUT = 2.0
# Bytes read and discarded per drained connection: one maximal frame (firsttrust.limits
# MAX_FRAME_BODY), all a requester can have in flight when it is refused. nginx reads in
# lingering close until `lingering_time`, not bounded by bytes; a byte bound stops a peer that
# streams from holding the drain for its whole timeout.
DRAIN_BYTES = 64 * 1024
# Connections draining at once when nothing else says (agent/descriptors.py sizes it from the
# descriptor limit). A flood's refusals beyond it are closed at once: they cost what they did
# before, and nobody legitimate is behind a flood's 65th concurrent refusal.
MAX_DRAINING = 64


class Drains:
    """The connections being drained after a refusal.

    Args:
        limit: connections drained at once (MAX_DRAINING); beyond, closed at once.
        timeout: seconds each drain lasts at most (DRAIN_TIMEOUT).
        max_bytes: bytes read from each at most (DRAIN_BYTES).
    """

    def __init__(self, limit: int = MAX_DRAINING, timeout: float = DRAIN_TIMEOUT,
                 max_bytes: int = DRAIN_BYTES) -> None:
        self.limit, self.timeout, self.max_bytes = limit, timeout, max_bytes
        self.active = 0  # draining now
        self.drained = 0  # drains started, in all
        self.closed_at_once = 0  # refusals closed without a drain (limit reached)

    def close(self, transport: asyncio.BaseTransport, frame: bytes | None = None) -> None:
        """Write `frame` (if any) on `transport`, then shut down its write side and drain it (the
        transport's protocol is replaced), or close it at once when `limit` drains are running
        or the transport cannot half-close (TLS)."""
        if transport.is_closing():
            return
        if frame:
            transport.write(frame)  # type: ignore[attr-defined]
        if self.active >= self.limit or not transport.can_write_eof():  # type: ignore[attr-defined]
            self.closed_at_once += 1
            transport.close()
            return
        self._start(_DrainingTransport(self, transport))

    def close_socket(self, sock: socket.socket, frame: bytes | None = None) -> None:
        """The same for a socket no transport owns yet (refused inside accept())."""
        try:
            if frame:
                sock.send(frame, socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if self.active >= self.limit:
            self.closed_at_once += 1
            _discard_buffered(sock, self.max_bytes)  # what already arrived cannot cause a reset
            sock.close()
            return
        self._start(_DrainingSocket(self, sock))

    def _start(self, drain: "_Drain") -> None:
        self.active += 1
        self.drained += 1
        drain.start(asyncio.get_running_loop())


class _Drain:
    def __init__(self, drains: Drains) -> None:
        self.drains = drains
        self.left = drains.max_bytes
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = loop.call_later(self.drains.timeout, self.finish)

    def discarded(self, count: int) -> None:
        self.left -= count
        if self.left <= 0:
            self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.drains.active -= 1
        if self.timer is not None:
            self.timer.cancel()
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class _DrainingTransport(_Drain, asyncio.Protocol):
    """Takes over an asyncio transport: discards what arrives, closes at EOF, timeout or cap."""

    def __init__(self, drains: Drains, transport: asyncio.BaseTransport) -> None:
        super().__init__(drains)
        self.transport = transport

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        super().start(loop)
        self.transport.set_protocol(self)
        try:
            self.transport.write_eof()  # type: ignore[attr-defined]  # after the frame is flushed
            self.transport.resume_reading()  # type: ignore[attr-defined]  # a stream may have paused it
        except (OSError, RuntimeError, AttributeError):
            self.finish()

    def data_received(self, data: bytes) -> None:
        self.discarded(len(data))

    def eof_received(self) -> bool:
        self.finish()
        return True  # we close it ourselves (finish)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()

    def close(self) -> None:
        transport = self.transport
        if transport.get_write_buffer_size():  # type: ignore[attr-defined]  # the peer never read
            transport.abort()  # type: ignore[attr-defined]
        else:
            transport.close()


class _DrainingSocket(_Drain):
    """A bare non-blocking socket, read from the event loop until EOF, timeout or cap."""

    def __init__(self, drains: Drains, sock: socket.socket) -> None:
        super().__init__(drains)
        self.sock = sock
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        super().start(loop)
        self.loop = loop
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(16 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.finish()
        else:
            self.discarded(len(data))

    def close(self) -> None:
        if self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _discard_buffered(sock: socket.socket, limit: int) -> None:
    with contextlib.suppress(OSError):
        while limit > 0:
            data = sock.recv(min(limit, 16 * 1024), socket.MSG_DONTWAIT)
            if not data:
                return
            limit -= len(data)
