"""The post-enrollment API (agent.api) on loopback, driven by requester.session."""

import asyncio
import base64
import json
import logging
import ssl
import time

import aiohttp
import pytest
from pathlib import Path

from firsttrust.agent.api import AuthorizedContexts, ApiInfo, NEXT_CERT, NEXT_KEY, _persist_identity, recover_rotation, \
    start_api, stop_api
from firsttrust.agent.state import AgentState, StateDir
from firsttrust.identity import create_identity, pin_of_certificate
from firsttrust.rotation import verify_rotation
from firsttrust.tlspolicy import VERIFY_NO_CHECK_TIME
from firsttrust.requester.errors import ApiError, ConnectionFailed, PinMismatch, RequestTimeout
from firsttrust.requester.session import PinnedSession, pinned_ssl_context

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB6jexampleexampleexampleexample0000"


class Appliance:
    """A state directory with an identity, plus the API serving it on an ephemeral port."""

    def __init__(self, tmp_path, appliance_identity, authorized=()):
        self.tmp_path = tmp_path
        self.store = StateDir(tmp_path / "state")
        self.store.ensure()
        self.store.save_key(appliance_identity.key_pem)
        self.store.save_certificate(appliance_identity.cert_pem)
        self.store.save(AgentState(phase="enrolled"))
        for name, identity in authorized:
            self.store.authorize(identity.cert_pem, name=name, source="test")
        (tmp_path / "ssh_host_ed25519_key.pub").write_text(HOST_KEY + "\n")
        self.runner = self.contexts = None

    async def start(self):
        info = ApiInfo(host_key_glob=str(self.tmp_path / "ssh_host_*_key.pub"), clock=lambda: 1700000000.0)
        self.runner, self.contexts = await start_api(self.store, "127.0.0.1", 0, info)
        self.port = self.runner.addresses[0][1]
        return self

    def files(self, identity, name):
        cert, key = self.tmp_path / f"{name}.crt", self.tmp_path / f"{name}.key"
        cert.write_bytes(identity.cert_pem)
        key.write_bytes(identity.key_pem)
        key.chmod(0o600)
        return key, cert

    def session(self, identity, name, pinned, **kwargs):
        key, cert = self.files(identity, name)
        return PinnedSession("127.0.0.1", self.port, pinned, key, cert, **kwargs)

    def client_context(self, identity=None, name="raw"):
        return client_context(*self.files(identity, name) if identity is not None else ())


def client_context(key=None, cert=None):
    """A raw TLS 1.3 client context presenting `cert` (if any) and accepting any server: these
    tests look at the server's side of the handshake, and at the certificate it presents."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


@pytest.fixture
async def appliance(tmp_path, appliance_identity, requester_identity):
    app = await Appliance(tmp_path, appliance_identity, [("requester", requester_identity)]).start()
    yield app
    await stop_api(app.runner)


async def raw_exchange(port, context):
    """One HTTP request over a raw TLS connection: (server certificate DER, answer bytes)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)
    try:
        server_cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return server_cert, await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def assert_refused_at_tls(port, context):
    """No HTTP byte comes back (the application layer's refusal is an HTTP 403, see below).

    In TLS 1.3 the client finishes its half of the handshake before the server verifies the
    client certificate, so the refusal shows on the first read: asyncio's server closes without
    flushing its alert, so the client sees EOF (or, with other stacks, the alert as an SSLError).
    test_tls_refusals_are_handshake_failures_on_the_server shows the server's side.
    """
    try:
        _, answer = await raw_exchange(port, context)
    except (ssl.SSLError, ConnectionError):
        return
    assert answer == b""


async def admitted(port, context) -> bytes:
    """The server certificate presented to a client whose request got an HTTP 200 answer."""
    server_cert, answer = await raw_exchange(port, context)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    return server_cert


# -- the authorized requester ------------------------------------------------------------------


