"""The enrollment listener on loopback, driven by the requester's client half."""

import asyncio
import json
import ssl

import pytest
from agent_fixture import identity_files, provisioned

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.enrollment import ClientEnrollment
from firsttrust.errors import BindingFailed, PeerRefused, SecBProofFailed
from firsttrust.framing import HEADER, encode_frame
from firsttrust.tlspolicy import VERIFY_NO_CHECK_TIME
from firsttrust.requester.enroll import EnrollmentConnectionError, enroll, enroll_connection

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4 bringup@host"  # a real key: the agent parses it before the commit


@pytest.fixture
async def appliance(tmp_path):
    app = provisioned(tmp_path)
    await app.start(phase_timeout=1.0)
    yield app
    await app.stop()


async def test_enrollment_succeeds_and_closes_srp_for_good(appliance, tmp_path, requester_identity,
                                                           appliance_identity, capfd):
    files = identity_files(tmp_path, requester_identity)
    result = await enroll("127.0.0.1", appliance.port, appliance.secrets, files, name="bringup-01")
    identity = appliance.store.load_identity()
    assert result.appliance_pin == identity.pin and result.api_port == 8791
    authorized = appliance.store.authorized()
    assert [entry["pin"] for entry in authorized] == [requester_identity.pin]
    state = appliance.store.load()
    assert state.phase == "enrolled" and state.srp_verifier is None and state.srp_salt is None
    assert not appliance.store.sec_b_path.exists()
    with pytest.raises(PeerRefused) as info:
        await enroll("127.0.0.1", appliance.port, appliance.secrets, files, name="again")
    assert info.value.code == "already_enrolled"
    err = capfd.readouterr().err
    assert "event=enroll-attempt" in err and "event=enrolled" in err
    assert appliance.secrets.sec_a not in err and appliance.secrets.sec_b not in err


async def test_wrong_sec_a_is_refused_and_counted(appliance, tmp_path, requester_identity):
    wrong = EnrollmentSecrets(EnrollmentSecrets.generate().sec_a, appliance.secrets.sec_b)
    with pytest.raises(PeerRefused) as info:
        await enroll("127.0.0.1", appliance.port, wrong, identity_files(tmp_path, requester_identity), name="x")
    assert info.value.code == "auth_failed"
    await appliance.settled()  # the agent's bookkeeping for this connection is done
    assert appliance.store.load().failures == 1 and appliance.store.authorized() == []
    assert appliance.store.load().phase == "provisioned"


async def test_forged_appliance_without_sec_b_is_caught_and_nothing_is_authorized(tmp_path, requester_identity):
    secrets = EnrollmentSecrets.generate()
    forged = provisioned(tmp_path, secrets, sec_b=EnrollmentSecrets.generate().sec_b)
    await forged.start(phase_timeout=1.0)
    try:
        with pytest.raises(SecBProofFailed):
            await enroll("127.0.0.1", forged.port, secrets, identity_files(tmp_path, requester_identity), name="x")
        await asyncio.sleep(0.2)
        assert forged.store.authorized() == [] and forged.store.load().phase == "provisioned"
    finally:
        await forged.stop()


