"""The agent's file descriptor budget, and what happens if it ever runs out anyway.

Every connection is a descriptor, and the process has RLIMIT_NOFILE of them (systemd's default
soft limit is 1024; the unit sets LimitNOFILE=). Before issue #25 the API port had no cap at all:
1,100 idle connections took all 1024, the pinned requester's call failed, and every accept that
failed with EMFILE wrote a traceback (204,648 of them in 45 s). Now the caps are derived from the
limit the agent starts with (`budget`), so `ulimit -n 1024` works as well as the unit:

    limit = RESERVE + enrollment table + drains + API unauthenticated + API authenticated

and `SpareDescriptor` keeps one descriptor open so that, should the limit be reached all the
same (another thread's files, a leak), an accept that fails with EMFILE can still take the
connection off the queue and close it (instead of leaving it there, readable forever, which
spins the event loop), counted and logged once per interval (agent/doorlog.py). Precedent: the
"reserve fd" trick of libev/libuv users and nginx's `worker_connections` < `worker_rlimit_nofile`.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from typing import NamedTuple

from .drain import MAX_DRAINING
from .frontdoor import MAX_UNAUTHENTICATED

# --- the limits, with their reasons -------------------------------------------------------------

# Descriptors kept for everything that is not a connection: stdin/out/err, the journal socket,
# the two listening sockets, the state directory's files (state.json, its temp file, SEC-B, the
# identity, authorized.json, fsyncs of the directory) opened by the executor's threads at once,
# the SSH key files, the spare descriptor, and Python's own (urandom, the ssl module's files).
RESERVE = 64
# Authenticated API connections (pinned requesters, keep-alive): never counted against the
# unauthenticated caps, but each is a descriptor, so room is kept for this many, and no more are
# held (agent/apiguard.py closes one beyond it right after its handshake). One appliance
# has one or a few requesters, each with a connection or two.
API_AUTHENTICATED_ROOM = 64
# Authenticated API connections one source may hold at once (agent/apiguard.py refuses the next
# one): a requester's concurrent calls, as API_PER_SOURCE_MAX_UNAUTHENTICATED. Idle keep-alive
# connections are closed after API_KEEPALIVE_TIMEOUT (agent/api.py), so a requester that is
# refused gets room again within seconds.
API_AUTHENTICATED_PER_SOURCE = 16
# The API's cap on connections that have not authenticated yet (TLS handshake and first request
# not done), at most; fewer when the descriptor limit is low. A pinned requester needs one per
# call; 256 lets a fleet's automation call at once and keeps a flood's share bounded.
# OpenSSH `MaxStartups 10:30:100`; nginx `worker_connections 512`.
API_MAX_UNAUTHENTICATED = 256
# Unauthenticated API connections one source may hold: a requester's concurrent calls.
# A source at its share gives up its own oldest; when the table is full, the biggest source does.
API_PER_SOURCE_MAX_UNAUTHENTICATED = 16
# The smallest API table the agent starts with; below it the limit is too low to serve.
API_MIN_UNAUTHENTICATED = 16


class Budget(NamedTuple):
    """How the descriptor limit is shared out (see the module docstring)."""

    limit: int
    enroll_unauthenticated: int
    drains: int
    api_unauthenticated: int
    api_per_source: int
    short: int = 0  # descriptors missing for the fixed shares (0: the limit is enough)
    api_authenticated: int = API_AUTHENTICATED_ROOM  # authenticated API connections in all
    api_authenticated_per_source: int = API_AUTHENTICATED_PER_SOURCE  # ... and per source

    def __str__(self) -> str:
        return (f"file descriptor limit {self.limit}: enrollment {self.enroll_unauthenticated} unauthenticated, "
                f"{self.drains} draining, API {self.api_unauthenticated} unauthenticated "
                f"({self.api_per_source} per source), {RESERVE} reserved, {self.api_authenticated} for "
                f"authenticated API connections ({self.api_authenticated_per_source} per source)")


def budget(limit: int | None = None) -> Budget:
    """The caps for a process whose soft RLIMIT_NOFILE is `limit` (read now when None). Below
    the room the fixed shares need, the API table keeps API_MIN_UNAUTHENTICATED slots all the
    same (and `Budget.short` says by how many descriptors the limit is short)."""
    if limit is None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    room = limit - RESERVE - MAX_UNAUTHENTICATED - MAX_DRAINING - API_AUTHENTICATED_ROOM
    api = max(API_MIN_UNAUTHENTICATED, min(API_MAX_UNAUTHENTICATED, room))
    return Budget(limit, MAX_UNAUTHENTICATED, MAX_DRAINING, api, min(API_PER_SOURCE_MAX_UNAUTHENTICATED, api),
                  max(0, API_MIN_UNAUTHENTICATED - room))


class SpareDescriptor:
    """One descriptor held in reserve (/dev/null), given up for an accept when the process has
    none left, then taken again."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.take()

    def take(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # still none free: try again at the next shed
                self.fd = None

    def shed(self, listening: socket.socket) -> bool:
        """Out of descriptors: free the spare, accept one waiting connection and close it at once,
        take the spare back. Returns whether a connection was shed."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            conn, _ = socket.socket.accept(listening)
        except OSError:
            return False
        else:
            conn.close()
            return True
        finally:
            self.take()


# One per process: both listeners share it.
_SPARE: SpareDescriptor | None = None


def spare() -> SpareDescriptor:
    global _SPARE
    if _SPARE is None:
        _SPARE = SpareDescriptor()
    return _SPARE


EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


def shed_when_exhausted(listening: socket.socket, exc: OSError, doorlog=None) -> None:
    """accept() on `listening` failed with `exc`. Out of descriptors (EMFILE, ENFILE): shed the
    waiting connection with the spare descriptor and count it in `doorlog` (agent/doorlog.py), to
    be logged once per interval. Anything else is asyncio's to handle.

    Raises:
        OSError: `exc`, when it is not descriptor exhaustion.
    """
    if exc.errno not in EXHAUSTED:
        raise exc
    spare().shed(listening)
    if doorlog is not None:
        doorlog.descriptors_exhausted()