async def test_authorized_requester_gets_health_and_identity(appliance, requester_identity, appliance_identity):
    async with appliance.session(requester_identity, "requester", appliance_identity.cert_pem) as api:
        assert await api.get("/v1/health") == {"status": "ok", "phase": "enrolled"}
        identity = await api.get("/v1/identity")
        assert api.connections_checked == 1  # the connector's SPKI pin check ran (and the connection was reused)
    assert identity == {"certificate": appliance_identity.cert_pem.decode(), "pin": appliance_identity.pin,
                        "ssh_host_keys": [HOST_KEY]}
    assert pin_of_certificate(identity["certificate"].encode()) == api.pin == appliance_identity.pin


async def test_authorized_keys_are_listed(appliance, requester_identity, appliance_identity):
    async with appliance.session(requester_identity, "requester", appliance_identity.cert_pem) as api:
        answer = await api.get("/v1/authorized-keys")
    [entry] = answer["keys"]
    assert entry["pin"] == requester_identity.pin and entry["name"] == "requester" and entry["source"] == "test"
    assert entry["certificate"] == requester_identity.cert_pem.decode() and isinstance(entry["added_at"], float)


# -- who is refused -----------------------------------------------------------------------------


async def test_two_authorized_requesters_with_the_same_subject_both_get_in(tmp_path, appliance_identity,
                                                                           requester_identity):
    """Every file-store requester's certificate says CN=firsttrust-requester, with no authority key
    identifier. OpenSSL looked a self-signed client certificate's issuer up by name among the
    anchors and took the first of that name: of two authorized requesters of one subject, only
    one got in (docs/fleet.md section 4 worked around it with distinct subjects)."""
    twin = create_identity(requester_identity.certificate.subject.rfc4514_string()[3:])
    assert twin.certificate.subject == requester_identity.certificate.subject
    app = await Appliance(tmp_path, appliance_identity, [("one", requester_identity), ("two", twin)]).start()
    try:
        for identity, name in ((requester_identity, "one"), (twin, "two")):
            async with app.session(identity, name, appliance_identity.cert_pem) as api:
                assert (await api.get("/v1/health"))["status"] == "ok"
    finally:
        await stop_api(app.runner)


async def test_a_certificate_issued_by_an_authorized_requesters_key_is_refused_at_tls(appliance, requester_identity):
    """Trusting the authorized certificates as they are (PARTIAL_CHAIN) does not make them CAs:
    a certificate that an authorized requester's key signed for another key does not get in."""
    import datetime
    import types

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    issuer_key = serialization.load_pem_private_key(requester_identity.key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issued = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "delegate")]))
              .issuer_name(requester_identity.certificate.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
              .sign(issuer_key, hashes.SHA256()))
    delegate = types.SimpleNamespace(
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        cert_pem=issued.public_bytes(serialization.Encoding.PEM))
    await assert_refused_at_tls(appliance.port, appliance.client_context(delegate, "delegate"))


async def test_stranger_is_refused_at_the_tls_layer(appliance, stranger_identity, appliance_identity):
    await assert_refused_at_tls(appliance.port, appliance.client_context(stranger_identity, "stranger"))
    async with appliance.session(stranger_identity, "stranger", appliance_identity.cert_pem) as api:
        with pytest.raises(ConnectionFailed) as info:
            await api.get("/v1/health")
    assert info.value.code == "connection_failed"


async def test_client_without_certificate_is_refused(appliance):
    await assert_refused_at_tls(appliance.port, appliance.client_context(None))


