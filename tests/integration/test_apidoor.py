"""agent/apidoor.py: the API port is bound from the start, but closed (and aiohttp.web not even
needed) until a requester is authorized; then the API answers on the same socket."""

import asyncio

import pytest

from firsttrust.agent.apidoor import ApiDoor, bind_api_socket
from firsttrust.agent.state import StateDir
from firsttrust.requester.errors import ConnectionFailed
from firsttrust.requester.session import PinnedSession


def provisioned_store(tmp_path, appliance_identity) -> StateDir:
    store = StateDir(tmp_path / "state")
    store.ensure()
    store.save_key(appliance_identity.key_pem)
    store.save_certificate(appliance_identity.cert_pem)
    return store


def requester_files(tmp_path, requester_identity):
    key, cert = tmp_path / "r.key", tmp_path / "r.crt"
    key.write_bytes(requester_identity.key_pem)
    cert.write_bytes(requester_identity.cert_pem)
    return key, cert


async def test_before_anyone_is_authorized_the_port_closes_connections_unanswered(tmp_path, appliance_identity):
    door = ApiDoor(provisioned_store(tmp_path, appliance_identity), bind_api_socket("127.0.0.1", 0))
    await door.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
        writer.write(b"\x16\x03\x01\x00\x05hello")
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed, not a byte answered
        writer.close()
        assert door.runner is None  # the API was never started
    finally:
        await door.close()


async def test_a_key_authorized_by_another_process_opens_the_api_on_the_next_connection(
        tmp_path, appliance_identity, requester_identity):
    store = provisioned_store(tmp_path, appliance_identity)
    door = ApiDoor(store, bind_api_socket("127.0.0.1", 0))
    await door.start()
    key, cert = requester_files(tmp_path, requester_identity)
    try:
        with pytest.raises(ConnectionFailed):
            async with PinnedSession("127.0.0.1", door.port, appliance_identity.cert_pem, key, cert) as api:
                await api.get("/v1/health")
        store.authorize(requester_identity.cert_pem, name="fig3", source="guest-command")  # as `authorize` does
        async with PinnedSession("127.0.0.1", door.port, appliance_identity.cert_pem, key, cert) as api:
            assert (await api.get("/v1/health"))["status"] == "ok"
        assert door.runner is not None
    finally:
        await door.close()


async def test_open_starts_the_api_at_enrollment_and_reloads_it_afterwards(
        tmp_path, appliance_identity, requester_identity, stranger_identity):
    store = provisioned_store(tmp_path, appliance_identity)
    door = ApiDoor(store, bind_api_socket("127.0.0.1", 0))
    await door.start()
    key, cert = requester_files(tmp_path, requester_identity)
    try:
        store.authorize(requester_identity.cert_pem, name="enrolled", source="enrollment")
        await door.open()  # what the service does when enrollment commits
        async with PinnedSession("127.0.0.1", door.port, appliance_identity.cert_pem, key, cert) as api:
            assert (await api.get("/v1/health"))["status"] == "ok"
        store.authorize(stranger_identity.cert_pem, name="second", source="api")
        await door.open()  # running: reload, not a second API
        skey, scert = tmp_path / "s.key", tmp_path / "s.crt"
        skey.write_bytes(stranger_identity.key_pem)
        scert.write_bytes(stranger_identity.cert_pem)
        async with PinnedSession("127.0.0.1", door.port, appliance_identity.cert_pem, skey, scert) as api:
            assert (await api.get("/v1/health"))["status"] == "ok"
    finally:
        await door.close()


# --- the pre-authentication phase (agent/apiguard.py, issue #25 finding 1) ----------------------


def small_guard(total: int = 4, per_source: int = 2, timeout: float = 5.0):
    from firsttrust.agent.apiguard import ApiGuard
    from firsttrust.agent.descriptors import Budget

    return ApiGuard(Budget(1024, 64, 64, total, per_source), timeout=timeout)


async def open_api(tmp_path, appliance_identity, requester_identity, guard):
    store = provisioned_store(tmp_path, appliance_identity)
    store.authorize(requester_identity.cert_pem, name="enrolled", source="enrollment")
    door = ApiDoor(store, bind_api_socket("127.0.0.1", 0), guard=guard)
    await door.start()
    return door


async def idle_from(port: int, source: str):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_agent(reader, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), timeout) == b""
    except (asyncio.TimeoutError, ConnectionError):
        return False


async def test_a_connection_that_never_completes_its_handshake_is_shut_at_the_deadline(
        tmp_path, appliance_identity, requester_identity):
    guard = small_guard(timeout=0.5)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    try:
        reader, writer = await idle_from(door.port, "127.0.0.70")
        started = asyncio.get_running_loop().time()
        assert await closed_by_agent(reader, 5)
        assert 0.4 <= asyncio.get_running_loop().time() - started < 2.0
        assert guard.unauthenticated == 0 and guard.timeouts == 1
        writer.close()
    finally:
        await door.close()


