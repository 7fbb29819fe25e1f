"""The API port's pre-authentication phase: from accept to the first request of a client whose
certificate TLS verified.

The API (agent/api.py) authenticates every client by its pinned certificate in the TLS
handshake, but until that handshake is done anyone who can reach 8791 holds a connection: a
descriptor, and a slot in asyncio's SSL machinery. Before issue #25 nothing bounded that phase
except asyncio's 60 s handshake timeout, and 1,100 idle connections took every descriptor the
agent had. `ApiGuard` gives it the enrollment port's discipline (agent/frontdoor.py), reusing its
table:

1. A connection must complete the TLS handshake and send its first request within
   API_PREAUTH_TIMEOUT of its accept, or it is shut down.
2. Connections not yet authenticated are capped per source and in total (agent/descriptors.py
   derives both from RLIMIT_NOFILE at start). When the source is at its share its own oldest is
   dropped; when the table is full, the oldest of the source holding the most is: a client from a
   source that holds nothing is always admitted.
3. Authenticated connections (the handshake verified a pinned certificate) never count here: the
   entry is released the moment the handshake completes. A peer that completes a handshake is
   an authorized requester; the per-request pin check (agent/api.py) still applies. They have a
   table of their own, the descriptors agent/descriptors.py keeps for them: at most
   `Budget.api_authenticated` in all and `Budget.api_authenticated_per_source` per source; one
   beyond either is closed at once (counted as `api_authenticated_full`). Their first request
   head must still arrive within API_PREAUTH_TIMEOUT of the accept: the deadline is cancelled
   only when aiohttp has parsed a request (`request_arrived`, called by the API's first
   middleware), not by the first byte, so a byte or a header line a second does not hold it.
4. Dropped and timed-out connections are counted per source and summarised once per interval
   (agent/doorlog.py); running out of descriptors sheds the waiting connection through the spare
   descriptor (agent/descriptors.py) and is logged once per interval with a count. A malformed
   request from an authenticated client (aiohttp's HttpProcessingError: a bad chunk size, too
   many headers, a line too long) is counted the same way (`api_bad_request`), never logged on
   its own: each connection's request handler logs through `ClientErrorLog`.

`GuardedSocket` is the listening socket: its accept() (which asyncio's server calls) admits each
connection into the table; `guarded_protocol` wraps aiohttp's request handler to see the handshake
complete (asyncio calls the app protocol's connection_made only then) and the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any, Callable

from .descriptors import Budget, budget as descriptor_budget, shed_when_exhausted
from .doorlog import DoorLog
from .frontdoor import Entry, FrontDoor, source_key

# The TLS handshake and the first request, from accept. A pinned requester sends its ClientHello
# at once and its request right after the handshake: two round trips and one ECDSA P-256
# signature each way (~2 ms on loopback). 5 s covers a slow WAN and a loaded appliance, as the
# enrollment port's FIRST_FRAME_TIMEOUT does; asyncio's default handshake timeout is 60 s, nginx
# `ssl_handshake_timeout 60s` (since 1.25) and `client_header_timeout 60s`, HAProxy `timeout
# http-request` 5-10 s against slowloris.
API_PREAUTH_TIMEOUT = 5.0
# Connections asyncio accepts per event-loop turn (its `backlog` argument), as the enrollment
# port's ACCEPT_BATCH; the kernel queue is API_BACKLOG long.
API_ACCEPT_BATCH = 32
# The kernel's accept queue, as the enrollment port's ACCEPT_BACKLOG (agent/server.py): asyncio's
# default of 100 overflows under a connect flood, and a dropped SYN costs the pinned requester 1 s.
API_BACKLOG = 1024
# What an authenticated connection may send ahead of aiohttp's handling (its current request's
# head and body, MAX_REQUEST_BODY at most, and what it pipelined): beyond this, it is closed.
MAX_UNANSWERED = 192 * 1024
# How long a peer may leave its answers unread (the write buffer full), as long as an idle
# keep-alive connection may wait between requests (agent/api.py API_KEEPALIVE_TIMEOUT).
API_WRITE_TIMEOUT = 15.0


log = logging.getLogger("firsttrust.api")


class ApiGuard:
    """The API's table of unauthenticated connections.

    Args:
        caps: the descriptor budget (agent/descriptors.budget(), read at start by default).
        timeout: API_PREAUTH_TIMEOUT.
        write_timeout: how long an authenticated peer may leave its answers unread (API_WRITE_TIMEOUT).
        doorlog: where drops and exhaustion are counted.
        clock: monotonic seconds.
    """

    def __init__(self, caps: Budget | None = None, *, timeout: float = API_PREAUTH_TIMEOUT,
                 doorlog: DoorLog | None = None, clock: Callable[[], float] = time.monotonic,
                 write_timeout: float = API_WRITE_TIMEOUT) -> None:
        caps = caps or descriptor_budget()
        self.caps = caps
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.door = FrontDoor(caps.api_unauthenticated, caps.api_per_source, timeout, clock=clock)
        self.doorlog = doorlog or DoorLog("api")
        self._sockets: dict[Entry, tuple[socket.socket, asyncio.TimerHandle | None]] = {}
        self._by_fd: dict[int, Entry] = {}
        self.timeouts = 0
        self.authenticated = 0
        # Authenticated connections open now, per source (sources holding none are not kept).
        self._held: dict[str, int] = {}
        self.held = 0
        self.refused = 0  # authenticated connections closed at once: their table was full
        self._watched: dict[asyncio.BaseTransport, _Watched] = {}

    @property
    def unauthenticated(self) -> int:
        """Connections holding a slot now (some may have closed since and wait for their timer)."""
        return len(self.door)

    def admit(self, conn: socket.socket, address: Any) -> None:
        """A connection was accepted: give it a slot (making room if needed) and its deadline."""
        source = source_key(str(address[0])) if isinstance(address, tuple) and address else str(address or "")
        admission = self.door.admit(source)
        for victim in admission.evicted:
            self._drop(victim, "api_evicted")
        entry = admission.entry
        if entry is None:  # pragma: no cover - every entry is evictable: the table always makes room
            conn.close()
            raise BlockingIOError
        try:
            timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
                self.timeout, self._expire, entry)
        except RuntimeError:  # no loop (a test calling accept directly): no timer
            timer = None
        self._sockets[entry] = (conn, timer)
        self._by_fd[conn.fileno()] = entry

    def handshake_done(self, transport: asyncio.BaseTransport) -> None:
        """TLS verified the client's certificate: the connection no longer counts."""
        sock = transport.get_extra_info("socket")
        entry = self._by_fd.get(sock.fileno()) if sock is not None else None
        if entry is not None:
            self.authenticated += 1
            self._forget(entry)

    def hold(self, source: str) -> bool:
        """An authenticated connection from `source` wants one of the descriptors kept for them:
        take it (True), or refuse (False, counted) when the source or the table is at its cap."""
        if (self.held >= self.caps.api_authenticated
                or self._held.get(source, 0) >= self.caps.api_authenticated_per_source):
            self.refused += 1
            self.doorlog.count(source, "api_authenticated_full")
            return False
        self._held[source] = self._held.get(source, 0) + 1
        self.held += 1
        return True

    def release(self, source: str) -> None:
        """An authenticated connection from `source` taken by `hold` closed."""
        left = self._held.get(source, 0) - 1
        if left > 0:
            self._held[source] = left
        else:
            self._held.pop(source, None)
        self.held -= 1

    def request_arrived(self, transport: asyncio.BaseTransport | None) -> None:
        """aiohttp parsed a request head on `transport`: its first-request deadline is met."""
        watched = self._watched.get(transport) if transport is not None else None
        if watched is not None:
            watched.cancel_deadline()
            watched.request_started()

    def _expire(self, entry: Entry) -> None:
        if entry in self._sockets:
            self.timeouts += 1
            self._drop(entry, "api_preauth_timeout")

    def _drop(self, entry: Entry, outcome: str) -> None:
        conn = self._forget(entry)
        if conn is not None and conn.fileno() != -1:  # -1: asyncio closed it already
            self.doorlog.count(entry.source, outcome)
            # Shut down, not close: asyncio owns the descriptor; its transport sees the end and
            # closes it (and its SSL state) itself.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _forget(self, entry: Entry) -> socket.socket | None:
        self.door.release(entry)
        conn, timer = self._sockets.pop(entry, (None, None))
        if timer is not None:
            timer.cancel()
        if conn is not None:
            fd = conn.fileno()
            if self._by_fd.get(fd) is entry:
                del self._by_fd[fd]
        return conn


