"""What `firsttrust-agent serve` tells systemd, and where its logs go.

  notify()         sd_notify(3) lines: READY=1, STATUS=..., WATCHDOG=1, STOPPING=1
  watchdog_loop()  WATCHDOG=1 every WatchdogSec/2, sent from the running event loop
  setup_logging()  journald with structured fields when reachable, else one line per record on stderr

Everything degrades to a no-op outside systemd (tests, containers, the lab): notify() returns
False and never raises. systemd-python (Debian: python3-systemd) is used when importable; the
notify protocol is small enough to speak without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path
from types import ModuleType

log = logging.getLogger("firsttrust.systemd")

SYSLOG_IDENTIFIER = "firsttrust-agent"
# Where journald listens for native-protocol entries (systemd-journald.service(8)).
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
AGENT_LOGGER = "firsttrust"
AUDIT_LOGGER = "firsttrust.audit"
# The libraries the agent runs on, whose records would otherwise reach stderr through logging's
# lastResort with their tracebacks (aiohttp logs a malformed request with one, and the client's
# bytes): they go through the agent's own handler, one line each, without the traceback.
LIBRARY_LOGGERS = ("aiohttp", "asyncio")

_UNSET = object()


def _load_daemon() -> ModuleType | None:
    try:
        from systemd import daemon
    except ImportError:
        return None
    return daemon


def _load_journal() -> ModuleType | None:
    try:
        from systemd import journal
    except ImportError:
        return None
    return journal


def notify(*lines: str) -> bool:
    """Send sd_notify assignments (one per argument) to the service manager.

    Args:
        lines: e.g. "READY=1", "STATUS=listening on 0.0.0.0:8790". A newline inside one
            argument is replaced by a space, so a status text cannot add an assignment.

    Returns:
        True if the datagram was sent. False when NOTIFY_SOCKET is unset (not run by systemd),
        names an unsupported address (systemd >= 253 "vsock:"), or sending failed (socket
        gone, manager not listening): one debug line is logged, nothing is raised.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    message = "\n".join(line.replace("\n", " ") for line in lines)
    daemon = _load_daemon()
    try:
        if daemon is not None:
            return bool(daemon.notify(message))
        return _send(address, message.encode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - a notification must never take the agent down
        log.debug("sd_notify to %s failed: %s", address, exc)
        return False


def _send(address: str, datagram: bytes) -> bool:
    """sd_notify(3) without libsystemd: one AF_UNIX datagram; "@name" is Linux's abstract namespace."""
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        log.debug("NOTIFY_SOCKET %r is not a unix socket address; not notifying", address)
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(datagram, target)
    return True


def watchdog_interval() -> float | None:
    """The watchdog timeout systemd expects pings within, in seconds (sd_watchdog_enabled(3)).

    Returns:
        None unless WATCHDOG_USEC is a positive integer and WATCHDOG_PID, when set, is this
        process (a child must not ping on its parent's behalf).
    """
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


async def watchdog_loop(interval: float | None = None) -> None:
    """Send WATCHDOG=1 every `interval`/2 seconds until cancelled.

    The pings come from the event loop itself, so a loop blocked for longer than WatchdogSec
    stops them and systemd restarts the agent. Returns at once when no watchdog is configured.

    Args:
        interval: the watchdog timeout in seconds; default watchdog_interval().
    """
    if interval is None:
        interval = watchdog_interval()
    if not interval or interval <= 0:
        return
    # Half the timeout, as sd_watchdog_enabled(3) recommends: one late ping is not a restart.
    period = interval / 2
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period)


class _OneLineFormatter(logging.Formatter):
    """`firsttrust-agent: [level: ]message` on one line: a newline in a peer-supplied string
    (an error text, a name) cannot forge a second record in a line-based log."""

    def __init__(self, with_level: bool) -> None:
        super().__init__("%(message)s")
        self._with_level = with_level

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\r", "\\r").replace("\n", "\\n")
        level = f"{record.levelname.lower()}: " if self._with_level and record.levelno >= logging.WARNING else ""
        return f"{SYSLOG_IDENTIFIER}: {level}{text}"


