"""Enrollment as a transaction (docs/protocol.md section 8.5): nothing granted before the one
commit, a refused preparation names its reason and leaves the secrets valid, and a requester that
lost `enrolled` recovers by running the same enrollment again."""

import asyncio
import dataclasses
import signal
import uuid

import pytest
from agent_fixture import provisioned
from test_serve import SSH_KEY, Serve

from firsttrust.errors import PeerRefused
from firsttrust.requester.enroll import EnrollmentConnectionError
from firsttrust.requester.library import AlreadyPinned, call, enroll_appliance
from firsttrust.requester.truststore import TrustStore


async def test_ssh_key_for_a_missing_account_is_refused_with_that_reason_and_nothing_is_granted(tmp_path):
    app = provisioned(tmp_path)
    account = "ftnone" + uuid.uuid4().hex[:8]
    app.config = dataclasses.replace(app.config, account=account)
    await app.start()
    store = TrustStore(tmp_path / "home")
    try:
        with pytest.raises(PeerRefused) as refused:
            await enroll_appliance(f"127.0.0.1:{app.port}", app.secrets, name="app", ssh_key=SSH_KEY, store=store)
        assert refused.value.code == "ssh_key_rejected"
        assert f"account {account!r} does not exist on the appliance" in str(refused.value)
        state = app.store.load()
        assert (state.phase, state.failures, app.store.authorized()) == ("provisioned", 0, [])
        assert app.store.sec_b_path.exists() and store.get_pending("app") is not None
        # The same secrets, without the SSH key: the appliance was left armed.
        record = await enroll_appliance(f"127.0.0.1:{app.port}", app.secrets, name="app", store=store)
    finally:
        await app.stop()
    assert record.pin == app.store.load_identity().pin
    assert [entry["pin"] for entry in app.store.authorized()] == [store.identity().pin]
    assert store.get_pending("app") is None and not app.store.sec_b_path.exists()


@pytest.mark.parametrize("step, committed", [("prepared", False), ("committed", True), ("applied", True),
                                             ])
async def test_a_lost_enrolled_is_recovered_by_the_same_call(tmp_path, step, committed):
    app = provisioned(tmp_path)
    store = TrustStore(tmp_path / "home")
    serve = Serve(app.store.path, kill_at=step)
    ports = (serve.enroll_port, serve.api_port)
    await serve.ready()
    address = f"127.0.0.1:{serve.enroll_port}"
    with pytest.raises(EnrollmentConnectionError, match="waited for the appliance to confirm the enrollment"):
        await enroll_appliance(address, app.secrets, name="app", store=store)
    serve.proc.wait(10)
    assert serve.proc.returncode == -signal.SIGKILL
    serve.stop()
    assert (app.store.load().phase == "enrolled") is committed
    assert store.get_pending("app") is not None  # kept before finish was sent
    again = Serve(app.store.path, ports=ports)
    await again.ready()
    try:
        record = await enroll_appliance(address, app.secrets, name="app", store=store)
        identity = await call("app", "GET", "/v1/identity", store=store)
        with pytest.raises(AlreadyPinned):
            await enroll_appliance(address, app.secrets, name="app", store=store)
    finally:
        log = again.stop()
    assert record.pin == identity["pin"] == app.store.load_identity().pin
    assert [entry["pin"] for entry in app.store.authorized()] == [store.identity().pin]
    assert store.get_pending("app") is None and not app.store.sec_b_path.exists()
    assert app.secrets.sec_b not in log


async def test_another_requester_cannot_recover_a_commit_that_is_not_its_own(tmp_path):
    app = provisioned(tmp_path)
    mine, theirs = TrustStore(tmp_path / "mine"), TrustStore(tmp_path / "theirs")
    serve = Serve(app.store.path)
    await serve.ready()
    address = f"127.0.0.1:{serve.enroll_port}"
    try:
        await enroll_appliance(address, app.secrets, name="app", store=mine)
        # Someone else with the same secrets and a stale pending pin for that appliance.
        theirs.identity()
        theirs.save_pending(dataclasses.replace(mine.get("app")))
        with pytest.raises(Exception) as refused:
            await enroll_appliance(address, app.secrets, name="app", store=theirs)
        assert getattr(refused.value, "code", None) == "unconfirmed"
    finally:
        serve.stop()
    with pytest.raises(Exception):
        theirs.get("app")
    assert [entry["pin"] for entry in app.store.authorized()] == [mine.identity().pin]


