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