async def test_relay_that_terminates_tls_is_caught_on_both_sides(appliance, tmp_path, requester_identity,
                                                                stranger_identity, capfd):
    """A relay forwards the plaintext SRP phase, then runs TLS on each side with its own key.
    Both TLS handshakes are attempted; the requester refuses the relay's certificate, the agent
    refuses it too, and the relayed attempt (its SRP proof verified) is not counted as a guess."""
    relay_files = identity_files(tmp_path, stranger_identity, "relay")
    outcome = {}
    relay_done = asyncio.Event()

    def any_cert_context(side):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(relay_files.cert_path, relay_files.key_path)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.verify_flags |= VERIFY_NO_CHECK_TIME
        return ctx

    async def frame(reader):
        header = await reader.readexactly(4)
        return header + await reader.readexactly(HEADER.unpack(header)[0])

    async def tls(side, reader, writer):
        outcome[f"{side}-attempted"] = True
        await writer.start_tls(any_cert_context(side))
        # TLS 1.3: a client learns that the server refused its certificate only on the next read.
        if side == "client":
            return await asyncio.wait_for(reader.read(1), 5)

    async def handle(c_reader, c_writer):
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", appliance.port)
        try:
            for src, dst in ((c_reader, s_writer), (s_reader, c_writer), (c_reader, s_writer), (s_reader, c_writer)):
                dst.write(await frame(src))
                await dst.drain()
            outcome["relay"] = await asyncio.gather(tls("server", c_reader, c_writer),
                                                    tls("client", s_reader, s_writer), return_exceptions=True)
        finally:
            c_writer.close()
            s_writer.close()
            relay_done.set()

    relay = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        with pytest.raises(BindingFailed, match="the connection is being intercepted"):
            await enroll("127.0.0.1", relay.sockets[0].getsockname()[1], appliance.secrets,
                         identity_files(tmp_path, requester_identity), name="victim")
        await asyncio.wait_for(relay_done.wait(), 10)
        await appliance.settled()
    finally:
        relay.close()
    assert outcome.get("server-attempted") and outcome.get("client-attempted"), outcome
    towards_requester, towards_agent = outcome["relay"]
    # The requester refused the relay's certificate (binding_failed: intercepted, above): its TLS
    # context has no anchors (protocol section 7.3), so the handshake with the relay completed and
    # the section 7.4 check refused the certificate before the requester read or sent a frame ...
    assert towards_requester is None or isinstance(towards_requester, (ssl.SSLError, ConnectionError)), \
        towards_requester
    # ... and the agent refused it: an alert, a reset, or the connection closed without a byte.
    assert isinstance(towards_agent, (ssl.SSLError, ConnectionError)) or towards_agent == b"", towards_agent
    err = capfd.readouterr().err
    assert "outcome=tls_failed" in err  # the agent refused the relay's certificate in its handshake
    assert appliance.store.authorized() == []
    state = appliance.store.load()
    assert state.phase == "provisioned"  # nothing was consumed either
    assert state.failures == 0  # the verified proof's charge was refunded: a relay is not a guess


async def test_lockout_after_ten_failures_survives_a_restart(tmp_path, requester_identity):
    app = provisioned(tmp_path, max_failures=10)
    await app.start(phase_timeout=1.0)
    files = identity_files(tmp_path, requester_identity)
    codes = []
    try:
        for _ in range(11):
            wrong = EnrollmentSecrets(EnrollmentSecrets.generate().sec_a, app.secrets.sec_b)
            with pytest.raises(PeerRefused) as info:
                await enroll("127.0.0.1", app.port, wrong, files, name="guess")
            codes.append(info.value.code)
        assert codes == ["auth_failed"] * 10 + ["locked_out"]
        with pytest.raises(PeerRefused) as info:
            await enroll("127.0.0.1", app.port, app.secrets, files, name="right")
        assert info.value.code == "locked_out"
    finally:
        await app.stop()
    restarted = await type(app)(app.config, app.store, app.secrets).start(phase_timeout=1.0)
    try:
        with pytest.raises(PeerRefused) as info:
            await enroll("127.0.0.1", restarted.port, app.secrets, files, name="right")
        assert info.value.code == "locked_out" and restarted.store.load().failures == 10
    finally:
        await restarted.stop()


