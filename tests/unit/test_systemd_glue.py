"""agent/systemd_glue.py and the journal side of agent/audit.py.

The notify tests bind their own NOTIFY_SOCKET (a path in tmp_path, and an abstract one) and read
what arrives, through both senders: systemd-python's sd_notify and the stdlib fallback. The
journal tests run systemd-python's real JournalHandler with its sender replaced by a recorder,
so they check the fields journald would receive, without a journald.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
import threading
import time
import uuid

import pytest

from firsttrust.agent import audit, systemd_glue

try:
    from systemd import journal as real_journal
except ImportError:  # the agent extra is not installed: the stdlib paths are still tested
    real_journal = None

needs_systemd_python = pytest.mark.skipif(real_journal is None, reason="systemd-python not installed")
SENDERS = ["stdlib", pytest.param("systemd-python", marks=needs_systemd_python)]


@pytest.fixture(params=SENDERS)
def sender(request, monkeypatch):
    """Run the test once per notify implementation."""
    if request.param == "stdlib":
        monkeypatch.setattr(systemd_glue, "_load_daemon", lambda: None)
    return request.param


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def restore_loggers():
    """setup_logging() changes process-wide loggers; put them back after each test."""
    saved = {}
    for name in (systemd_glue.AGENT_LOGGER, systemd_glue.AUDIT_LOGGER, *systemd_glue.LIBRARY_LOGGERS):
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


class Receiver:
    """A NOTIFY_SOCKET: an AF_UNIX datagram socket that records what arrives, and when."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)

    def messages(self, timeout: float = 2.0) -> list[str]:
        """Everything that arrived: wait up to `timeout` for the first datagram, then take the
        ones already queued behind it."""
        out = []
        self.sock.settimeout(timeout)
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except (BlockingIOError, socket.timeout):
                return out
            self.sock.settimeout(0.05)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_socket(tmp_path, monkeypatch):
    address = str(tmp_path / "notify")
    receiver = Receiver(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield receiver
    receiver.close()


@pytest.fixture
def abstract_socket(monkeypatch):
    name = f"firsttrust-test-{uuid.uuid4().hex}"
    receiver = Receiver("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield receiver
    receiver.close()


# --- notify ------------------------------------------------------------------------------------

def test_ready_and_status_reach_a_path_socket(sender, path_socket):
    assert systemd_glue.notify("READY=1", "STATUS=listening on 0.0.0.0:8790") is True
    assert path_socket.messages() == ["READY=1\nSTATUS=listening on 0.0.0.0:8790"]


def test_watchdog_and_stopping_reach_an_abstract_socket(sender, abstract_socket):
    assert systemd_glue.notify("WATCHDOG=1") is True
    assert systemd_glue.notify("STOPPING=1") is True
    assert abstract_socket.messages() == ["WATCHDOG=1", "STOPPING=1"]


def test_a_newline_in_a_status_cannot_add_an_assignment(sender, path_socket):
    systemd_glue.notify("STATUS=peer said\nREADY=1")
    assert path_socket.messages() == ["STATUS=peer said READY=1"]


def test_without_notify_socket_nothing_is_sent(sender):
    assert systemd_glue.notify("READY=1") is False


def test_a_missing_socket_path_returns_false_with_one_debug_line(sender, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.DEBUG, logger="firsttrust.systemd"):
        assert systemd_glue.notify("READY=1") is False
    lines = [r for r in caplog.records if r.name == "firsttrust.systemd"]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
    assert "gone" in lines[0].getMessage()


def test_a_socket_nobody_listens_on_returns_false(sender, tmp_path, monkeypatch):
    stale = Receiver(str(tmp_path / "stale"))
    stale.close()  # the path exists, nobody reads: ECONNREFUSED
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "stale"))
    assert systemd_glue.notify("READY=1") is False


def test_the_stdlib_sender_ignores_a_vsock_address(monkeypatch):
    monkeypatch.setattr(systemd_glue, "_load_daemon", lambda: None)
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd_glue.notify("READY=1") is False


