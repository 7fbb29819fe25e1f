"""`firsttrust-agent serve`: the long-running service (systemd Type=notify).

One event loop runs the enrollment listener (SRP -> TLS, firsttrust.enrollment) and the pinned
mTLS API (agent.api). READY=1 is sent once both listeners are bound; WATCHDOG=1 pings come from
the running loop, so a wedged loop gets the service restarted. SIGTERM stops both cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from typing import Callable, NamedTuple

from firsttrust.deployment import DEFAULT_API_PORT, DEFAULT_ENROLL_PORT

from . import audit, systemd_glue
from .apidoor import ApiDoor, bind_api_socket
from .apiguard import ApiGuard
from .descriptors import budget, spare
from .apiinfo import ApiInfo
from .config import AgentConfig
from .errors import AgentError
from .gate import EnrollmentGate
from .grant import repair_at_start
from .server import EnrollmentServer, OwnIdentity, start_enrollment_server
from .state import StateDir

log = logging.getLogger("firsttrust.service")

# One line per UNRAISABLE_INTERVAL at most for exceptions Python can only print.
UNRAISABLE_INTERVAL = 60.0


class QuietUnraisable:
    """sys.unraisablehook while the agent serves. An exception in a callback Python cannot raise
    into (ssl's server-name callback on a ClientHello whose SNI is not ASCII: CPython fails to
    decode it before the callback runs) was printed as a five-line traceback on stderr, the
    journal, per connection: 26,305 of them in 10 s from one client without a certificate. Here
    it is one line naming the type, then counted, at most one line an interval."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.count = 0
        self.logged_at: float | None = None

    def __call__(self, unraisable) -> None:
        self.count += 1
        now = self.clock()
        if self.logged_at is None or now - self.logged_at >= UNRAISABLE_INTERVAL:
            log.warning("ignored %s raised in a callback (%d since the last such line; a client's malformed "
                        "handshake, for one)", type(unraisable.exc_value).__name__, self.count)
            self.count, self.logged_at = 0, now


class NotProvisioned(AgentError):
    """serve was started before provisioning succeeded."""

    code = "not_provisioned"


def _is_ipv6(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return False
    return True


class Listen(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int) -> "Listen":
        """ADDR:PORT, ADDR, :PORT or [IPV6]:PORT, [IPV6] (an IPv6 address in brackets).

        Raises:
            ValueError: anything else: a port out of range, an unclosed or empty bracket, an
                IPv6 address without brackets (`::1:80` has no one reading).
        """
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            sep, port = rest[:1], rest[1:]
            if not bracket or (rest and sep != ":") or not _is_ipv6(host.partition("%")[0]):  # fe80::1%eth0
                raise ValueError(f"invalid listen address {text[:60]!r}: expected [IPV6]:PORT")
        else:
            host, sep, port = text.rpartition(":")
            if not sep:
                host = text
            elif ":" in host:
                raise ValueError(f"invalid listen address {text[:60]!r}: an IPv6 address goes in brackets, [IPV6]:PORT")
        if not sep:
            port = str(default_port)
        host = host or "0.0.0.0"
        if not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"invalid listen address {text[:60]!r}: expected ADDR:PORT")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


DEFAULT_LISTEN = Listen("0.0.0.0", DEFAULT_ENROLL_PORT)
DEFAULT_API_LISTEN = Listen("0.0.0.0", DEFAULT_API_PORT)


async def serve(config: AgentConfig, listen: Listen = DEFAULT_LISTEN, api_listen: Listen = DEFAULT_API_LISTEN, *,
                host_key_glob: str | None = None, clock: Callable[[], float] = time.time,
                stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set).

    Raises:
        NotProvisioned: no state or no identity (the provision unit has not succeeded).
        OSError: a port cannot be bound.
    """
    host_key_glob = host_key_glob or config.ssh_host_keys
    store = StateDir(config.state_dir)
    state = store.load()
    own = OwnIdentity(store)  # loaded once: its TLS context is the one enrollment serves with
    if state is None or own.load() is None:
        raise NotProvisioned(f"{store.path} holds no provisioned appliance; run firsttrust-agent provision first")
    # Roll forward an enrollment a crash cut short after its commit (agent/grant.py), before
    # anything is served: the API trusts exactly what state.json committed.
    repaired = repair_at_start(store, clock=clock)
    if repaired:
        audit.event("repaired", "finished what an interrupted run left: " + "; ".join(repaired),
                    outcome="repaired")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    # Under systemd the listening sockets come from firsttrust-enroll.socket and
    # firsttrust-api.socket (so the service itself needs no network namespace of its own).
    passed = systemd_glue.listen_sockets()
    if passed and not {"enroll", "api"} <= set(passed):
        raise AgentError(f"systemd passed sockets named {', '.join(sorted(passed))}; expected 'enroll' and 'api' "
                         "(firsttrust-enroll.socket, firsttrust-api.socket)")
    # The API's socket is bound now; the API itself (aiohttp.web) starts only once someone is
    # authorized (agent/apidoor.py).
    # The caps on unauthenticated connections, from the descriptor limit the agent started with
    # (agent/descriptors.py): LimitNOFILE= under systemd, `ulimit -n` by hand.
    caps = budget()
    spare()  # the descriptor an accept sheds with at exhaustion: taken now, while one is free
    if caps.short:
        log.warning("the %s is %d short of what the caps need; raise LimitNOFILE=", caps, caps.short)
    else:
        log.info("%s", caps)
    api_door = ApiDoor(store, passed.get("api") or bind_api_socket(api_listen.host, api_listen.port),
                       ApiInfo(host_key_glob=host_key_glob), guard=ApiGuard(caps))
    try:
        await api_door.start()
    except BaseException:
        await api_door.close()
        raise
    api_port = api_door.port

    async def on_enrolled(_authorization) -> None:
        await api_door.open()  # the new requester's key is accepted on the next API handshake
        systemd_glue.notify("STATUS=enrolled; serving the pinned API")

    gate = EnrollmentGate(config, store, clock=clock)
    enrollment = EnrollmentServer(gate, api_port=api_port, host_key_glob=host_key_glob, on_enrolled=on_enrolled,
                                  own=own)
    server = await start_enrollment_server(enrollment, listen.host, listen.port, sock=passed.get("enroll"))
    if not server.sockets:
        await api_door.close()
        raise AgentError("the enrollment listener has no socket (address family not allowed?)")
    enroll_host, enroll_port = server.sockets[0].getsockname()[:2]
    phase = "enrolled" if state.phase == "enrolled" else "waiting for enrollment"
    status = f"STATUS={phase}; enrollment on {enroll_host}:{enroll_port}, API on port {api_port}"
    log.info("listening: enrollment %s:%s, API port %s", enroll_host, enroll_port, api_port)
    systemd_glue.notify("READY=1", status)
    watchdog = asyncio.create_task(systemd_glue.watchdog_loop())
    previous_hook, sys.unraisablehook = sys.unraisablehook, QuietUnraisable()
    try:
        await stop.wait()
    finally:
        sys.unraisablehook = previous_hook
        systemd_glue.notify("STOPPING=1")
        watchdog.cancel()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
        await api_door.close()
        # The last interval's counts (a flood's evidence), not lost with the process at a stop,
        # a restart or the watchdog's kill-and-restart.
        for doorlog in (enrollment.doorlog, api_door.guard.doorlog):
            with contextlib.suppress(Exception):
                doorlog.flush()