class GuardedSocket(socket.socket):
    """The API's listening socket: every accepted connection enters `guard`'s table; an accept
    that finds no descriptor left sheds the connection (agent/descriptors.py)."""

    guard: ApiGuard | None = None

    def accept(self):  # type: ignore[override]
        try:
            conn, address = super().accept()
        except BlockingIOError:  # none is waiting: asyncio's cue (unbound: see DoorSocket.accept)
            raise
        except OSError as exc:
            shed_when_exhausted(self, exc, self.guard.doorlog if self.guard else None)
            raise BlockingIOError from None
        if self.guard is not None:
            self.guard.admit(conn, address)
        return conn, address


def guarded(sock: socket.socket) -> GuardedSocket:
    """`sock` (bound and listening) as a GuardedSocket (the same descriptor)."""
    if isinstance(sock, GuardedSocket):
        return sock
    blocking = sock.getblocking()
    made = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    made.setblocking(blocking)
    return made


class ClientErrorLog(logging.LoggerAdapter):
    """The logger of one connection's aiohttp request handler (its `logger` argument). aiohttp
    logs every request it cannot parse ("Error handling request") with a traceback and, in its
    exception, the client's own bytes; here a client protocol error (HttpProcessingError and its
    subclasses: BadHttpMessage, LineTooLong, ...) is only counted for the source in the door log,
    and anything else is one line of `firsttrust.api` without its traceback."""

    def __init__(self, doorlog: DoorLog, source: str) -> None:
        super().__init__(log, {})
        self.doorlog, self.source = doorlog, source

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.pop("exc_info", None)
        if isinstance(exc, tuple):
            exc = exc[1]
        if exc is True:
            import sys

            exc = sys.exc_info()[1]
        from aiohttp.http_exceptions import HttpProcessingError  # loaded: the API runs

        if isinstance(exc, HttpProcessingError):
            self.doorlog.count(self.source, "api_bad_request")
            return
        kwargs.pop("stack_info", None)
        if not self.logger.isEnabledFor(level):
            return
        with contextlib.suppress(Exception):
            msg = str(msg) % args if args else str(msg)
        if isinstance(exc, BaseException):
            msg = f"{msg}: {type(exc).__name__}: {str(exc)[:200]}"
        self.logger.log(level, "API connection from %s: %s", self.source, msg)