# --- watchdog ----------------------------------------------------------------------------------

@pytest.mark.parametrize("usec, pid, expected", [
    ("30000000", None, 30.0),
    ("100000", "self", 0.1),
    ("30000000", "1", None),        # another process's watchdog
    ("30000000", "not-a-pid", None),
    ("0", None, None),
    ("-5", None, None),
    ("soon", None, None),
    (None, None, None),
])
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert systemd_glue.watchdog_interval() == expected


async def test_watchdog_loop_returns_at_once_without_a_watchdog():
    await asyncio.wait_for(systemd_glue.watchdog_loop(), timeout=0.5)


async def test_watchdog_loop_pings_every_half_interval(sender, path_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: a ping every 0.05 s
    task = asyncio.create_task(systemd_glue.watchdog_loop())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = path_socket.messages()
    assert set(pings) == {"WATCHDOG=1"}
    # 0.3 s / 0.05 s = 6 periods, plus the ping at start; slack for a loaded machine.
    assert 4 <= len(pings) <= 8


async def test_a_blocked_event_loop_stops_the_pings(path_socket, monkeypatch):
    monkeypatch.setattr(systemd_glue, "_load_daemon", lambda: None)
    arrivals: list[float] = []
    stop = threading.Event()

    def record() -> None:
        path_socket.sock.settimeout(0.02)
        while not stop.is_set():
            try:
                path_socket.sock.recv(64)
                arrivals.append(time.monotonic())
            except socket.timeout:
                pass

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    task = asyncio.create_task(systemd_glue.watchdog_loop(interval=0.1))
    await asyncio.sleep(0.15)
    blocked_at = time.monotonic()
    time.sleep(0.4)  # wedge the loop: no ping may arrive while it is blocked
    blocked_until = time.monotonic()
    await asyncio.sleep(0.15)
    task.cancel()
    stop.set()
    thread.join()
    during = [t for t in arrivals if blocked_at + 0.01 < t < blocked_until]
    after = [t for t in arrivals if t >= blocked_until]
    assert len([t for t in arrivals if t < blocked_at]) >= 2
    assert during == []
    assert after, "pings resume once the loop runs again"


# --- audit events in the journal ----------------------------------------------------------------

class Sent:
    """Records what JournalHandler would hand to sd_journal_send()."""

    def __init__(self):
        self.entries: list[dict] = []

    def __call__(self, MESSAGE, **fields):
        self.entries.append({"MESSAGE": MESSAGE, **fields})


class FakeJournalModule:
    """Stands in for systemd.journal: the real JournalHandler class, sending to a recorder."""

    def __init__(self):
        self.sent = Sent()
        self.JournalHandler = functools.partial(real_journal.JournalHandler, sender_function=self.sent)


@pytest.fixture
def journal_socket(tmp_path):
    path = tmp_path / "journal-socket"
    path.touch()
    return path


@pytest.fixture
def journal(journal_socket):
    if real_journal is None:
        pytest.skip("systemd-python not installed")
    module = FakeJournalModule()
    assert systemd_glue.setup_logging(journal_socket=journal_socket, journal=module) == "journal"
    return module.sent


def test_an_audit_event_carries_its_structured_fields(journal):
    audit.event("enroll-failed", "enrollment from 192.0.2.7:40100 failed: bad proof",
                peer="192.0.2.7:40100", outcome="bad_proof")
    (entry,) = journal.entries
    assert entry["FIRSTTRUST_EVENT"] == "enroll-failed"
    assert entry["MESSAGE_ID"] == audit.MESSAGE_IDS["enroll-failed"]
    assert entry["FIRSTTRUST_PEER"] == "192.0.2.7:40100"
    assert entry["FIRSTTRUST_OUTCOME"] == "bad_proof"
    assert entry["SYSLOG_IDENTIFIER"] == "firsttrust-agent"
    assert entry["PRIORITY"] == "4"  # an enrollment failure is a warning
    # The journal adds the identifier itself: no "firsttrust-agent: " prefix in MESSAGE.
    assert entry["MESSAGE"] == ("enrollment from 192.0.2.7:40100 failed: bad proof "
                                "[event=enroll-failed peer=192.0.2.7:40100 outcome=bad_proof]")


def test_every_field_becomes_a_firsttrust_field_and_none_is_left_out(journal):
    audit.event("provisioned", "provisioned from guestinfo (armed)", source="guestinfo", action="armed",
                pin="sha256:ab", peer=None)
    (entry,) = journal.entries
    assert entry["PRIORITY"] == "6"
    assert {k: v for k, v in entry.items() if k.startswith("FIRSTTRUST_")} == {
        "FIRSTTRUST_EVENT": "provisioned", "FIRSTTRUST_SOURCE": "guestinfo", "FIRSTTRUST_ACTION": "armed",
        "FIRSTTRUST_PIN": "sha256:ab"}


def test_the_message_id_is_the_same_for_every_occurrence_of_an_event(journal):
    audit.event("enroll-attempt", "one", peer="192.0.2.1:1")
    audit.event("enroll-attempt", "two", peer="192.0.2.2:2")
    audit.event("enrolled", "three", peer="192.0.2.2:2")
    ids = [entry["MESSAGE_ID"] for entry in journal.entries]
    assert ids[0] == ids[1] != ids[2]


def test_message_ids_are_pinned():
    # Operators filter and alert on these: changing one silently breaks them in the field.
    assert audit.MESSAGE_IDS == {
        "provisioned": "d239307abe9344cfafc3c2c249135cac",
        "enroll-attempt": "e9644ba42afb4a65b71e1f1865fa3686",
        "enroll-failed": "ea17a7ca10464565ae3c3d2404e0033d",
        "locked-out": "4f4f37c1f47f4e84bc3323d7bb7690c2",
        "enrolled": "77e7f7168897430ab5efa69b366b83eb",
        "key-authorized": "d5fc7f98a6a4432da7af6f7b18273bd0",
        "key-removed": "3325e06adfeb4472b2af74c4b9e2c120",
        "rotated": "a1066a6a271e46ca967b098106f2930a",
        "scrub-failed": "24f90ff41a5545ea9b6f8944c69f0c3e",
        "repaired": "3562f6f22a484540a6443dca12e430e2",
        "door-summary": "46af7ce5aa7b40ff843d582bfc348187",
    }
    assert set(audit.EVENTS) == set(audit.MESSAGE_IDS)
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in audit.MESSAGE_IDS.values())
    assert len(set(audit.MESSAGE_IDS.values())) == len(audit.MESSAGE_IDS)


