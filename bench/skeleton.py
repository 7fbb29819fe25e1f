"""The enrollment's shape with nothing in it: what the transport alone adds to the floor.

One run is the protocol's message flow (docs/protocol.md section 1.5) between an asyncio server
and client over 127.0.0.1, with payloads of the real frames' sizes:

    hello ->, <- challenge, client_proof ->, <- server_proof, STARTTLS,
    <- appliance_proof, finish ->, <- enrolled

The SRP computations run where the enrollment runs them (firsttrust.srp6a, as the floor), the
TLS upgrade uses contexts built once with firsttrust's policy (as the floor), frames are a 4-byte
length and compact JSON read with StreamReader.readexactly. Nothing else: no state, no
validation, no key schedule, no audit.

With `durable=True` each side also makes the transaction's durable writes where firsttrust makes
them, with firsttrust.common.files.write_atomic and files of the real sizes. The appliance:
the failure charge on an executor thread while the proof is checked, awaited before
server_proof; the commit and the authorization (its directory not fsync'ed) on one executor call
after finish. The requester (`shape_batch` only): the pending record before finish and the
appliance's record after enrolled, each on a thread, as requester/library.py writes them.

Two ways to run it:

- `shape_runner(durable)`: both sides in this process, one enrollment's shape per call, wall
  time (bench/run.py measures it in turns with the floor and one enrollment).
  shape/floor is the lowest `enrollment/floor` that asyncio streams and this message flow (and
  with `durable`, a transaction on this disk) allow, whatever firsttrust's own code does.
- `shape_batch(count, concurrency, durable)`: the appliance side in a child process
  (`python -m bench.skeleton serve DIR DURABLE`, one event loop, one state directory with a
  provisioned-size state.json per connection, as the batch's appliance host has), the requester
  side here with `concurrency` enrollments in flight, CPU time of each process. Each side's CPU per
  enrollment over its half of the floor is the lowest `requester/floor` and `appliance/floor`
  that the transport (and the durable writes) allow, measured the way the batch measures them.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from base64 import b64decode, b64encode
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, NamedTuple

from firsttrust.common.files import write_atomic
from firsttrust.srp6a import EPHEMERAL_BYTES, SRPClient, SRPServer, new_verifier_record
from firsttrust.tlspolicy import apply_policy

from .floor import policy_contexts
from .measure import WARMUP, Runner, Stopwatch, process_cpu

_PASSWORD = b"bench-password-0123456789"
_STATE_BYTES = 1400  # state.json after provisioning
_AUTHORIZED_BYTES = 870
_RECORD_BYTES = 1500  # the requester's pending record and appliance record
_ROOT = Path(__file__).resolve().parent.parent
_SERVE_TIMEOUT = 30.0


def _frame(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    return struct.pack(">I", len(body)) + body


async def _read(reader: asyncio.StreamReader) -> dict:
    length = struct.unpack(">I", await reader.readexactly(4))[0]
    return json.loads(await reader.readexactly(length))


def _b64(data: bytes) -> str:
    return b64encode(data).decode("ascii")


def _filler(size: int) -> str:
    return _b64(os.urandom(size))


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _appliance(server_context: ssl.SSLContext, durable: bool, state_dir: Callable[[], Path]) -> Handler:
    """The appliance's half of one enrollment per connection; `state_dir()` names the directory
    whose state.json (and authorized.json) this connection's durable writes replace."""
    salt, verifier = new_verifier_record(_PASSWORD)

    def charge(directory: Path) -> None:
        write_atomic(directory / "state.json", b"c" * _STATE_BYTES)

    def commit_and_authorize(directory: Path) -> None:
        write_atomic(directory / "state.json", b"e" * _STATE_BYTES)
        write_atomic(directory / "authorized.json", b"a" * _AUTHORIZED_BYTES, sync_directory=False)

    async def appliance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        directory = state_dir()
        hello = await _read(reader)
        server = SRPServer(salt, verifier, b64decode(hello["A"]), os.urandom(EPHEMERAL_BYTES))
        writer.write(_frame({"type": "challenge", "salt": _b64(server.salt), "B": _b64(server.B),
                             "nonce": _filler(32), "version": 1}))
        proof = await _read(reader)
        charged = loop.run_in_executor(None, charge, directory) if durable else None
        M2 = server.verify(b64decode(proof["M1"]))
        if charged is not None:
            await charged
        writer.write(_frame({"type": "server_proof", "M2": _b64(M2), "commitment": _filler(32)}))
        await writer.drain()
        await writer.start_tls(server_context)
        writer.write(_frame({"type": "appliance_proof", "proof": _filler(64), "api_port": 8443}))
        await _read(reader)
        if durable:
            await loop.run_in_executor(None, commit_and_authorize, directory)
        writer.write(_frame({"type": "enrolled", "ssh_host_keys": [], "proof": _filler(64)}))
        await writer.drain()
        writer.close()

    return appliance


