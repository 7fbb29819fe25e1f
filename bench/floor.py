"""The crypto floor: what one enrollment cannot be cheaper than.

  srp_floor   one SRP-6a handshake, both sides, in this process: SRPClient + SRPServer of
              firsttrust.srp6a (pysrp's OpenSSL backend, RFC 5054 3072-bit group, SHA-512),
              from the client's A to the client checking M2. The verifier is computed before
              (provisioning does that, once per appliance).
  tls_floor   one TLS 1.3 handshake, both sides, in this process over 127.0.0.1: ECDSA P-256
              self-signed certificates both sides, mutual authentication, contexts built once
              with firsttrust.tlspolicy.apply_policy. Timed from the TCP connect to the server's
              handler running (the server completes last in TLS 1.3), so TCP connect, both
              handshakes and the two session tickets Python's server sends are inside.

Both are timed as wall time and as CPU time of this one process, which runs both sides: the
CPU figure is the cost of the primitive for the pair, the number the batch ideal divides into
two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import statistics
import tempfile
from pathlib import Path
from typing import AsyncIterator

from firsttrust.identity import create_identity
from firsttrust.srp6a import EPHEMERAL_BYTES, SRPClient, SRPServer, new_verifier_record
from firsttrust.tlspolicy import apply_policy

from .measure import WARMUP, Runner, Sample, Stopwatch, Timings, interleave


def srp_handshake(password: bytes, salt: bytes, verifier: bytes) -> None:
    client = SRPClient(password, os.urandom(EPHEMERAL_BYTES))
    server = SRPServer(salt, verifier, client.A, os.urandom(EPHEMERAL_BYTES))
    M1 = client.process_challenge(server.salt, server.B)
    M2 = server.verify(M1)
    client.verify(M2)
    assert client.session_key == server.session_key


def srp_floor(runs: int) -> Sample:
    return asyncio.run(interleave(runs, {"srp": srp_runner()}))["srp"]


def srp_split(runs: int) -> tuple[float, float]:
    """Median CPU seconds of the client's and of the server's half of one SRP handshake. They
    differ: the client's exponent a + u*x is ~4x longer than the server's b."""
    password = b"bench-password-0123456789"
    salt, verifier = new_verifier_record(password)
    clients, servers = [], []
    for i in range(WARMUP + runs):
        with Stopwatch() as c1:
            client = SRPClient(password, os.urandom(EPHEMERAL_BYTES))
        with Stopwatch() as s1:
            server = SRPServer(salt, verifier, client.A, os.urandom(EPHEMERAL_BYTES))
        with Stopwatch() as c2:
            M1 = client.process_challenge(server.salt, server.B)
        with Stopwatch() as s2:
            M2 = server.verify(M1)
        with Stopwatch() as c3:
            client.verify(M2)
        if i >= WARMUP:
            clients.append(c1.cpu + c2.cpu + c3.cpu)
            servers.append(s1.cpu + s2.cpu)
    return statistics.median(clients), statistics.median(servers)


def policy_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts as the enrollment builds them: own key and certificate loaded
    from files, the peer's certificate as the only trust anchor, firsttrust's TLS policy."""
    appliance, requester = create_identity("bench-appliance"), create_identity("bench-requester")
    paths = {}
    for name, identity in (("appliance", appliance), ("requester", requester)):
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(identity.cert_pem)
        key.write_bytes(identity.key_pem)
        paths[name] = (cert, key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*paths["appliance"])
    apply_policy(server, [requester.cert_der])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(*paths["requester"])
    apply_policy(client, [appliance.cert_der])
    return server, client


def srp_runner() -> Runner:
    """One SRP handshake per call (the verifier computed once, before)."""
    password = b"bench-password-0123456789"
    salt, verifier = new_verifier_record(password)

    async def once(index: int) -> Stopwatch:
        with Stopwatch() as sw:
            srp_handshake(password, salt, verifier)
        return sw

    return once