def test_secret_looking_fields_are_redacted_in_the_journal(journal):
    audit.event("provisioned", "provisioned", sec_a="AAAA-SECRET-A", SEC_B="BBBB-SECRET-B",
                client_secret="CCCC", password="PPPP", sec_b_sha256="HHHH", source="iso")
    (entry,) = journal.entries
    text = repr(entry)
    for value in ("AAAA-SECRET-A", "BBBB-SECRET-B", "CCCC", "PPPP", "HHHH"):
        assert value not in text
    assert entry["FIRSTTRUST_SEC_A"] == entry["FIRSTTRUST_PASSWORD"] == audit.REDACTED
    assert entry["FIRSTTRUST_SOURCE"] == "iso"
    assert entry["MESSAGE"].count(audit.REDACTED) == 5


def test_journal_field_names_are_valid():
    assert audit.journal_field_name("peer") == "FIRSTTRUST_PEER"
    assert audit.journal_field_name("é-x") == "FIRSTTRUST___X"
    assert len(audit.journal_field_name("k" * 100)) == 64


def test_the_journal_is_used_only_when_its_socket_exists(tmp_path):
    if real_journal is None:
        pytest.skip("systemd-python not installed")
    module = FakeJournalModule()
    assert systemd_glue.setup_logging(journal_socket=tmp_path / "absent", journal=module) == "stderr"


def test_without_systemd_python_logging_goes_to_stderr(journal_socket):
    assert systemd_glue.setup_logging(journal_socket=journal_socket, journal=None) == "stderr"