async def _requester(port: int, client_context: ssl.SSLContext, records: Path | None, index: int) -> None:
    """The requester's half of one enrollment; with `records`, its two durable writes there."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = SRPClient(_PASSWORD, os.urandom(EPHEMERAL_BYTES))
    writer.write(_frame({"type": "hello", "version": 1, "A": _b64(client.A), "nonce": _filler(32),
                         "name": "bench-skeleton"}))
    challenge = await _read(reader)
    M1 = client.process_challenge(b64decode(challenge["salt"]), b64decode(challenge["B"]))
    writer.write(_frame({"type": "client_proof", "M1": _b64(M1), "commitment": _filler(32),
                         "certificate": _filler(440)}))
    client.verify(b64decode((await _read(reader))["M2"]))
    await writer.start_tls(client_context)
    await _read(reader)
    if records is not None:
        await asyncio.to_thread(write_atomic, records / f"pending-{index}.json", b"p" * _RECORD_BYTES)
    writer.write(_frame({"type": "finish", "proof": _filler(64), "name": "bench-skeleton"}))
    await _read(reader)
    if records is not None:
        await asyncio.to_thread(write_atomic, records / f"appliance-{index}.json", b"r" * _RECORD_BYTES)
    writer.close()
    await writer.wait_closed()


@contextlib.asynccontextmanager
async def shape_runner(durable: bool = False) -> AsyncIterator[Runner]:
    """Both sides in this event loop, one enrollment's shape per call (the agent's durable
    writes with `durable`), timed from the connect until the appliance's handler is done."""
    with tempfile.TemporaryDirectory(prefix="bench-skeleton-") as tmp:
        state_dir = Path(tmp)
        server_context, client_context = policy_contexts(state_dir)
        loop = asyncio.get_running_loop()
        finished: asyncio.Future = loop.create_future()
        handler = _appliance(server_context, durable, lambda: state_dir)

        async def appliance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await handler(reader, writer)
            finished.set_result(None)

        async def once(index: int) -> Stopwatch:
            nonlocal finished
            finished = loop.create_future()
            with Stopwatch() as sw:
                await _requester(port, client_context, None, index)
                await finished
            return sw

        async with await asyncio.start_server(appliance, "127.0.0.1", 0) as server:  # closed on the way out
            port = server.sockets[0].getsockname()[1]
            yield once


# -- the shape as a batch: each side's CPU --------------------------------------------------------

class ShapeBatch(NamedTuple):
    count: int
    wall: float
    requester_cpu: float  # seconds per enrollment
    appliance_cpu: float


def _contexts(directory: Path, own: str, peer: str, server: bool) -> ssl.SSLContext:
    """One side's context from the files policy_contexts wrote (the other process's view)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(directory / f"{own}.crt", directory / f"{own}.key")
    apply_policy(context, [ssl.PEM_cert_to_DER_cert((directory / f"{peer}.crt").read_text())])
    return context


async def _serve(directory: Path, durable: bool, count: int, profile: Path | None = None) -> None:
    """The child: `count` provisioned-size state dirs, one per connection in order, served until
    stdin closes. Prints the port once listening. With `profile`, the serving runs under
    cProfile (the event loop's thread, as bench.appliance_host) and the stats go there."""
    states = []
    for i in range(count):
        state = directory / "appliances" / str(i)
        state.mkdir(parents=True)
        write_atomic(state / "state.json", b"p" * _STATE_BYTES)
        states.append(state)
    next_state = iter(states)
    handler = _appliance(_contexts(directory, "appliance", "requester", True), durable, lambda: next(next_state))
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    profiler = cProfile.Profile(time.thread_time) if profile else None
    if profiler:
        profiler.enable()
    await stdin.read()
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    server.close()


async def _enroll_shapes(port: int, directory: Path, durable: bool, first: int, count: int,
                         concurrency: int) -> None:
    client_context = _contexts(directory, "requester", "appliance", False)
    records = directory / "requester" if durable else None
    if records is not None:
        records.mkdir(exist_ok=True)
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with slots:
            await asyncio.wait_for(_requester(port, client_context, records, index), _SERVE_TIMEOUT)

    await asyncio.gather(*(one(first + i) for i in range(count)))


def shape_batch(count: int, concurrency: int, durable: bool = False, profile_dir: Path | None = None) -> ShapeBatch:
    """`count` shape enrollments, `concurrency` in flight, against an appliance process; CPU
    per enrollment of this process (the requester) and of the child (the appliance). With
    `profile_dir`, both sides run under cProfile (shape-requester.prof: the timed window;
    shape-appliances.prof: the child's serving, warm-up included)."""
    warmup = min(WARMUP * 4, count)
    profiler: cProfile.Profile | None = None
    with tempfile.TemporaryDirectory(prefix="bench-shape-") as tmp:
        directory = Path(tmp)
        policy_contexts(directory)
        argv = [sys.executable, "-m", "bench.skeleton", "serve", tmp, "1" if durable else "0", str(warmup + count)]
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
            argv.append(str(profile_dir.resolve() / "shape-appliances.prof"))
        child = subprocess.Popen(argv, cwd=_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"bench.skeleton serve exited with {child.wait()} before listening")
            port = int(line)
            asyncio.run(_enroll_shapes(port, directory, durable, 0, warmup, concurrency))
            appliance_before, requester_before = process_cpu(child.pid), time.process_time()
            if profile_dir:
                profiler = cProfile.Profile(time.thread_time)
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            asyncio.run(_enroll_shapes(port, directory, durable, warmup, count, concurrency))
            if profiler:
                profiler.disable()
            wall = time.perf_counter() - started
            requester, appliance = time.process_time() - requester_before, process_cpu(child.pid) - appliance_before
        finally:
            child.stdin.close()
            child.wait(_SERVE_TIMEOUT)
    if profiler:
        profiler.dump_stats(profile_dir / "shape-requester.prof")
    return ShapeBatch(count, wall, requester / count, appliance / count)


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"] or len(sys.argv) not in (5, 6):
        sys.exit("usage: python -m bench.skeleton serve DIR DURABLE(0|1) COUNT [PROFILE_FILE]")
    asyncio.run(_serve(Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]),
                       Path(sys.argv[5]) if len(sys.argv) == 6 else None))