async def test_a_locked_appliance_answers_hello_with_locked_out_before_any_srp_work(tmp_path, requester_identity):
    """The gate refuses a locked appliance at the door: the answer to hello is the error, not a
    challenge (no SRP work, no proof checked, no charge)."""
    app = provisioned(tmp_path, max_failures=3)
    state = app.store.load()
    state.failures = 3
    app.store.save(state)
    await app.start(phase_timeout=1.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        machine = ClientEnrollment(sec_a=app.secrets.sec_a, sec_b=app.secrets.sec_b,
                                   certificate=requester_identity.cert_der, name="right")
        writer.write(machine.start()[0].data)
        header = await asyncio.wait_for(reader.readexactly(4), 5)
        answer = json.loads(await reader.readexactly(HEADER.unpack(header)[0]))
        writer.close()
        assert (answer["type"], answer["code"]) == ("error", "locked_out"), answer
        await app.settled()
        assert app.store.load().failures == 3
    finally:
        await app.stop()


async def test_binding_uses_the_certificate_tls_presented_not_the_committed_one(
        appliance, tmp_path, requester_identity, stranger_identity, monkeypatch):
    """Defense in depth below TLS pinning: the agent's TLS layer is made to accept a stranger's
    certificate, and the requester commits to its own certificate but presents the stranger's in
    TLS. The binding check must see what TLS presented (the stranger's) and refuse; a driver
    that reported the committed certificate instead would enroll the requester."""
    import firsttrust.agent.conversation as server_module
    real_context = server_module._server_context

    def also_trusting_the_stranger(store, requester_certificate):
        context = real_context(store, requester_certificate)
        context.load_verify_locations(cadata=stranger_identity.cert_der)
        return context

    monkeypatch.setattr(server_module, "_server_context", also_trusting_the_stranger)
    machine = ClientEnrollment(sec_a=appliance.secrets.sec_a, sec_b=appliance.secrets.sec_b,
                               certificate=requester_identity.cert_der, name="two-faced")
    with pytest.raises(PeerRefused) as info:
        await enroll_connection("127.0.0.1", appliance.port, machine,
                                identity_files(tmp_path, stranger_identity, "stranger"))
    assert info.value.code == "binding_failed"
    await appliance.settled()
    assert appliance.store.authorized() == [] and appliance.store.load().phase == "provisioned"


async def test_back_off_grows_after_failures(tmp_path, requester_identity):
    app = provisioned(tmp_path)
    await app.start(phase_timeout=1.0, backoff_base=30.0)
    files = identity_files(tmp_path, requester_identity)
    try:
        wrong = EnrollmentSecrets(EnrollmentSecrets.generate().sec_a, app.secrets.sec_b)
        with pytest.raises(PeerRefused):
            await enroll("127.0.0.1", app.port, wrong, files, name="guess")
        with pytest.raises(PeerRefused) as info:
            await enroll("127.0.0.1", app.port, app.secrets, files, name="right")
        assert info.value.code == "backing_off"
    finally:
        await app.stop()


async def test_window_closed(tmp_path, requester_identity):
    app = provisioned(tmp_path)
    state = app.store.load()
    state.window_expires_at = 1.0
    app.store.save(state)
    await app.start(phase_timeout=1.0)
    try:
        with pytest.raises(PeerRefused) as info:
            await enroll("127.0.0.1", app.port, app.secrets, identity_files(tmp_path, requester_identity), name="x")
        assert info.value.code == "window_closed"
    finally:
        await app.stop()


async def read_all(reader, timeout):
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data


@pytest.mark.parametrize("phase", ["before-hello", "after-hello", "before-tls", "after-tls"])
async def test_a_stalled_client_is_cut_off_and_its_slot_freed(appliance, tmp_path, requester_identity, phase):
    reader, writer = await asyncio.open_connection("127.0.0.1", appliance.port)
    machine = ClientEnrollment(sec_a=appliance.secrets.sec_a, sec_b=appliance.secrets.sec_b,
                               certificate=requester_identity.cert_der, name="staller")
    hello = machine.start()[0].data
    if phase != "before-hello":
        writer.write(hello)
        header = await reader.readexactly(4)
        challenge = header + await reader.readexactly(HEADER.unpack(header)[0])
        if phase in ("before-tls", "after-tls"):
            writer.write(machine.receive_data(challenge)[0].data)
            header = await reader.readexactly(4)
            server_proof = header + await reader.readexactly(HEADER.unpack(header)[0])
            machine.receive_data(server_proof)
            if phase == "after-tls":
                from firsttrust.requester.enroll import _client_context
                await writer.start_tls(_client_context(identity_files(tmp_path, requester_identity)))
    assert appliance.server.unauthenticated <= 1
    start = asyncio.get_running_loop().time()
    try:
        await read_all(reader, 5.0)
    except (ConnectionError, ssl.SSLError):
        pass
    elapsed = asyncio.get_running_loop().time() - start
    assert elapsed < 4.0, f"stalled client in {phase} was not cut off ({elapsed:.1f} s)"
    writer.close()
    await asyncio.sleep(0.05)
    assert appliance.server.unauthenticated == 0
    assert appliance.store.load().phase == "provisioned"


async def test_200_garbage_and_half_open_connections_do_not_stop_a_real_enrollment(tmp_path, requester_identity):
    app = provisioned(tmp_path)
    await app.start(phase_timeout=0.5, max_unauthenticated=32)
    files = identity_files(tmp_path, requester_identity)
    writers = []
    try:
        for i in range(200):
            # From other addresses than the requester's: one address that sends garbage is refused
            # for a while (per-source penalties), which test_flood.py checks on its own.
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port,
                                                           local_addr=(f"127.0.0.{2 + i % 20}", 0))
            if i % 3 == 0:
                writer.write(b"\x16\x03\x01\x02\x00" + bytes(100))  # a TLS ClientHello to the wrong port
            elif i % 3 == 1:
                writer.write(b"\xff\xff\xff\xff")  # a 4 GiB frame announcement
            writers.append(writer)  # i % 3 == 2: half-open, silent
        result = None
        for _attempt in range(40):
            try:
                result = await enroll("127.0.0.1", app.port, app.secrets, files, name="legit")
                break
            except PeerRefused as exc:
                assert exc.code == "busy"
                await asyncio.sleep(0.25)
        assert result is not None and result.appliance_pin == app.store.load_identity().pin
    finally:
        for writer in writers:
            writer.close()
        await app.stop()