async def test_tls_refusals_are_handshake_failures_on_the_server(appliance, stranger_identity, caplog):
    """What the server saw: OpenSSL refused the stranger's certificate and the missing one."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)  # asyncio logs failed server handshakes only in debug mode
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            await assert_refused_at_tls(appliance.port, appliance.client_context(stranger_identity, "stranger"))
            await assert_refused_at_tls(appliance.port, appliance.client_context(None))
            await asyncio.sleep(0.05)
    finally:
        loop.set_debug(False)
    failures = [str(record.exc_info[1]) for record in caplog.records
                if "handshake failed" in record.getMessage() and record.exc_info]
    assert any("certificate verify failed" in failure for failure in failures), failures
    assert any("peer did not return a certificate" in failure for failure in failures), failures


async def test_session_refuses_a_server_with_another_key(appliance, requester_identity, stranger_identity):
    async with appliance.session(requester_identity, "requester", stranger_identity.cert_pem) as api:
        with pytest.raises(PinMismatch) as info:
            await api.get("/v1/health")
    assert info.value.code == "pin_mismatch" and api.connections_checked == 0


async def test_pin_check_runs_after_the_handshake(appliance, requester_identity, appliance_identity):
    """The SPKI check on its own: a session whose context trusts the server but whose pin differs."""
    async with appliance.session(requester_identity, "requester", appliance_identity.cert_pem) as api:
        api._connector._pin = create_identity("other").pin
        with pytest.raises(PinMismatch):
            await api.get("/v1/health")


# -- managing authorized keys ---------------------------------------------------------------------


async def test_added_key_gets_in_and_removed_key_is_refused_again(appliance, requester_identity, stranger_identity,
                                                                  appliance_identity, capfd):
    pinned = appliance_identity.cert_pem
    body = {"certificate": stranger_identity.cert_pem.decode(), "name": "stranger"}
    async with appliance.session(requester_identity, "requester", pinned) as admin:
        assert await admin.post("/v1/authorized-keys", body) == {"pin": stranger_identity.pin, "name": "stranger",
                                                                 "added": True}
        again = await admin.request("POST", "/v1/authorized-keys", body)
        assert again["added"] is False
        async with appliance.session(stranger_identity, "stranger", pinned) as stranger:
            assert (await stranger.get("/v1/health"))["status"] == "ok"
            assert await admin.delete(f"/v1/authorized-keys/{stranger_identity.pin}") is None
            # Its open keep-alive connection predates the removal: the application layer refuses it.
            with pytest.raises(ApiError) as info:
                await stranger.get("/v1/health")
            assert (info.value.status, info.value.code) == (403, "not_authorized")
        # A new connection is refused by TLS itself.
        async with appliance.session(stranger_identity, "stranger", pinned) as stranger:
            with pytest.raises(ConnectionFailed):
                await stranger.get("/v1/health")
        await assert_refused_at_tls(appliance.port, appliance.client_context(stranger_identity, "stranger"))
        with pytest.raises(ApiError) as info:
            await admin.delete(f"/v1/authorized-keys/{stranger_identity.pin}")
        assert (info.value.status, info.value.code) == (404, "unknown_key")
    err = capfd.readouterr().err
    assert f"event=key-authorized pin={stranger_identity.pin}" in err and f"peer={requester_identity.pin}" in err
    assert "outcome=added" in err and "outcome=already-authorized" in err
    assert f"event=key-removed pin={stranger_identity.pin} peer={requester_identity.pin} outcome=removed" in err


async def test_api_answer_codes_for_added_keys(appliance, requester_identity, stranger_identity, appliance_identity):
    """201 when added, 200 when already there (status, not just the body)."""
    key, cert = appliance.files(requester_identity, "requester")
    context = pinned_ssl_context(appliance_identity.cert_pem, key, cert)
    body = {"certificate": stranger_identity.cert_pem.decode(), "name": "stranger"}
    url = f"https://127.0.0.1:{appliance.port}/v1/authorized-keys"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as client:
        for expected in (201, 200):
            async with client.post(url, json=body) as response:
                assert response.status == expected


async def test_removing_the_last_key_is_refused(appliance, requester_identity, appliance_identity, capfd):
    async with appliance.session(requester_identity, "requester", appliance_identity.cert_pem) as api:
        with pytest.raises(ApiError) as info:
            await api.delete(f"/v1/authorized-keys/{requester_identity.pin}")
        assert (info.value.status, info.value.code) == (409, "last_key")
        assert (await api.get("/v1/health"))["status"] == "ok"
    assert [entry["pin"] for entry in appliance.store.authorized()] == [requester_identity.pin]
    assert "outcome=refused-last-key" in capfd.readouterr().err


async def test_a_key_removed_behind_the_apis_back_is_refused_by_the_application(appliance, requester_identity,
                                                                                stranger_identity, appliance_identity):
    """Defense in depth: a kept-alive connection was authenticated before the key was removed;
    TLS is not redone for its next request, the per-request check is."""
    appliance.store.authorize(stranger_identity.cert_pem, name="stranger", source="test")
    async with appliance.session(requester_identity, "requester", appliance_identity.cert_pem) as api:
        assert (await api.get("/v1/health"))["status"] == "ok"  # opens the kept-alive connection
        appliance.store.deauthorize(requester_identity.pin)
        with pytest.raises(ApiError) as info:
            await api.get("/v1/health")
        assert api.connections_checked == 1  # same connection: no new handshake happened
    assert (info.value.status, info.value.code) == (403, "not_authorized")


async def test_a_key_removed_on_disk_is_refused_at_the_next_handshake(appliance, requester_identity,
                                                                      stranger_identity, appliance_identity):
    appliance.store.authorize(stranger_identity.cert_pem, name="stranger", source="test")
    appliance.store.deauthorize(requester_identity.pin)  # another process edits authorized.json
    with pytest.raises(ConnectionFailed):
        async with appliance.session(requester_identity, "requester", appliance_identity.cert_pem) as api:
            await api.get("/v1/health")


# -- bad requests -------------------------------------------------------------------------------------


@pytest.fixture
async def raw_client(appliance, requester_identity, appliance_identity):
    key, cert = appliance.files(requester_identity, "requester")
    context = pinned_ssl_context(appliance_identity.cert_pem, key, cert)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as client:
        async def send(method, path, data=b""):
            async with client.request(method, f"https://127.0.0.1:{appliance.port}{path}", data=data) as response:
                return response.status, await response.json(content_type=None)
        yield send


@pytest.mark.parametrize("data, code", [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b"[" * 30000, "invalid_json"),  # json.loads recurses per level: RecursionError, not a 500
    (b'{"name": "x"}', "invalid_field"),
    (b'{"certificate": "x", "name": "x", "admin": true}', "invalid_field"),
    (b'{"certificate": 5, "name": "x"}', "invalid_field"),
    (b'{"certificate": "-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n", "name": "x"}',
     "invalid_certificate"),
    (b'{"certificate": "garbage", "name": "x"}', "invalid_certificate"),
])
async def test_bad_bodies_are_400_with_a_typed_code(raw_client, data, code):
    status, answer = await raw_client("POST", "/v1/authorized-keys", data)
    assert status == 400 and answer["error"]["code"] == code and answer["error"]["message"]


async def test_bad_name_is_400(raw_client, stranger_identity):
    body = json.dumps({"certificate": stranger_identity.cert_pem.decode(), "name": "../etc"}).encode()
    assert (await raw_client("POST", "/v1/authorized-keys", body))[1]["error"]["code"] == "invalid_field"


async def test_oversized_body_is_413(raw_client):
    status, answer = await raw_client("POST", "/v1/authorized-keys", b'{"certificate": "' + b"A" * 100_000 + b'"}')
    assert status == 413 and answer["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/v1/nothing", 404, "not_found"),
    ("PUT", "/v1/health", 405, "method_not_allowed"),
    ("DELETE", "/v1/authorized-keys/not-a-pin", 400, "invalid_pin"),
])
async def test_unknown_routes_and_bad_pins_are_typed_errors(raw_client, method, path, status, code):
    answer_status, answer = await raw_client(method, path)
    assert answer_status == status and answer["error"]["code"] == code


# -- identity rotation -------------------------------------------------------------------------------


async def test_rotation_is_verified_and_moves_the_pin(appliance, requester_identity, appliance_identity, capfd):
    async with appliance.session(requester_identity, "requester", appliance_identity.cert_pem) as api:
        rotation = await api.rotate()
    assert rotation.previous_pin == appliance_identity.pin != rotation.pin
    stored = appliance.store.load_identity()
    assert stored.pin == rotation.pin and stored.cert_pem == rotation.certificate_pem
    assert not (appliance.store.path / NEXT_KEY).exists() and not (appliance.store.path / NEXT_CERT).exists()
    assert oct(appliance.store.key_path.stat().st_mode & 0o777) == "0o600"
    # The new certificate names the same appliance.
    assert stored.certificate.subject == appliance_identity.certificate.subject
    # New connections with the old pin fail; with the new one they succeed.
    async with appliance.session(requester_identity, "requester", appliance_identity.cert_pem) as old:
        with pytest.raises(PinMismatch):
            await old.get("/v1/health")
    async with appliance.session(requester_identity, "requester", rotation.certificate_pem) as new:
        assert (await new.get("/v1/identity"))["pin"] == rotation.pin
    err = capfd.readouterr().err
    assert (f"event=rotated previous_pin={appliance_identity.pin} pin={rotation.pin} "
            f"peer={requester_identity.pin} outcome=rotated") in err


async def test_rotation_answer_carries_a_signature_by_the_old_key(raw_client, appliance_identity):
    status, answer = await raw_client("POST", "/v1/identity/rotate")
    assert status == 200 and answer["previous_pin"] == appliance_identity.pin
    signature = base64.b64decode(answer["signature"])
    assert verify_rotation(appliance_identity.cert_pem, answer["certificate"].encode(), signature) == answer["pin"]


@pytest.mark.parametrize("crash_after, expected, rotated", [
    ("next-key", "discarded", False),     # only identity.next.key written
    ("next-both", "discarded", False),    # both next files written, nothing renamed
    ("key-renamed", "completed", True),   # identity.key replaced (the commit point), certificate not yet
])
def test_interrupted_rotation_is_recovered(tmp_path, appliance_identity, crash_after, expected, rotated):
    store = Appliance(tmp_path, appliance_identity).store
    new = create_identity("appliance")
    (store.path / NEXT_KEY).write_bytes(new.key_pem)
    if crash_after != "next-key":
        (store.path / NEXT_CERT).write_bytes(new.cert_pem)
    if crash_after == "key-renamed":
        (store.path / NEXT_KEY).rename(store.key_path)
        assert store.load_identity() is None  # key and certificate disagree until recovery
    assert recover_rotation(store) == expected
    assert store.load_identity().pin == (new.pin if rotated else appliance_identity.pin)
    assert not (store.path / NEXT_KEY).exists() and not (store.path / NEXT_CERT).exists()
    assert recover_rotation(store) is None


def test_persisted_identity_replaces_both_files(tmp_path, appliance_identity):
    store = Appliance(tmp_path, appliance_identity).store
    new = create_identity("appliance")
    _persist_identity(store, new)
    assert store.load_identity() == new and recover_rotation(store) is None


# -- the TLS context swap (the technique AuthorizedContexts rests on) --------------------------------


async def test_reload_changes_who_tls_admits_and_what_it_presents(tmp_path, appliance_identity, requester_identity,
                                                                  stranger_identity):
    """sni_callback swaps ssl_object.context: OpenSSL then verifies the client against the NEW
    context's trust store and presents the NEW context's certificate, without a listener restart."""
    app = await Appliance(tmp_path, appliance_identity, [("a", requester_identity)]).start()
    a, b = app.client_context(requester_identity, "a"), app.client_context(stranger_identity, "b")
    try:
        assert await admitted(app.port, a) == appliance_identity.cert_der
        await assert_refused_at_tls(app.port, b)

        app.store.authorize(stranger_identity.cert_pem, name="b", source="test")
        app.store.deauthorize(requester_identity.pin)
        app.contexts.reload()
        assert await admitted(app.port, b) == appliance_identity.cert_der
        await assert_refused_at_tls(app.port, a)

        new = create_identity("appliance")
        app.store.save_key(new.key_pem)
        app.store.save_certificate(new.cert_pem)
        app.contexts.reload()
        assert await admitted(app.port, b) == new.cert_der
    finally:
        await stop_api(app.runner)


async def test_listening_context_alone_admits_nobody(tmp_path, appliance_identity, requester_identity):
    """Fail closed: without the swap, the listener's own trust store would refuse everyone."""
    store = Appliance(tmp_path, appliance_identity, [("a", requester_identity)]).store
    contexts = AuthorizedContexts(store)
    contexts.listening.sni_callback = None
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=contexts.listening)
    try:
        port = server.sockets[0].getsockname()[1]
        key, cert = tmp_path / "a.key", tmp_path / "a.crt"
        key.write_bytes(requester_identity.key_pem)
        cert.write_bytes(requester_identity.cert_pem)
        await assert_refused_at_tls(port, client_context(key, cert))
    finally:
        server.close()
        await server.wait_closed()


