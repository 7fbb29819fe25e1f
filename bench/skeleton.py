"""The enrollment's shape with nothing in it: what the transport alone adds to the floor.

One run is the protocol's message flow (docs/protocol.md section 1.5) between an asyncio server
and client in this process over 127.0.0.1, with payloads of the real frames' sizes:

    hello ->, <- challenge, client_proof ->, <- server_proof, STARTTLS,
    <- appliance_proof, finish ->, <- enrolled

The SRP computations run where the enrollment runs them (firsttrust.srp6a, as the floor), the
TLS upgrade uses contexts built once with firsttrust's policy (as the floor), frames are a 4-byte
length and compact JSON read with StreamReader.readexactly. Nothing else: no state, no
validation, no key schedule, no audit. So skeleton/floor is the lowest `enrollment/floor` that
asyncio streams and this message flow allow, whatever firsttrust's own code does.

With `durable=True` the appliance side also makes the transaction's durable writes where the
agent makes them (firsttrust.agent.atomicfile.write_atomic, state.json-sized): the failure charge
on an executor thread while the proof is checked, awaited before server_proof; the commit and
the authorization (its directory not fsync'ed) on one executor call after finish. That is the
lowest ratio an enrollment that is a transaction can reach on this machine's disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import tempfile
from base64 import b64decode, b64encode
from pathlib import Path

from firsttrust.agent.atomicfile import write_atomic
from firsttrust.srp6a import EPHEMERAL_BYTES, SRPClient, SRPServer, new_verifier_record

from .floor import WARMUP, policy_contexts
from .measure import Sample, Stopwatch, Timings

_PASSWORD = b"bench-password-0123456789"
_STATE_BYTES = 1400  # state.json after provisioning
_AUTHORIZED_BYTES = 870


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


async def _measure(runs: int, durable: bool, state_dir: Path) -> Sample:
    salt, verifier = new_verifier_record(_PASSWORD)
    server_context, client_context = policy_contexts(state_dir)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future = loop.create_future()

    def charge() -> None:
        write_atomic(state_dir / "state.json", b"c" * _STATE_BYTES)

    def commit_and_authorize() -> None:
        write_atomic(state_dir / "state.json", b"e" * _STATE_BYTES)
        write_atomic(state_dir / "authorized.json", b"a" * _AUTHORIZED_BYTES, sync_directory=False)

    async def appliance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await _read(reader)
        server = SRPServer(salt, verifier, b64decode(hello["A"]), os.urandom(EPHEMERAL_BYTES))
        writer.write(_frame({"type": "challenge", "salt": _b64(server.salt), "B": _b64(server.B),
                             "nonce": _filler(32), "version": 1}))
        proof = await _read(reader)
        charged = loop.run_in_executor(None, charge) if durable else None
        M2 = server.verify(b64decode(proof["M1"]))
        if charged is not None:
            await charged
        writer.write(_frame({"type": "server_proof", "M2": _b64(M2), "commitment": _filler(32)}))
        await writer.drain()
        await writer.start_tls(server_context)
        writer.write(_frame({"type": "appliance_proof", "proof": _filler(64), "api_port": 8443}))
        await _read(reader)
        if durable:
            await loop.run_in_executor(None, commit_and_authorize)
        writer.write(_frame({"type": "enrolled", "ssh_host_keys": [], "proof": _filler(64)}))
        await writer.drain()
        writer.close()
        finished.set_result(None)

    server = await asyncio.start_server(appliance, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timings = Timings(WARMUP)
    try:
        for i in range(WARMUP + runs):
            finished = loop.create_future()
            with Stopwatch() as sw:
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
                writer.write(_frame({"type": "finish", "proof": _filler(64), "name": "bench-skeleton"}))
                await _read(reader)
                writer.close()
                await writer.wait_closed()
                await finished
            timings.add(i, sw)
    finally:
        server.close()
        await server.wait_closed()
    return timings.sample()


def skeleton(runs: int, durable: bool = False) -> Sample:
    with tempfile.TemporaryDirectory(prefix="bench-skeleton-") as tmp:
        return asyncio.run(_measure(runs, durable, Path(tmp)))
