"""The front door under a flood, and the requester's retries, over loopback.

The flood here is the benchmark's (bench/flood.py) made small: 200 hostile connections over 20
source addresses (127.0.0.2 ... 127.0.0.21), a third each idle, garbage and slowloris (a hello
at one byte per second), each reopened when the agent closes it. It runs in this process's
event loop, next to an in-process agent; the assertions are about correctness only (the
benchmark measures the cost).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_fixture import provisioned
from firsttrust.agent.server import EnrollmentGate, EnrollmentServer, start_enrollment_server
from firsttrust.framing import FrameDecoder, encode_frame
from firsttrust.requester.library import enroll_appliance
from firsttrust.requester.retry import DeadlineExceeded
from firsttrust.requester.truststore import TrustStore

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = 200
SOURCES = 20


def slow_hello(rng: random.Random) -> bytes:
    return encode_frame("hello", {"A": base64.b64encode(rng.randbytes(384)).decode()})


async def hostile(index: int, port: int, stop: asyncio.Event, counts: dict) -> None:
    kind = ("idle", "garbage", "slowloris")[index % 3]
    rng = random.Random(index)
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sock = socket.socket()
        sock.setblocking(False)
        writer = None
        try:
            sock.bind((f"127.0.0.{2 + index % SOURCES}", 0))
            await loop.sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
            counts["opened"] += 1
            if kind == "garbage":
                writer.write(rng.choice([b"\xff\xff\xff\xff", b"\x16\x03\x01\x02\x00" + bytes(100),
                                         rng.randbytes(300)]))
            payload = slow_hello(rng) if kind == "slowloris" else b""
            for byte in payload or [None]:
                if byte is not None:
                    writer.write(bytes([byte]))
                read = asyncio.ensure_future(reader.read(4096))
                done, _ = await asyncio.wait({read, asyncio.ensure_future(stop.wait())}, timeout=1.0,
                                             return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    if stop.is_set():
                        break
                    if kind != "slowloris":
                        while not stop.is_set() and not (read.done() and not read.cancelled()):
                            read = asyncio.ensure_future(reader.read(4096))
                            done, _ = await asyncio.wait({read}, timeout=0.5)
                            if read in done and not read.result():
                                break
                        break
                    continue
                if not read.result():
                    break
                while await reader.read(4096):  # an error frame, then EOF
                    pass
                break
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def flood(port: int):
    stop = asyncio.Event()
    counts = {"opened": 0}
    tasks = [asyncio.create_task(hostile(i, port, stop, counts)) for i in range(HOSTILE)]
    try:
        deadline = time.monotonic() + 20
        while counts["opened"] < HOSTILE and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert counts["opened"] >= HOSTILE, "the flood did not get going"
        yield counts
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


async def test_a_legitimate_enrollment_succeeds_during_a_flood(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    app = provisioned(tmp_path)
    await app.start(first_frame_timeout=1.0)
    store = TrustStore(tmp_path / "home")
    try:
        async with flood(app.port) as counts:
            await asyncio.sleep(1.5)  # past the first-frame deadline: idle ones evicted, reopened
            waits = []
            record = await enroll_appliance(f"127.0.0.1:{app.port}", app.secrets, name="legit", store=store,
                                            deadline=30, on_wait=waits.append)
            assert record.pin == app.store.load_identity().pin
            assert waits == [], "the requester had to wait: the flood held the door"
            opened_during = counts["opened"]
        assert opened_during > HOSTILE, "no hostile connection was ever closed and reopened"
        state = app.store.load()
        assert state.phase == "enrolled" and state.failures == 0
        # Exactly one requester authorized: the legitimate one; nothing from the garbage.
        assert [entry.get("name") for entry in app.store.authorized()] == ["legit"]
        for _ in range(100):
            if app.server.unauthenticated == 0:
                break
            await asyncio.sleep(0.05)
        assert app.server.unauthenticated == 0 and not app.server._pending, "a slot leaked"
    finally:
        await app.stop()


async def test_every_slot_is_released_after_a_flood_of_each_kind(tmp_path):
    app = provisioned(tmp_path)
    await app.start(first_frame_timeout=0.5, max_unauthenticated=16, per_source_max=4)
    try:
        peak = 0
        async with flood(app.port):
            for _ in range(100):
                peak = max(peak, app.server.unauthenticated)
                await asyncio.sleep(0.01)
            assert app.server.door.evictions > 0  # the table was full and made room
            assert app.server.door.penalty_refusals > 0  # then the flood's sources sat out penalties
        assert peak <= 16  # never more than the table
        for _ in range(100):
            if app.server.unauthenticated == 0:
                break
            await asyncio.sleep(0.05)
        assert app.server.unauthenticated == 0 and not app.server._pending
        assert app.store.load().failures == 0 and app.store.load().phase == "provisioned"
    finally:
        await app.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_requester_retries_a_refused_port_until_the_agent_listens(tmp_path):
    app = provisioned(tmp_path)
    port = free_port()
    store = TrustStore(tmp_path / "home")
    waits = []
    listener = None

    async def start_late():
        nonlocal listener
        await asyncio.sleep(1.0)
        gate = EnrollmentGate(app.config, app.store, backoff_base=0.0)
        server = EnrollmentServer(gate, api_port=8791, host_key_glob=str(app.store.path / "no-host-keys-*"))
        listener = await start_enrollment_server(server, "127.0.0.1", port)

    try:
        started = time.monotonic()
        late = asyncio.create_task(start_late())
        record = await enroll_appliance(f"127.0.0.1:{port}", app.secrets, name="patient", store=store,
                                        deadline=20, on_wait=waits.append)
        await late
        assert record.pin == app.store.load_identity().pin
        assert time.monotonic() - started >= 1.0
        assert [w.reason for w in waits] == ["refused"]  # one notice, however many retries
    finally:
        if listener is not None:
            listener.close()


async def test_requester_gives_up_at_its_deadline(tmp_path):
    port = free_port()
    app = provisioned(tmp_path)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        await enroll_appliance(f"127.0.0.1:{port}", app.secrets, name="x", store=TrustStore(tmp_path / "home"),
                               deadline=1.5)
    assert 1.4 <= time.monotonic() - started < 4
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_cli_deadline_exits_with_one_clear_line(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "FIRSTTRUST_HOME": str(home)}
    secrets = tmp_path / "s.json"
    subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", "secrets", "new", "--out", str(secrets)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    port = free_port()

    def enroll(deadline: str):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", "enroll", f"127.0.0.1:{port}",
                               "--secrets", str(secrets), "--name", "x", "--deadline", deadline],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        return proc, time.monotonic() - started

    # Deadline 0: one attempt, no wait; what remains is the interpreter's start (slow on a busy machine).
    alone, start_cost = enroll("0")
    assert alone.returncode == 1 and len(alone.stderr.strip().splitlines()) == 1, alone.stderr
    proc, elapsed = enroll("2")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    # It waited the deadline out, and not much more (the start-up cost varies from run to run on a busy machine).
    assert 2 <= elapsed < 2 * start_cost + 4, (start_cost, elapsed)
    assert len(lines) == 2, lines  # one notice when the wait starts, one error at the end
    assert lines[0].startswith(f"firsttrust: 127.0.0.1:{port} refuses connections (still booting?); retrying until ")
    assert lines[1].startswith(f"firsttrust: error: 127.0.0.1:{port}: gave up after 2 s (deadline 2 s)")


async def _answer_to(port: int, source: str, data: bytes):
    """Connect from `source`, send `data`, return the first frame the agent answers (or None)."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(data)
        decoder = FrameDecoder()
        async with asyncio.timeout(5):
            while (frame := decoder.next_frame()) is None:
                chunk = await reader.read(4096)
                if not chunk:
                    return None
                decoder.feed(chunk)
        return frame
    finally:
        writer.close()


async def test_a_source_that_keeps_sending_garbage_is_refused_at_accept_while_others_enroll(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    app = provisioned(tmp_path)
    await app.start()
    try:
        answers = [await _answer_to(app.port, "127.0.0.9", b"\xff\xff\xff\xff") for _ in range(4)]
        codes = [frame.fields["code"] for frame in answers]
        assert codes == ["frame_too_large"] * 3 + ["busy"], codes  # 3 x 5 s reaches the 15 s minimum
        refused = answers[-1].fields
        assert 10 <= refused["retry_after"] <= 15 and "refused for" in refused["message"]
        # Refused at accept: even a valid hello from that address now gets `busy`, and no slot.
        assert (await _answer_to(app.port, "127.0.0.9", slow_hello(random.Random(1)))).fields["code"] == "busy"
        assert app.server.door.penalty_refusals == 2 and app.connections_started == 0
        # Another address is not affected.
        store = TrustStore(tmp_path / "home")
        waits = []
        record = await enroll_appliance(f"127.0.0.1:{app.port}", app.secrets, name="legit", store=store,
                                        deadline=30, on_wait=waits.append)
        assert record.pin == app.store.load_identity().pin and waits == []
    finally:
        await app.stop()