def test_setup_logging_twice_leaves_one_handler_per_logger(journal_socket):
    systemd_glue.setup_logging(journal_socket=journal_socket, journal=None)
    systemd_glue.setup_logging(journal_socket=journal_socket, journal=None)
    for name in (systemd_glue.AGENT_LOGGER, systemd_glue.AUDIT_LOGGER):
        assert len([h for h in logging.getLogger(name).handlers if systemd_glue._is_ours(h)]) == 1


def test_audit_events_reach_the_journal_once(journal):
    audit.event("rotated", "rotated the appliance key", pin="sha256:cd")
    logging.getLogger("firsttrust.service").info("listening")
    assert [e["MESSAGE"] for e in journal.entries] == ["rotated the appliance key [event=rotated pin=sha256:cd]",
                                                       "listening"]


# --- audit events on stderr ---------------------------------------------------------------------

def test_without_handlers_an_event_is_one_stderr_line(capsys):
    audit.event("locked-out", "enrollment locked after 10 failures", outcome="locked_out", failures=10)
    assert capsys.readouterr().err == ("firsttrust-agent: enrollment locked after 10 failures "
                                       "[event=locked-out outcome=locked_out failures=10]\n")


def test_the_stderr_handler_prints_the_same_line(capsys, tmp_path):
    audit.event("key-removed", "removed requester key sha256:ef", pin="sha256:ef")
    printed = capsys.readouterr().err
    assert systemd_glue.setup_logging(journal_socket=tmp_path / "absent", journal=None) == "stderr"
    audit.event("key-removed", "removed requester key sha256:ef", pin="sha256:ef")
    assert capsys.readouterr().err == printed == \
        "firsttrust-agent: removed requester key sha256:ef [event=key-removed pin=sha256:ef]\n"


def test_stderr_lines_cannot_be_forged_with_a_newline(capsys, tmp_path):
    audit.event("enroll-failed", "bad name\nfirsttrust-agent: enrolled", peer="192.0.2.9:1\nx=y")
    systemd_glue.setup_logging(journal_socket=tmp_path / "absent", journal=None)
    logging.getLogger("firsttrust.service").warning("peer sent %r", "a\nb")
    logging.getLogger("firsttrust.service").warning("peer sent %s", "a\nb")
    err = capsys.readouterr().err
    assert err.count("\n") == 3
    assert "firsttrust-agent: warning: peer sent a\\nb\n" in err


def test_secret_looking_fields_are_redacted_on_stderr(capsys):
    audit.event("provisioned", "provisioned", sec_a="AAAA-SECRET-A", source="iso")
    assert capsys.readouterr().err == \
        "firsttrust-agent: provisioned [event=provisioned sec_a=<redacted> source=iso]\n"


def test_an_unknown_event_is_refused():
    with pytest.raises(ValueError):
        audit.event("made-up", "no")


def test_verbose_logs_debug_records(capsys, tmp_path):
    systemd_glue.setup_logging(verbose=True, journal_socket=tmp_path / "absent", journal=None)
    logging.getLogger("firsttrust.service").debug("detail")
    assert capsys.readouterr().err == "firsttrust-agent: detail\n"
    systemd_glue.setup_logging(verbose=False, journal_socket=tmp_path / "absent", journal=None)
    logging.getLogger("firsttrust.service").debug("detail")
    assert capsys.readouterr().err == ""


def test_the_journal_module_is_imported_only_when_journald_listens(tmp_path, journal_socket, monkeypatch):
    """systemd.journal (with uuid and platform, ~8 ms of the agent's start) is not imported when
    no journald socket exists to take the records."""
    loads = []
    monkeypatch.setattr(systemd_glue, "_load_journal", lambda: loads.append(1) or FakeJournalModule())
    assert systemd_glue.setup_logging(journal_socket=tmp_path / "absent") == "stderr"
    assert loads == []
    assert systemd_glue.setup_logging(journal_socket=journal_socket) == "journal"
    assert loads == [1]