async def test_no_authorized_key_refuses_every_client(tmp_path, appliance_identity, requester_identity,
                                                      stranger_identity):
    app = await Appliance(tmp_path, appliance_identity).start()
    try:
        for name, identity in (("a", requester_identity), ("b", stranger_identity)):
            await assert_refused_at_tls(app.port, app.client_context(identity, name))
        # Enrollment adds a key; a reload admits it without restarting the listener.
        app.store.authorize(requester_identity.cert_pem, name="a", source="test")
        app.contexts.reload()
        await admitted(app.port, app.client_context(requester_identity, "a"))
    finally:
        await stop_api(app.runner)


async def test_server_context_policy(appliance):
    for context in (appliance.contexts.listening, appliance.contexts.current):
        assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED and context.verify_flags & VERIFY_NO_CHECK_TIME
        assert context.num_tickets == 0


# -- timeouts -----------------------------------------------------------------------------------------


async def test_session_times_out_on_a_server_that_never_answers_tls(tmp_path, requester_identity,
                                                                    appliance_identity):
    held = []

    async def silent(reader, writer):  # accepts TCP, never speaks TLS
        held.append(writer)
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    key, cert = tmp_path / "r.key", tmp_path / "r.crt"
    key.write_bytes(requester_identity.key_pem)
    cert.write_bytes(requester_identity.cert_pem)
    timeout = aiohttp.ClientTimeout(total=0.5, connect=0.3)
    started = time.monotonic()
    try:
        async with PinnedSession("127.0.0.1", port, appliance_identity.cert_pem, key, cert, timeout=timeout) as api:
            with pytest.raises(RequestTimeout) as info:
                await api.get("/v1/health")
        assert info.value.code == "timeout" and isinstance(info.value, ConnectionFailed)
        assert time.monotonic() - started < 2.0
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_key_authorized_by_the_guest_command_is_accepted_without_a_restart(tmp_path, requester_identity,
                                                                                  stranger_identity):
    """The guest-command mode: `firsttrust-agent authorize` runs in another process while the API serves."""
    import subprocess
    import sys

    from firsttrust.agent.api import start_api, stop_api
    from firsttrust.agent.state import StateDir
    from firsttrust.identity import create_identity
    from firsttrust.requester.session import PinnedSession

    store = StateDir(tmp_path / "state")
    store.ensure()
    appliance = create_identity("appliance")
    store.save_key(appliance.key_pem)
    store.save_certificate(appliance.cert_pem)
    store.authorize(requester_identity.cert_pem, name="first", source="test")
    runner, _contexts = await start_api(store, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    key, cert = tmp_path / "s.key", tmp_path / "s.crt"
    key.write_bytes(stranger_identity.key_pem)
    cert.write_bytes(stranger_identity.cert_pem)
    try:
        # Not authorized yet: the API refuses the stranger's certificate in the TLS handshake.
        with pytest.raises(ConnectionFailed) as refused:
            async with PinnedSession("127.0.0.1", port, appliance.cert_pem, key, cert) as api:
                await api.get("/v1/health")
        assert refused.value.code == "connection_failed"
        out = subprocess.run([sys.executable, "-m", "firsttrust.agent.cli", "authorize", "--cert", str(cert), "--state-dir",
                              str(store.path)], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[2])
        assert out.returncode == 0, out.stderr
        async with PinnedSession("127.0.0.1", port, appliance.cert_pem, key, cert) as api:
            assert (await api.get("/v1/health"))["status"] == "ok"
    finally:
        await stop_api(runner)


def test_api_contexts_refuse_an_identity_whose_key_and_certificate_do_not_match(tmp_path, appliance_identity,
                                                                               stranger_identity):
    """The API checks identity.key against identity.crt by loading both into its context (no
    cryptography key parsing): a mismatched pair is a StateError, a missing one NoIdentity."""
    from firsttrust.agent.api import NoIdentity
    from firsttrust.agent.state import StateError

    store = Appliance(tmp_path, appliance_identity).store
    AuthorizedContexts(store)  # the matching pair loads
    store.save_key(stranger_identity.key_pem)
    with pytest.raises(StateError, match="do not match"):
        AuthorizedContexts(store)
    store.key_path.unlink()
    with pytest.raises(NoIdentity):
        AuthorizedContexts(store)


def test_an_enrolled_agents_tls_and_pins_never_ask_cryptography_for_a_key_object(tmp_path, appliance_identity,
                                                                             requester_identity):
    """What an enrolled agent does with certificates (the API's contexts, its identity's pin,
    parsing and pinning a requester certificate) never calls Certificate.public_key(): with
    Debian 12's cryptography 38 that loads its OpenSSL backend, ~2 MB of an appliance's memory
    (bench/README.md, `agent RSS enrolled`). The child process hands out certificates whose
    public_key() raises, and (meaningful on cryptography 38) reports whether the backend loaded."""
    import subprocess
    import sys

    store = Appliance(tmp_path, appliance_identity, [("a", requester_identity)]).store
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cryptography import x509\n"
        "class NoKey:\n"
        "    def __init__(self, cert): self._cert = cert\n"
        "    def __getattr__(self, name): return getattr(self._cert, name)\n"
        "    def __hash__(self): return hash(self._cert)\n"
        "    def __eq__(self, other): return isinstance(other, NoKey) and self._cert == other._cert\n"
        "    def public_key(self): raise AssertionError('public_key() called')\n"
        "for name in ('load_der_x509_certificate', 'load_pem_x509_certificate'):\n"
        "    setattr(x509, name, lambda data, _load=getattr(x509, name): NoKey(_load(data)))\n"
        "from firsttrust.agent.api import AuthorizedContexts\n"
        "from firsttrust.agent.state import StateDir\n"
        "from firsttrust.identity import certificate_der, load_certificate, pin_of_certificate\n"
        "contexts = AuthorizedContexts(StateDir(Path(sys.argv[1])))\n"
        "der = certificate_der(Path(sys.argv[2]).read_bytes())\n"
        "print(contexts.identity.pin, pin_of_certificate(load_certificate(der)))\n"
        "print('cryptography.hazmat.backends.openssl.backend' in sys.modules)\n")
    peer = tmp_path / "peer.crt"
    peer.write_bytes(requester_identity.cert_pem)
    out = subprocess.run([sys.executable, "-c", code, str(store.path), str(peer)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1:]
    lines = out.stdout.split("\n")
    assert lines[0] == f"{appliance_identity.pin} {requester_identity.pin}"
    assert lines[1] == "False"
