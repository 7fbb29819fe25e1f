"""The pinned API against a hostile authorized client, and the door's failure paths (a review
of agent/api.py, agent/apiguard.py and agent/apidoor.py):

1. malformed requests are counted per source in the door log, never logged one by one, never
   with a traceback;
2. an authenticated connection must send a whole request head within the deadline (a byte or a
   header line a second does not hold it), idle keep-alive ends, and authenticated connections
   are capped per source and in total (the descriptors agent/descriptors.py keeps for them);
3. a corrupt authorized.json is logged once per change, not once per connection;
4. two concurrent `open()` calls start the API once;
5. a failed start on a connection's cue is logged and the port keeps refusing, then retries.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_apidoor import closed_by_agent, idle_from, open_api, provisioned_store, requester_files

from firsttrust.agent.apidoor import ApiDoor, bind_api_socket
from firsttrust.agent.apiguard import ApiGuard
from firsttrust.agent.descriptors import Budget
from firsttrust.agent.doorlog import DoorLog
from firsttrust.requester.session import PinnedSession, pinned_ssl_context


def guard_with_log(timeout: float = 5.0, held: int = 64, held_per_source: int = 16):
    written: list[str] = []
    doorlog = DoorLog("api", interval=600.0, write=lambda name, message, **fields: written.append(message))
    guard = ApiGuard(Budget(1024, 64, 64, 16, 16, 0, held, held_per_source), timeout=timeout, doorlog=doorlog)
    return guard, written


def client_context(tmp_path, appliance_identity, requester_identity):
    key, cert = requester_files(tmp_path, requester_identity)
    return pinned_ssl_context(appliance_identity.cert_pem, key, cert)


async def pinned(port: int, context, source: str = "127.0.0.1"):
    return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="x",
                                         local_addr=(source, 0))


async def trickle_headers(reader, writer) -> bool:
    """Send one header line every 0.3 s for 6 s; True once the agent closed the connection."""
    for index in range(20):
        try:
            writer.write(b"X-%d: y\r\n" % index)
            await writer.drain()
        except (ConnectionError, OSError):
            return True
        if await closed_by_agent(reader, 0.3):
            return True
    return False


async def read_to_end(reader, timeout: float = 5.0) -> bytes:
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                return out
            out += chunk
    except (asyncio.TimeoutError, ConnectionError, OSError):
        return out


MALFORMED = [
    # a chunk size that is no number
    b"POST /v1/authorized-keys HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    # a header line that is no header
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    # a 100 kB header line
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"A" * 100_000 + b"\r\n\r\n",
]


async def test_malformed_requests_are_counted_per_source_and_never_logged_one_by_one(
        tmp_path, appliance_identity, requester_identity, caplog):
    caplog.set_level(logging.DEBUG)
    guard, written = guard_with_log()
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    try:
        for index in range(99):
            reader, writer = await pinned(door.port, context, "127.0.0.90")
            writer.write(MALFORMED[index % len(MALFORMED)])
            answer = await read_to_end(reader)
            assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")) or answer == b"", answer[:100]
            writer.close()
        await asyncio.sleep(0.2)
        guard.doorlog.flush()
    finally:
        await door.close()
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno >= logging.WARNING]
    assert "Error handling request" not in caplog.text and "AAAAAAAA" not in caplog.text
    summaries = [line for line in written if "127.0.0.90" in line]
    assert len(summaries) == 1 and "99 api_bad_request" in summaries[0], written
    assert len(written) <= 3


def test_library_records_reach_the_agents_handler_as_one_line_without_a_traceback(tmp_path, capsys):
    from firsttrust.agent import systemd_glue

    loggers = [logging.getLogger(name) for name in systemd_glue.LIBRARY_LOGGERS]
    saved = [list(logger.handlers) for logger in loggers]
    try:
        systemd_glue.setup_logging(journal_socket=tmp_path / "absent", journal=None)
        systemd_glue.setup_logging(journal_socket=tmp_path / "absent", journal=None)  # no second handler
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
            logging.getLogger("asyncio").error("Task exception", exc_info=True)
        lines = capsys.readouterr().err.splitlines()
    finally:
        for logger, handlers in zip(loggers, saved):
            logger.handlers[:] = handlers
    assert lines == ["firsttrust-agent: error: Error handling request: ValueError: bad\\nthing",
                     "firsttrust-agent: error: Task exception: ValueError: bad\\nthing"]


async def test_one_byte_and_then_nothing_is_cut_at_the_deadline(tmp_path, appliance_identity, requester_identity):
    guard, _ = guard_with_log(timeout=1.0)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    try:
        reader, writer = await pinned(door.port, context)
        started = asyncio.get_running_loop().time()
        writer.write(b"G")
        assert await closed_by_agent(reader, 5)
        assert asyncio.get_running_loop().time() - started < 2.5
        writer.close()
    finally:
        await door.close()


async def test_a_header_line_at_a_time_is_cut_at_the_deadline(tmp_path, appliance_identity, requester_identity):
    guard, _ = guard_with_log(timeout=1.0)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    try:
        reader, writer = await pinned(door.port, context)
        started = asyncio.get_running_loop().time()
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        closed = await trickle_headers(reader, writer)
        assert closed and asyncio.get_running_loop().time() - started < 2.5
        writer.close()
    finally:
        await door.close()


async def test_a_complete_request_meets_the_deadline_and_idle_keep_alive_ends(
        tmp_path, appliance_identity, requester_identity, monkeypatch):
    from firsttrust.agent import api

    monkeypatch.setattr(api, "API_KEEPALIVE_TIMEOUT", 2.0)
    guard, _ = guard_with_log(timeout=1.0)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    try:
        reader, writer = await pinned(door.port, context)
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert answer.startswith(b"HTTP/1.1 200")
        started = asyncio.get_running_loop().time()
        assert not await closed_by_agent(reader, 1.3)  # past the first-request deadline: kept
        assert await closed_by_agent(reader, 5)  # idle keep-alive: closed
        assert asyncio.get_running_loop().time() - started < 3.5
        writer.close()
    finally:
        await door.close()


async def test_a_slow_second_request_on_a_kept_connection_is_cut_at_the_keep_alive_timeout(
        tmp_path, appliance_identity, requester_identity, monkeypatch):
    from firsttrust.agent import api

    monkeypatch.setattr(api, "API_KEEPALIVE_TIMEOUT", 1.5)
    guard, _ = guard_with_log(timeout=1.0)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    try:
        reader, writer = await pinned(door.port, context)
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(4096), 5)).startswith(b"HTTP/1.1 200")
        started = asyncio.get_running_loop().time()
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        closed = await trickle_headers(reader, writer)
        assert closed and asyncio.get_running_loop().time() - started < 3.0
        writer.close()
    finally:
        await door.close()


async def test_a_body_trickled_a_byte_at_a_time_is_answered_408_at_the_deadline(
        tmp_path, appliance_identity, requester_identity):
    guard, _ = guard_with_log(timeout=1.0)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    reader, writer = await pinned(door.port, context)
    try:
        writer.write(b"POST /v1/authorized-keys HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
        started = asyncio.get_running_loop().time()
        answer = b""
        for _ in range(20):  # 6 s of one byte every 0.3 s
            try:
                writer.write(b" ")
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(4096), 0.3)
                break
            except asyncio.TimeoutError:
                continue
            except (ConnectionError, OSError):
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer[:60]
        assert b'"request_timeout"' in answer
        assert await closed_by_agent(reader, 2)
        assert asyncio.get_running_loop().time() - started < 2.5
    finally:
        writer.close()  # first: a handler still reading the body would hold door.close() for 60 s
        await door.close()


def test_the_keep_alive_timeout_is_seconds_not_minutes():
    from firsttrust.agent.api import API_KEEPALIVE_TIMEOUT

    assert 5.0 <= API_KEEPALIVE_TIMEOUT <= 30.0


async def test_authenticated_connections_are_capped_per_source_and_in_total(
        tmp_path, appliance_identity, requester_identity):
    guard, written = guard_with_log(held=3, held_per_source=2)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    try:
        first = [await pinned(door.port, context, "127.0.0.91") for _ in range(2)]
        await asyncio.sleep(0.1)
        assert guard.held == 2
        refused = await pinned(door.port, context, "127.0.0.91")  # N+1 from one source
        assert await closed_by_agent(refused[0], 2)
        other = await pinned(door.port, context, "127.0.0.92")  # another source: room in all
        assert not await closed_by_agent(other[0], 0.3)
        assert guard.held == 3
        beyond = await pinned(door.port, context, "127.0.0.93")  # the total is full
        assert await closed_by_agent(beyond[0], 2)
        for reader, _ in first:
            assert not await closed_by_agent(reader, 0.1)  # the holders were not evicted
        first[0][1].close()
        await asyncio.sleep(0.3)
        assert guard.held == 2
        again = await pinned(door.port, context, "127.0.0.91")  # room again
        again[1].write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(again[0].read(4096), 5)).startswith(b"HTTP/1.1 200")
        assert guard.refused == 2
        guard.doorlog.flush()
        assert any("127.0.0.91: 1 api_authenticated_full" in line for line in written), written
    finally:
        await door.close()


def test_the_authenticated_caps_are_the_descriptors_kept_for_them():
    from firsttrust.agent.descriptors import API_AUTHENTICATED_ROOM, budget

    caps = budget(1024)
    assert caps.api_authenticated == API_AUTHENTICATED_ROOM
    assert 1 <= caps.api_authenticated_per_source <= caps.api_authenticated
    assert ApiGuard(caps).caps.api_authenticated == API_AUTHENTICATED_ROOM


# --- the door (agent/apidoor.py) -------------------------------------------------------------------


async def test_a_corrupt_authorized_file_is_logged_once_per_change_without_a_traceback(
        tmp_path, appliance_identity, caplog):
    caplog.set_level(logging.DEBUG, logger="firsttrust")
    store = provisioned_store(tmp_path, appliance_identity)
    door = ApiDoor(store, bind_api_socket("127.0.0.1", 0))
    await door.start()
    try:
        store.authorized_path.write_text('{"keys": 1}')
        for _ in range(10):
            reader, writer = await idle_from(door.port, "127.0.0.1")
            assert await closed_by_agent(reader, 2)
            writer.close()
        store.authorized_path.write_text('{"keys": "changed"}')
        for _ in range(5):
            reader, writer = await idle_from(door.port, "127.0.0.1")
            assert await closed_by_agent(reader, 2)
            writer.close()
    finally:
        await door.close()
    lines = [r for r in caplog.records if "authorized keys" in r.getMessage()]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    assert not [r for r in caplog.records if r.exc_info]
    assert "Traceback" not in caplog.text


async def test_open_twice_at_once_starts_the_api_once(tmp_path, appliance_identity, requester_identity, monkeypatch):
    """A connection after enrollment's commit and before its on_enrolled starts the API; then
    on_enrolled calls open() while that start is still under way."""
    from firsttrust.agent import api

    starts = []
    real = api.start_api

    async def counting(*args, **kwargs):
        starts.append(1)
        await asyncio.sleep(0.1)  # a start takes a while: imports, contexts
        return await real(*args, **kwargs)

    monkeypatch.setattr(api, "start_api", counting)
    store = provisioned_store(tmp_path, appliance_identity)
    door = ApiDoor(store, bind_api_socket("127.0.0.1", 0))
    await door.start()
    key, cert = requester_files(tmp_path, requester_identity)
    try:
        store.authorize(requester_identity.cert_pem, name="r", source="enrollment")  # committed
        _, early = await asyncio.open_connection("127.0.0.1", door.port)
        for _ in range(100):  # the connection's knock starts the API
            if door._opening is not None:
                break
            await asyncio.sleep(0.01)
        await door.open()  # on_enrolled
        assert len(starts) == 1
        async with PinnedSession("127.0.0.1", door.port, appliance_identity.cert_pem, key, cert) as session:
            assert (await session.get("/v1/health"))["status"] == "ok"
        early.close()
    finally:
        await door.close()


async def test_a_failed_start_on_a_connection_is_logged_and_retried_later(
        tmp_path, appliance_identity, requester_identity, monkeypatch, caplog):
    from firsttrust.agent import api, apidoor

    caplog.set_level(logging.DEBUG, logger="firsttrust")
    monkeypatch.setattr(apidoor, "API_OPEN_RETRY", 0.5)
    real = api.start_api
    failures = [OSError("no room"), OSError("no room")]

    async def failing(*args, **kwargs):
        if failures:
            raise failures.pop()
        return await real(*args, **kwargs)

    monkeypatch.setattr(api, "start_api", failing)
    store = provisioned_store(tmp_path, appliance_identity)
    door = ApiDoor(store, bind_api_socket("127.0.0.1", 0))
    await door.start()
    key, cert = requester_files(tmp_path, requester_identity)
    try:
        store.authorize(requester_identity.cert_pem, name="r", source="enrollment")
        reader, writer = await idle_from(door.port, "127.0.0.1")
        assert await closed_by_agent(reader, 2)  # not left in the accept queue: refused
        writer.close()
        for _ in range(3):  # within the retry interval: refused at once, no new attempt
            reader, writer = await idle_from(door.port, "127.0.0.1")
            assert await closed_by_agent(reader, 2)
            writer.close()
        assert len(failures) == 1
        await asyncio.sleep(0.6)
        reader, writer = await idle_from(door.port, "127.0.0.1")  # fails again: the same line, not repeated
        assert await closed_by_agent(reader, 2)
        writer.close()
        assert not failures
        await asyncio.sleep(0.6)
        async with PinnedSession("127.0.0.1", door.port, appliance_identity.cert_pem, key, cert) as session:
            assert (await session.get("/v1/health"))["status"] == "ok"
    finally:
        await door.close()
    lines = [r for r in caplog.records if "could not start" in r.getMessage()]
    assert len(lines) == 1 and "OSError: no room" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


def _non_ascii_sni_hello() -> bytes:
    """A TLS 1.3 ClientHello whose server name is not ASCII, as `openssl s_client` sends it
    (Python's own client refuses to make one)."""
    import socket
    import subprocess

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{listener.getsockname()[1]}",
                                   "-tls1_3", "-servername", "\u00e9" * 20], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                return conn.recv(65536)
        finally:
            client.kill()
            client.wait()