class _Watched(asyncio.Protocol):
    """aiohttp's request handler, seen from outside: the handshake completing (connection_made,
    which asyncio calls for the app protocol only after TLS is up) and the first request."""

    def __init__(self, inner: asyncio.Protocol, guard: ApiGuard) -> None:
        self.inner, self.guard = inner, guard
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.source: str | None = None  # set while it holds an authenticated slot
        self.unanswered = 0  # bytes received since aiohttp began its last request
        self.stalled: asyncio.TimerHandle | None = None  # while the peer reads none of its answers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.guard.handshake_done(transport)
        peer = transport.get_extra_info("peername")
        source = source_key(str(peer[0])) if isinstance(peer, tuple) and peer else str(peer or "")
        if not self.guard.hold(source):  # its share of the kept descriptors is taken: closed now
            transport.abort()  # not close(): that waits for the peer's close_notify, counted nowhere
            return
        self.source = source
        self.guard._watched[transport] = self
        # The first request head is still due within the same deadline, now from an
        # authenticated peer: closed, not counted, if it does not come.
        self.timer = asyncio.get_running_loop().call_later(self.guard.timeout, self._no_request)
        with contextlib.suppress(AttributeError):  # aiohttp's RequestHandler (a slot in 3.8 and 3.9+)
            self.inner.logger = ClientErrorLog(self.guard.doorlog, source)  # type: ignore[attr-defined]
        self.inner.connection_made(transport)

    def cancel_deadline(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _no_request(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def request_started(self) -> None:
        """aiohttp is handling a request: what arrives from now on belongs to the next ones."""
        self.unanswered = 0

    def data_received(self, data: bytes) -> None:
        if self.source is None:
            return
        # Bounded memory whatever aiohttp buffers: requests pipelined and never read, or one head
        # of a million header lines (aiohttp 3.8.4's C parser keeps them all: 2.5 GB in 20 s in the
        # review). A request is at most its head and MAX_UNANSWERED - that of body.
        self.unanswered += len(data)
        if self.unanswered > MAX_UNANSWERED:
            self.guard.doorlog.count(self.source, "api_flood")
            assert self.transport is not None
            self.transport.abort()
            return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.source is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        if self.source is None:  # refused at connection_made: aiohttp never saw it
            return
        self.guard.release(self.source)
        self.source = None
        self.guard._watched.pop(self.transport, None)  # type: ignore[arg-type]
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.source is not None:
            # A peer that does not read its answers holds the connection while the buffer stays
            # full: it has the keep-alive time to read, as an idle one has to send.
            if self.stalled is None:
                self.stalled = asyncio.get_running_loop().call_later(self.guard.write_timeout, self._not_reading)
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        if self.source is not None:
            self.inner.resume_writing()

    def _not_reading(self) -> None:
        self.stalled = None
        if self.transport is not None and self.source is not None:
            self.guard.doorlog.count(self.source, "api_not_reading")
            self.transport.abort()


def guarded_protocol(factory: Callable[[], asyncio.Protocol], guard: ApiGuard) -> Callable[[], asyncio.Protocol]:
    return lambda: _Watched(factory(), guard)
