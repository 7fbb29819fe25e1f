"""The API's listening socket, and the API itself started only once someone may use it.

The pinned mTLS API (agent/api.py, on aiohttp.web) is most of the agent's memory and start-up
time, and an appliance that nobody has enrolled yet has nobody who could call it: its TLS layer
would refuse every client. So `ApiDoor` binds the API's socket at start (READY=1 means both ports
listen, and systemd may hand the socket over), and until a requester is authorized it refuses
each connection by closing it, without reading a byte: the same outcome for a client as the TLS
handshake that could not succeed, for no import at all. The real API is started on the same
socket when enrollment authorizes a requester (`open`), when authorized.json already names one
at start, or when a connection arrives after another process authorized one
(`firsttrust-agent authorize`, the guest-command mode): that connection is then answered by the API.

`open` runs once at a time (a connection that starts the API and enrollment's own call may
race: the second waits for the first and then only reloads the trust). When starting the API
fails on a connection's cue, one line says why and the door keeps refusing connections; the
next connection after API_OPEN_RETRY tries again. A corrupt authorized.json is logged once per
change of the file, one line, however many connections arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from typing import Any

from .apiguard import API_BACKLOG, ApiGuard, guarded
from .listening import listen_on, passive_addresses
from .state import StateDir

log = logging.getLogger("firsttrust.api")

# After the API failed to start on a connection's cue, connections are closed unanswered for
# this long before the next one tries again: a persistent failure is retried, never in a loop.
API_OPEN_RETRY = 5.0


def bind_api_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: ephemeral), as asyncio's create_server makes it.

    Raises:
        OSError: the address cannot be resolved or bound.
    """
    family, kind, proto, _, address = passive_addresses(host or None, port)[0]
    return listen_on(socket.socket(family, kind, proto), address, API_BACKLOG)


class ApiDoor:
    """The API port: closed (connections refused by closing them) until someone is authorized,
    then the API (agent/api.py) serving on the same socket.

    Args:
        store: the state directory (authorized.json says whether anyone is authorized).
        sock: the listening socket (bound here with `bind_api_socket`, or passed by systemd).
        info: agent.api.ApiInfo for the API.
    """

    def __init__(self, store: StateDir, sock: socket.socket, info: Any = None, guard: ApiGuard | None = None) -> None:
        self.store = store
        # A socket from systemd arrives blocking: accepting a connection that was reset between
        # the readiness event and accept() would then block the whole event loop.
        sock.setblocking(False)
        self.sock = guarded(sock)
        # The unauthenticated phase's caps, sized from the descriptor limit now, at start.
        self.guard = guard or ApiGuard()
        self.info = info
        self.runner: Any = None  # aiohttp's AppRunner once the API runs
        self.contexts: Any = None  # agent.api.AuthorizedContexts once the API runs
        self._opening: asyncio.Task | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._watching = False
        self._retry_at = 0.0  # loop time before which a connection does not try to open again
        self._corrupt_stamp: Any = None  # authorized.json as last logged corrupt
        self._failure: str | None = None  # the last failure to open that was logged

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    async def start(self) -> None:
        """Serve the API now if someone is authorized, else keep the door closed.

        Raises:
            StateError: authorized.json is corrupt. NoIdentity: not provisioned (when serving).
        """
        if self.store.authorized():
            await self.open()
        else:
            self._start_watching()

    def _start_watching(self) -> None:
        if not self._watching and not self._closed and self.runner is None and self.sock.fileno() != -1:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._knock)
            self._watching = True

    def _authorized(self) -> bool:
        """Whether authorized.json names anyone; a corrupt one is logged once per change of the
        file (one line, no traceback) and counts as nobody."""
        try:
            authorized = bool(self.store.authorized())
        except Exception as exc:  # a corrupt authorized.json: stay closed, say why once per change
            try:
                info = os.stat(self.store.authorized_path)
                stamp: Any = (info.st_ino, info.st_mtime_ns, info.st_size)
            except OSError:
                stamp = None
            if stamp is None or stamp != self._corrupt_stamp:
                self._corrupt_stamp = stamp
                log.error("cannot read the authorized keys (%s: %s); the API stays closed",
                          type(exc).__name__, str(exc)[:200])
            return False
        self._corrupt_stamp = None
        return authorized

    def _knock(self) -> None:
        """A connection is waiting: hand the socket to the API if someone was authorized since,
        else accept and close it."""
        loop = asyncio.get_running_loop()
        if self._opening is None and loop.time() >= self._retry_at and self._authorized():
            self._stop_watching()  # the API's own listener takes the waiting connection
            self._opening = loop.create_task(self.open())
            self._opening.add_done_callback(self._opened)
            return
        try:
            connection, _ = socket.socket.accept(self.sock)  # not through the guard: closed at once
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:  # out of descriptors: shed it with the spare, counted
            from .descriptors import shed_when_exhausted

            shed_when_exhausted(self.sock, exc, self.guard.doorlog)
            return
        connection.close()

    def _stop_watching(self) -> None:
        if self._watching:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._watching = False

    def _opened(self, task: asyncio.Task) -> None:
        """The start a connection asked for ended: if it failed, say why (once per distinct
        failure) and go back to refusing connections until API_OPEN_RETRY has passed."""
        if self._opening is task:
            self._opening = None
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
        if why != self._failure:
            self._failure = why
            log.error("the API could not start (%s); connections are refused, retried in %.0f s", why,
                      API_OPEN_RETRY)

    async def open(self) -> None:
        """Start the API on the socket (importing it now), or reload its trust if it runs. One
        call at a time: a second waits for the first, then reloads."""
        self._stop_watching()
        async with self._open_lock:
            if self.runner is not None:
                self.contexts.reload()  # the new requester's key is accepted on the next handshake
                return
            from .api import start_api  # aiohttp.web: only now that someone may call

            try:
                self.runner, self.contexts = await start_api(self.store, "", 0, self.info, sock=self.sock,
                                                             guard=self.guard)
            except BaseException:  # back to refusing connections; one may try again later
                self._retry_at = asyncio.get_running_loop().time() + API_OPEN_RETRY
                self._start_watching()
                raise
            self._failure = None
        _return_free_memory()

    async def close(self) -> None:
        self._closed = True
        self._stop_watching()
        if self._opening is not None:
            with contextlib.suppress(Exception):
                await self._opening
        if self.runner is not None:
            await self.runner.cleanup()
        else:
            self.sock.close()


def _return_free_memory() -> None:
    """Once, after the API started: collect the enrollment's and the imports' garbage and hand
    the freed heap back to the kernel (glibc keeps it otherwise), so an enrolled agent holds what
    it uses."""
    import ctypes  # here, not at start-up: the agent imports it only once enrolled

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