async def test_a_flood_of_hellos_whose_server_name_python_cannot_decode_writes_no_traceback(
        tmp_path, requester_identity):
    """CPython fails to decode a non-ASCII SNI before the agent's callback runs and printed a
    five-line traceback per connection to the journal (26,305 in 10 s from one client without a
    certificate, in the review): the serving agent counts them, one line at most."""
    from agent_fixture import provisioned
    from test_serve import Serve

    hello = _non_ascii_sni_hello()
    assert hello[:1] == b"\x16"
    app = provisioned(tmp_path / "app")
    app.store.authorize(requester_identity.cert_pem, name="enrolled", source="enrollment")
    serve = Serve(app.store.path)
    await serve.ready()
    try:
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", serve.api_port)
            writer.write(hello)
            await read_to_end(reader, 2.0)
            writer.close()
    finally:
        log = serve.stop()
    assert "Traceback" not in log and "Exception ignored" not in log
    assert len([line for line in log.splitlines() if "UnicodeDecodeError" in line or "UnicodeError" in line]) <= 1


async def test_a_connection_refused_for_its_sources_share_gives_its_descriptor_back_at_once(
        tmp_path, appliance_identity, requester_identity):
    """close() on a refused TLS connection waited up to 30 s for the peer's close_notify, counted
    nowhere: 600 connections from one address held 607 descriptors for 30 s in the review."""
    import os

    guard, _ = guard_with_log(held=64, held_per_source=2)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    opened = []
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(40):  # none of them ever reads the agent's close_notify, or answers it
            reader, writer = await pinned(door.port, context, "127.0.0.91")
            writer.transport.pause_reading()
            opened.append((reader, writer))
        await asyncio.sleep(1.0)
        held = len(os.listdir("/proc/self/fd")) - before - len(opened)  # the agent's side of them
    finally:
        for _, writer in opened:
            writer.transport.abort()
        await door.close()
    assert held <= 2 + 4, f"the agent still holds {held} descriptors of 40 connections refused for their share"