class _NoTraceback(logging.Filter):
    """A library's record as one line: its exception becomes `: Type: text` (bounded), never a
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if exc is not None or record.exc_text or record.stack_info:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string is still one line
                message = str(record.msg)
            if exc is not None:
                message = f"{message}: {type(exc).__name__}: {str(exc)[:200]}"
            record.msg, record.args = message, ()
            record.exc_info = record.exc_text = record.stack_info = None
        return True


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler writing to whatever sys.stderr is when a record arrives."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _is_ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_firsttrust_glue", False)


def setup_logging(verbose: bool = False, *, journal_socket: Path | str = JOURNAL_SOCKET,
                  journal: ModuleType | None | object = _UNSET) -> str:
    """Send the `firsttrust` loggers to journald, or to stderr when journald is not reachable.

    With journald, audit events (agent.audit) carry MESSAGE_ID and FIRSTTRUST_* fields and all
    records carry SYSLOG_IDENTIFIER=firsttrust-agent. On stderr every record is one line; audit
    events keep the `firsttrust-agent: MESSAGE [event=NAME ...]` form. Calling it again replaces
    the handlers it attached before.

    Args:
        verbose: also log DEBUG records of the `firsttrust` loggers.
        journal_socket: journald's socket; journald counts as reachable when it exists.
        journal: the systemd.journal module (tests pass a stand-in); default: import it, and
            treat journald as unreachable when systemd-python is not installed.

    Returns:
        "journal" or "stderr": where the records go.
    """
    reachable = Path(journal_socket).exists()
    if journal is _UNSET:  # imported only when journald is there to take the records (~8 ms)
        journal = _load_journal() if reachable else None
    agent_log = logging.getLogger(AGENT_LOGGER)
    audit_log = logging.getLogger(AUDIT_LOGGER)
    libraries = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for logger in (agent_log, audit_log, *libraries):
        for handler in [h for h in logger.handlers if _is_ours(h)]:
            logger.removeHandler(handler)
            handler.close()

    if journal is not None and reachable:
        sink = "journal"
        handlers = (journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER),
                    journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER))
    else:
        sink = "stderr"
        handlers = (logging.StreamHandler(sys.stderr), logging.StreamHandler(sys.stderr))
        handlers[0].setFormatter(_OneLineFormatter(with_level=True))
        # audit.event() builds its own line; the formatter adds only the prefix, as in the
        # print() fallback audit.event() uses when nobody called setup_logging().
        handlers[1].setFormatter(_OneLineFormatter(with_level=False))

    for logger, handler in zip((agent_log, audit_log), handlers):
        handler._firsttrust_glue = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if sink == "journal":
        library: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)  # type: ignore[union-attr]
    else:
        library = _StderrHandler()
        library.setFormatter(_OneLineFormatter(with_level=True))
    library.addFilter(_NoTraceback())
    library._firsttrust_glue = True  # type: ignore[attr-defined]
    for logger in libraries:  # their level stays WARNING (the root's): aiohttp's access log is not kept
        logger.addHandler(library)
    agent_log.setLevel(logging.DEBUG if verbose else logging.INFO)
    audit_log.setLevel(logging.INFO)
    # Audit events have their own handler; without this they would reach the journal twice.
    audit_log.propagate = False
    return sink


# sd_listen_fds(3): passed descriptors start at 3.
SD_LISTEN_FDS_START = 3


def listen_sockets(environ: dict[str, str] | None = None) -> dict[str, socket.socket]:
    """Listening sockets handed over by systemd socket activation, by FileDescriptorName.

    Returns {} unless LISTEN_PID is this process. The environment variables are removed, as
    sd_listen_fds(1) does, so child processes do not believe the sockets are theirs.
    """
    env = os.environ if environ is None else environ
    try:
        if int(env.get("LISTEN_PID", "0")) != os.getpid():
            return {}
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":") if env.get("LISTEN_FDNAMES") else []
    sockets: dict[str, socket.socket] = {}
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        name = names[index] if index < len(names) else f"fd{index}"
        sockets[name] = socket.socket(fileno=fd)
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    return sockets