@contextlib.asynccontextmanager
async def tls_runner() -> AsyncIterator[Runner]:
    """One TLS handshake per call against a server in this event loop, timed from the TCP
    connect to the server's handler running; the connection is closed after the reading."""
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        server_context, client_context = policy_contexts(Path(tmp))
    loop = asyncio.get_running_loop()
    handshaken: asyncio.Future = loop.create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if not handshaken.done():
            handshaken.set_result(peer)
        await reader.read()  # until the client closes
        writer.close()

    async def once(index: int) -> Stopwatch:
        nonlocal handshaken
        handshaken = loop.create_future()
        with Stopwatch() as sw:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
            assert await handshaken
        writer.close()
        await writer.wait_closed()
        return sw

    async with await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context) as server:  # closed on exit
        port = server.sockets[0].getsockname()[1]
        yield once


async def _tls_floor(runs: int) -> Sample:
    async with tls_runner() as once:
        return (await interleave(runs, {"tls": once}))["tls"]


def tls_floor(runs: int) -> Sample:
    return asyncio.run(_tls_floor(runs))


def context_build_cost(runs: int) -> Sample:
    """Not part of the floor: building one policy context pair (load_cert_chain from files,
    load_verify_locations, apply_policy), which the enrollment drivers do per connection."""
    timings = Timings(WARMUP)
    with tempfile.TemporaryDirectory(prefix="bench-ctx-") as tmp:
        policy_contexts(Path(tmp))
        appliance, requester = create_identity("a"), create_identity("r")
        for name, identity in (("a", appliance), ("r", requester)):
            (Path(tmp) / f"{name}.crt").write_bytes(identity.cert_pem)
            (Path(tmp) / f"{name}.key").write_bytes(identity.key_pem)
        for i in range(WARMUP + runs):
            with Stopwatch() as sw:
                for role, own, peer in ((ssl.PROTOCOL_TLS_SERVER, "a", requester),
                                        (ssl.PROTOCOL_TLS_CLIENT, "r", appliance)):
                    context = ssl.SSLContext(role)
                    context.load_cert_chain(Path(tmp) / f"{own}.crt", Path(tmp) / f"{own}.key")
                    apply_policy(context, [peer.cert_der])
            timings.add(i, sw)
    return timings.sample()


def _bio_handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> tuple[float, float]:
    """One TLS 1.3 handshake over memory BIOs; (client CPU, server CPU) in seconds."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    cpu = {"c": 0.0, "s": 0.0}
    done: set[str] = set()
    for _ in range(10):
        for name, conn, out, peer_in in (("c", client, c_out, s_in), ("s", server, s_out, c_in)):
            if name not in done:
                with Stopwatch() as sw:
                    try:
                        conn.do_handshake()
                        done.add(name)
                    except ssl.SSLWantReadError:
                        pass
                cpu[name] += sw.cpu
            peer_in.write(out.read())
        if len(done) == 2:
            with Stopwatch() as sw:  # the server judges the client's certificate on its first read
                client.write(b"x")
                s_in.write(c_out.read())
                server.read(1)
            cpu["s"] += sw.cpu
            return cpu["c"], cpu["s"]
    raise RuntimeError("TLS handshake over memory BIOs did not finish")


def tls_split(runs: int) -> tuple[float, float]:
    """Median CPU seconds of the client's and of the server's half of one TLS 1.3 handshake
    (the same contexts and policy as tls_floor, over memory BIOs: no sockets, no event loop)."""
    with tempfile.TemporaryDirectory(prefix="bench-tls-split-") as tmp:
        server_ctx, client_ctx = policy_contexts(Path(tmp))
        clients, servers = [], []
        for i in range(WARMUP + runs):
            c, s = _bio_handshake(client_ctx, server_ctx)
            if i >= WARMUP:
                clients.append(c)
                servers.append(s)
    return statistics.median(clients), statistics.median(servers)