async def test_requests_pipelined_and_never_read_or_one_endless_head_cut_the_connection(
        tmp_path, appliance_identity, requester_identity):
    """aiohttp 3.8.4 buffers every pipelined request and every header line: 2.5 GB in 20 s."""
    from firsttrust.agent.apiguard import MAX_UNANSWERED

    guard, written = guard_with_log()
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    try:
        for burst in (b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n" * 10_000,
                      b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"a: b\r\n" * 100_000):
            assert len(burst) > MAX_UNANSWERED
            reader, writer = await pinned(door.port, context, "127.0.0.92")
            try:
                writer.write(burst)
                await asyncio.wait_for(writer.drain(), 10)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass
            assert await closed_by_agent_soon(reader), "the connection was not cut"
            writer.transport.abort()
        guard.doorlog.flush()
    finally:
        await door.close()
    assert any("api_flood" in line for line in written), written


async def closed_by_agent_soon(reader, timeout: float = 10.0) -> bool:
    """True once the agent closed: whatever answers came first are read and dropped."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False


async def test_a_peer_that_never_reads_its_answers_is_cut_after_the_write_timeout(
        tmp_path, appliance_identity, requester_identity):
    guard, written = guard_with_log()
    guard.write_timeout = 1.0
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    context = client_context(tmp_path, appliance_identity, requester_identity)
    try:
        reader, writer = await pinned(door.port, context, "127.0.0.93")
        writer.transport.pause_reading()  # reads nothing: the agent's answers fill the buffers
        request = b"GET /v1/identity HTTP/1.1\r\nHost: x\r\n\r\n"
        started = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - started < 20 and not writer.transport.is_closing():
            try:
                for _ in range(50):
                    writer.write(request)
                await asyncio.wait_for(writer.drain(), 1.0)
            except (ConnectionError, OSError):
                break
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.05)
            guard.doorlog.flush()
            if any("api_not_reading" in line for line in written):
                break
        guard.doorlog.flush()
        writer.transport.abort()
    finally:
        await door.close()
    assert any("api_not_reading" in line for line in written), written


async def test_a_compressed_body_is_refused_typed_never_inflated_and_a_bad_certificate_string_is_a_400(
        tmp_path, appliance_identity, requester_identity, caplog):
    import gzip
    import json

    door = await open_api(tmp_path, appliance_identity, requester_identity, guard_with_log()[0])
    context = client_context(tmp_path, appliance_identity, requester_identity)
    answers = []
    try:
        bomb = gzip.compress(b"{" + b" " * 20_000_000 + b"}")
        surrogate = json.dumps({"certificate": "\ud800", "name": "requester-2"}).encode()
        for headers, body in ((b"Content-Encoding: gzip\r\n", bomb), (b"", surrogate)):
            reader, writer = await pinned(door.port, context, "127.0.0.94")
            writer.write(b"POST /v1/authorized-keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answers.append(await read_to_end(reader))
            writer.close()
    finally:
        await door.close()
    assert answers[0].startswith(b"HTTP/1.1 415") and b"unsupported_encoding" in answers[0], answers[0][:200]
    assert answers[1].startswith(b"HTTP/1.1 400") and b"invalid_field" in answers[1] and b"ASCII" in answers[1], \
        answers[1][:300]
    assert "Traceback" not in caplog.text


async def test_the_spare_descriptor_is_taken_at_start_not_at_the_first_exhaustion(tmp_path):
    """Taken lazily, at the first EMFILE, when no descriptor was left to take: the accept was
    never shed and the event loop spun at 98 % CPU on a readable listener (review)."""
    import subprocess
    import sys

    from agent_fixture import provisioned
    from test_serve import ROOT, free_port

    probe = tmp_path / "spare"
    wrapper = (
        "import sys, threading, time\n"
        "import firsttrust.agent.descriptors as d\n"
        "def probe():\n"
        "    time.sleep(2.5)\n"
        "    open(sys.argv[1], 'w').write(str(d._SPARE is not None and d._SPARE.fd is not None))\n"
        "threading.Thread(target=probe, daemon=True).start()\n"
        "from firsttrust.agent.cli import main\n"
        "sys.exit(main(sys.argv[2:]))\n")
    app = provisioned(tmp_path / "app")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, str(probe), "serve", "--state-dir", str(app.store.path),
                             "--listen", f"127.0.0.1:{free_port()}", "--api-listen", f"127.0.0.1:{free_port()}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if probe.exists() and probe.read_text():
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    assert probe.read_text() == "True"
