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
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from typing import Any

from .apiguard import API_BACKLOG, ApiGuard, guarded
from .listening import listen_on, passive_addresses
from .state import StateDir

log = logging.getLogger("firsttrust.api")


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
        self._watching = False

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
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._knock)
            self._watching = True

    def _knock(self) -> None:
        """A connection is waiting: hand the socket to the API if someone was authorized since,
        else accept and close it."""
        try:
            authorized = bool(self.store.authorized())
        except Exception:  # a corrupt authorized.json: stay closed, say why once per connection
            log.exception("cannot read the authorized keys; the API stays closed")
            authorized = False
        if authorized:
            self._stop_watching()  # the API's own listener takes the waiting connection
            if self._opening is None:
                self._opening = asyncio.get_running_loop().create_task(self.open())
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

    async def open(self) -> None:
        """Start the API on the socket (importing it now), or reload its trust if it runs."""
        self._stop_watching()
        if self.runner is not None:
            self.contexts.reload()  # the new requester's key is accepted on the next handshake
            return
        from .api import start_api  # aiohttp.web: only now that someone may call

        self.runner, self.contexts = await start_api(self.store, "", 0, self.info, sock=self.sock, guard=self.guard)
        _return_free_memory()

    async def close(self) -> None:
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