async def test_two_concurrent_right_secret_enrollments_exactly_one_wins(appliance, tmp_path, requester_identity,
                                                                       stranger_identity):
    a = identity_files(tmp_path, requester_identity, "a")
    b = identity_files(tmp_path, stranger_identity, "b")
    results = await asyncio.gather(
        enroll("127.0.0.1", appliance.port, appliance.secrets, a, name="a"),
        enroll("127.0.0.1", appliance.port, appliance.secrets, b, name="b"),
        return_exceptions=True)
    wins = [r for r in results if not isinstance(r, Exception)]
    losses = [r for r in results if isinstance(r, Exception)]
    assert len(wins) == 1 and len(losses) == 1, results
    assert isinstance(losses[0], PeerRefused) and losses[0].code == "already_enrolled"
    assert len(appliance.store.authorized()) == 1


async def test_ssh_key_is_installed_for_the_account(tmp_path, requester_identity):
    import os
    import pwd
    import subprocess
    import uuid
    from dataclasses import replace
    if os.geteuid() != 0:
        pytest.skip("needs root to create an account")
    account = "ft" + uuid.uuid4().hex[:10]
    home = tmp_path / "home" / account
    subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin", account],
                   check=True, timeout=60)
    try:
        app = provisioned(tmp_path)
        app.config = replace(app.config, account=account)
        await app.start(phase_timeout=1.0)
        try:
            await enroll("127.0.0.1", app.port, app.secrets, identity_files(tmp_path, requester_identity),
                         name="x", ssh_key=SSH_KEY)
        finally:
            await app.stop()
        keys = home / ".ssh" / "authorized_keys"
        entry = pwd.getpwnam(account)
        assert keys.read_text() == SSH_KEY + "\n"
        assert (keys.stat().st_mode & 0o777, keys.stat().st_uid) == (0o600, entry.pw_uid)
        assert ((home / ".ssh").stat().st_mode & 0o777, (home / ".ssh").stat().st_uid) == (0o700, entry.pw_uid)
    finally:
        subprocess.run(["userdel", "--remove", account], check=False, timeout=60, capture_output=True)


async def test_oversized_and_garbage_frames_get_a_typed_error_frame(appliance):
    for data, code in ((b"\xff\xff\xff\xff", "frame_too_large"),
                       (HEADER.pack(4) + b"nope", "malformed_frame"),
                       (encode_frame("finish", {"confirm": "AA==", "name": "x"}), "unexpected_frame")):
        reader, writer = await asyncio.open_connection("127.0.0.1", appliance.port)
        writer.write(data)
        reply = await read_all(reader, 3.0)
        assert json.loads(reply[4:])["code"] == code
        writer.close()
    assert appliance.store.load().failures == 0


async def test_concurrent_guesses_cannot_exceed_the_limit(tmp_path, requester_identity):
    """Ten connections that all passed the gate while failures was 0: with max_failures = 3,
    only three proofs are checked; the rest are refused before their proof is looked at."""
    app = provisioned(tmp_path, max_failures=3)
    # Ten from one address, all in the SRP phase at once: above the default caps of 8 and 2.
    await app.start(phase_timeout=5.0, per_source_max=10, per_source_post_hello=10)
    files = identity_files(tmp_path, requester_identity)
    try:
        wrong = [EnrollmentSecrets(EnrollmentSecrets.generate().sec_a, app.secrets.sec_b) for _ in range(10)]
        results = await asyncio.gather(*(enroll("127.0.0.1", app.port, w, files, name="guess") for w in wrong),
                                       return_exceptions=True)
        codes = sorted(r.code for r in results)
        assert codes.count("auth_failed") == 3 and codes.count("locked_out") == 7, codes
        assert app.store.load().failures == 3
    finally:
        await app.stop()