async def test_an_authenticated_connection_that_sends_no_request_is_closed_at_the_same_deadline(
        tmp_path, appliance_identity, requester_identity):
    from firsttrust.requester.session import pinned_ssl_context

    guard = small_guard(timeout=0.5)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    key, cert = requester_files(tmp_path, requester_identity)
    try:
        context = pinned_ssl_context(appliance_identity.cert_pem, key, cert)
        reader, writer = await asyncio.open_connection("127.0.0.1", door.port, ssl=context, server_hostname="x")
        started = asyncio.get_running_loop().time()
        for _ in range(50):  # the agent finishes its side of the handshake a moment later
            if guard.authenticated:
                break
            await asyncio.sleep(0.01)
        assert guard.authenticated == 1 and guard.unauthenticated == 0
        assert await closed_by_agent(reader, 5)  # no request within the deadline: closed
        assert asyncio.get_running_loop().time() - started < 2.0
        assert guard.timeouts == 0  # not an unauthenticated timeout: it never counted
        writer.close()
    finally:
        await door.close()


async def test_the_default_preauth_deadline_is_a_few_seconds():
    from firsttrust.agent.apiguard import API_PREAUTH_TIMEOUT

    assert 2.0 <= API_PREAUTH_TIMEOUT <= 10.0  # named in docs/operations.md; asyncio's own is 60 s
    assert small_guard().timeout == 5.0


async def test_a_full_table_admits_a_quiet_source_by_evicting_from_the_biggest(
        tmp_path, appliance_identity, requester_identity):
    guard = small_guard(total=4, per_source=3)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    try:
        held = [await idle_from(door.port, "127.0.0.71") for _ in range(3)] + [await idle_from(door.port, "127.0.0.72")]
        await asyncio.sleep(0.2)
        assert guard.unauthenticated == 4
        newcomer = await idle_from(door.port, "127.0.0.73")
        assert await closed_by_agent(held[0][0], 2)  # the biggest source's oldest made room
        assert not await closed_by_agent(held[3][0], 0.3) and not await closed_by_agent(newcomer[0], 0.3)
        # A source at its share gives up its own oldest, not another source's.
        await idle_from(door.port, "127.0.0.72")
        await idle_from(door.port, "127.0.0.72")
        assert await closed_by_agent(held[3][0], 2)
        assert not await closed_by_agent(newcomer[0], 0.3)
        assert guard.unauthenticated <= 4
    finally:
        await door.close()


async def test_authenticated_connections_never_count_and_the_requester_gets_through_a_full_table(
        tmp_path, appliance_identity, requester_identity):
    guard = small_guard(total=2, per_source=2)
    door = await open_api(tmp_path, appliance_identity, requester_identity, guard)
    key, cert = requester_files(tmp_path, requester_identity)
    try:
        async with PinnedSession("127.0.0.1", door.port, appliance_identity.cert_pem, key, cert) as api:
            assert (await api.get("/v1/health"))["status"] == "ok"
            assert guard.unauthenticated == 0 and guard.authenticated == 1  # released at the handshake
            flood = [await idle_from(door.port, "127.0.0.74") for _ in range(2)]
            await asyncio.sleep(0.2)
            assert guard.unauthenticated == 2  # full
            assert (await api.get("/v1/health"))["status"] == "ok"  # its keep-alive connection: not counted
        async with PinnedSession("127.0.0.1", door.port, appliance_identity.cert_pem, key, cert) as api:
            assert (await api.get("/v1/health"))["status"] == "ok"  # a new connection: admitted by eviction
        assert any([await closed_by_agent(r, 2) for r, _ in flood])
    finally:
        await door.close()


async def test_running_out_of_descriptors_sheds_the_connection_and_is_counted_once_per_interval():
    """EMFILE at accept: the spare descriptor takes the waiting connection off the queue and
    closes it (else it stays readable and the loop spins on it), counted for one line per
    interval, never a line per accept (before: 204,648 tracebacks in 45 s)."""
    import errno
    import socket

    from firsttrust.agent.doorlog import DoorLog
    from firsttrust.agent.descriptors import shed_when_exhausted

    written = []
    log = DoorLog("api", interval=60.0, write=lambda name, message, **f: written.append(message))
    listening = socket.create_server(("127.0.0.1", 0))
    try:
        clients = [socket.create_connection(listening.getsockname()) for _ in range(5)]
        for _ in clients:
            shed_when_exhausted(listening, OSError(errno.EMFILE, "Too many open files"), log)
        for client in clients:
            client.settimeout(5)
            assert client.recv(10) == b""  # shed: accepted and closed
            client.close()
        assert log.exhausted == 5 and written == []
        log.flush()
        assert written == ["api port: out of file descriptors: 5 connections accepted and closed at once "
                           "in the last 1 s"]
        with pytest.raises(OSError):  # anything else is asyncio's to handle
            shed_when_exhausted(listening, OSError(errno.ECONNABORTED, "aborted"), log)
    finally:
        listening.close()


def test_the_caps_are_derived_from_the_descriptor_limit_with_a_reserve():
    from firsttrust.agent.descriptors import API_AUTHENTICATED_ROOM, RESERVE, budget

    at_1024 = budget(1024)
    used = (RESERVE + at_1024.enroll_unauthenticated + at_1024.drains + at_1024.api_unauthenticated
            + API_AUTHENTICATED_ROOM)
    assert used <= 1024 and at_1024.short == 0
    assert budget(400).api_unauthenticated == 400 - (used - at_1024.api_unauthenticated)  # scaled down
    assert budget(100).short > 0 and budget(100).api_unauthenticated >= 16
    assert budget(65536).api_unauthenticated == at_1024.api_unauthenticated  # capped, not grown