def test_replace_repins_a_name_held_by_another_appliance_and_says_what_it_replaced(tmp_path, monkeypatch, capsys):
    from firsttrust.identity import create_identity
    from firsttrust.requester import cli
    from firsttrust.requester.deployspec import secrets_to_json
    from firsttrust.requester.library import pin_certificate

    app = provisioned(tmp_path)
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    store = TrustStore(tmp_path / "home")
    old = create_identity("old")
    pin_certificate("app", "127.0.0.9", old.cert_pem, store=store)
    secrets = tmp_path / "s.json"
    secrets.write_bytes(secrets_to_json(app.secrets))
    secrets.chmod(0o600)
    serve = Serve(app.store.path)
    asyncio.run(serve.ready())
    try:
        argv = ["enroll", f"127.0.0.1:{serve.enroll_port}", "--secrets", str(secrets), "--name", "app"]
        assert cli.main(argv) == 1
        assert "already pinned to another appliance" in capsys.readouterr().err
        assert app.store.load().phase == "provisioned"  # refused before anything was sent
        assert cli.main(argv + ["--replace"]) == 0
        out, err = capsys.readouterr()
    finally:
        serve.stop()
    assert out.strip() == f"enrolled app: {app.store.load_identity().pin}"
    assert err.strip() == f"replaced app: 127.0.0.9 {old.pin}"
    assert store.get("app").pin == app.store.load_identity().pin


async def test_back_off_applies_when_the_proof_arrives_not_only_when_the_connection_opens(tmp_path,
                                                                                         requester_identity):
    """Two connections opened in advance both pass the gate; after the first one's wrong proof,
    the second one's proof meets the back-off (with retry_after) instead of buying a free guess."""
    import asyncio as _asyncio

    from firsttrust.credentials import EnrollmentSecrets
    from firsttrust.enrollment import ClientEnrollment
    from firsttrust.framing import HEADER, FrameDecoder

    async def read_frame(reader) -> bytes:
        header = await reader.readexactly(HEADER.size)
        return header + await reader.readexactly(HEADER.unpack(header)[0])

    app = provisioned(tmp_path)
    await app.start(phase_timeout=5.0, backoff_base=30.0)
    wrong = EnrollmentSecrets(EnrollmentSecrets.generate().sec_a, app.secrets.sec_b)
    try:
        streams, machines = [], []
        for secrets in (wrong, wrong):
            reader, writer = await _asyncio.open_connection("127.0.0.1", app.port)
            machine = ClientEnrollment(sec_a=secrets.sec_a, sec_b=secrets.sec_b,
                                       certificate=requester_identity.cert_der, name="guess")
            writer.write(machine.start()[0].data)
            streams.append((reader, writer))
            machines.append(machine)
        proofs = []
        for (reader, _), machine in zip(streams, machines):
            challenge = await _asyncio.wait_for(read_frame(reader), 10)
            proofs.append(machine.receive_data(challenge)[0].data)
        answers = []
        for (reader, writer), proof in zip(streams, proofs):
            writer.write(proof)
            await writer.drain()
            decoder = FrameDecoder()
            decoder.feed(await _asyncio.wait_for(reader.read(), 10))
            answers.append(decoder.next_frame().fields)
            writer.close()
    finally:
        await app.stop()
    assert answers[0]["code"] == "auth_failed"
    assert answers[1]["code"] == "backing_off" and 0 < answers[1]["retry_after"] <= 30
    assert app.store.load().failures == 1  # the second proof was never checked, nor charged
