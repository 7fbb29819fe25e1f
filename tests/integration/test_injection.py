"""STARTTLS injection (docs/protocol.md section 7.2): plaintext queued behind the last plaintext
frame, in the same write or in a segment of its own, is `unexpected_frame` on both sides and is
never read as if TLS had protected it."""

import asyncio
import socket
import time

import pytest
from agent_fixture import identity_files, provisioned
from enrollment_driver import feed

from firsttrust.agent.server import Refusal
from firsttrust.enrollment import ClientEnrollment, SendFrame, ServerEnrollment, StartTLS
from firsttrust.errors import UnexpectedFrame
from firsttrust.framing import FrameDecoder, encode_frame
from firsttrust.identity import certificate_der
from firsttrust.requester.enroll import enroll

INJECTED = encode_frame("finish", {"confirm": "A" * 43 + "=", "name": "injected"})


def slow_before_tls(monkeypatch, module, check: str) -> None:
    """Make the driver's look right before the TLS upgrade (at the kernel's receive buffer) start
    0.3 s late, so a segment sent 0.1 s after the last plaintext frame deterministically arrives
    between that frame and the upgrade: the separate-segment case, not the same-read one."""
    original = getattr(module, check)

    def delayed(*args):
        time.sleep(0.3)  # blocking on purpose: the event loop must not read the segment first
        return original(*args)

    monkeypatch.setattr(module, check, delayed)


def read_frame_blocking(sock: socket.socket) -> bytes:
    header = sock.recv(4, socket.MSG_WAITALL)
    return header + sock.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)


def frames_of(data: bytes) -> list:
    decoder, frames = FrameDecoder(), []
    decoder.feed(data)
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def inject_behind_the_proof(port: int, client: ClientEnrollment, separate: bool) -> bytes:
    """hello, then client_proof with INJECTED behind it (in the same write, or 0.1 s later in a
    segment of its own); everything the appliance answers until it closes. Blocking sockets, run in
    a thread: the agent's loop may block meanwhile."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(client.start()[0].data)
        (client_proof,) = client.receive_data(read_frame_blocking(sock))
        if separate:
            sock.sendall(client_proof.data)
            time.sleep(0.1)
            sock.sendall(INJECTED)
        else:
            sock.sendall(client_proof.data + INJECTED)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("separate", [False, True], ids=["same-write", "separate-segment"])
async def test_plaintext_behind_client_proof_is_refused_by_the_appliance(tmp_path, requester_identity, separate,
                                                                         monkeypatch):
    import firsttrust.agent.conversation as server_module
    if separate:
        slow_before_tls(monkeypatch, server_module, "_peek_plaintext")
    app = provisioned(tmp_path)
    await app.start()
    client = ClientEnrollment(sec_a=app.secrets.sec_a, sec_b=app.secrets.sec_b,
                              certificate=requester_identity.cert_der, name="attacker")

    try:
        answer = await asyncio.to_thread(inject_behind_the_proof, app.port, client, separate)
        await app.settled()
    finally:
        await app.stop()
    frames = frames_of(answer)
    assert frames[-1].type == "error" and frames[-1].fields["code"] == "unexpected_frame", frames
    # Same write: refused before server_proof. Separate segment: after it, before any TLS byte.
    assert [f.type for f in frames] == (["server_proof", "error"] if separate else ["error"])
    assert app.store.authorized() == [] and app.store.load().phase == "provisioned"


async def test_plaintext_arriving_while_the_proof_is_charged_is_refused_by_the_appliance(tmp_path,
                                                                                        requester_identity):
    """The segment behind client_proof arrives while the agent writes the proof's charge (made
    slow here): the agent stopped reading at the charge point, so the bytes wait in the kernel
    and the look before the upgrade refuses them; had it gone on reading, they would sit in the
    stream, unseen, and be read after the upgrade as if TLS had protected them."""
    app = provisioned(tmp_path)
    await app.start()
    original_charge = app.gate._charge

    def slow_charge():
        time.sleep(0.3)  # in the gate's worker thread: the event loop goes on meanwhile
        return original_charge()

    app.gate._charge = slow_charge
    client = ClientEnrollment(sec_a=app.secrets.sec_a, sec_b=app.secrets.sec_b,
                              certificate=requester_identity.cert_der, name="attacker")

    try:
        answer = await asyncio.to_thread(inject_behind_the_proof, app.port, client, True)
        await app.settled()
    finally:
        await app.stop()
    frames = frames_of(answer)
    assert [(f.type, f.fields.get("code")) for f in frames] == [("server_proof", None), ("error", "unexpected_frame")]
    assert app.store.authorized() == [] and app.store.load().failures == 0  # M1 verified: refunded


@pytest.mark.parametrize("earlier_failures", [0, 6])
@pytest.mark.parametrize("separate", [False, True], ids=["same-write", "separate-segment"])
async def test_an_injected_frame_behind_a_correct_proof_does_not_spend_the_requesters_attempt(
        tmp_path, requester_identity, separate, monkeypatch, earlier_failures):
    """An on-path injector appends a frame to the legitimate requester's correct client_proof:
    refused (above), but M1 verified, so the charge made before the verdict is refunded:
    failures stays as it was and no back-off starts (docs/protocol.md section 9). With earlier
    failures (their back-off long over), the refund put the count back but not the back-off
    clock: the requester's retry got `backing_off` for 32 s."""
    import firsttrust.agent.conversation as server_module
    if separate:
        slow_before_tls(monkeypatch, server_module, "_peek_plaintext")
    app = provisioned(tmp_path)
    state = app.store.load()
    state.failures = earlier_failures
    app.store.save(state)
    await app.start(backoff_base=1.0)
    client = ClientEnrollment(sec_a=app.secrets.sec_a, sec_b=app.secrets.sec_b,
                              certificate=requester_identity.cert_der, name="victim")
    charged = []
    original_charge = app.gate._charge
    app.gate._charge = lambda: (charged.append(1), original_charge())[1]

    def victim_and_injector() -> bytes:
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(client.start()[0].data)
            (client_proof,) = client.receive_data(read_frame_blocking(sock))
            sock.sendall(client_proof.data + (b"" if separate else INJECTED))
            if separate:
                time.sleep(0.1)
                sock.sendall(INJECTED)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    try:
        answer = await asyncio.to_thread(victim_and_injector)
        await app.settled()
        assert frames_of(answer)[-1].fields["code"] == "unexpected_frame"
        assert charged == [1]  # the attempt was charged before its verdict left...
        assert app.store.load().failures == earlier_failures  # ...and refunded once M1 verified
        assert not isinstance(app.gate.check(), Refusal)  # no back-off: the requester may retry at once
    finally:
        await app.stop()


@pytest.mark.parametrize("separate", [False, True], ids=["same-write", "separate-segment"])
async def test_plaintext_behind_server_proof_is_refused_by_the_requester(tmp_path, requester_identity,
                                                                          appliance_identity, separate, monkeypatch):
    import firsttrust.requester.enroll as enroll_module
    if separate:
        slow_before_tls(monkeypatch, enroll_module, "unread_in_kernel")
    app = provisioned(tmp_path)
    state = app.store.load()
    server = ServerEnrollment(salt=bytes.fromhex(state.srp_salt), verifier=bytes.fromhex(state.srp_verifier),
                              sec_b=app.secrets.sec_b, certificate=appliance_identity.cert_der, api_port=8791)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def fake_appliance() -> bytes:  # a thread with blocking sockets: the requester's loop may block
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sendall(server.receive_data(read_frame_blocking(conn))[0].data)
            events = feed(server, read_frame_blocking(conn))[1:]  # after ProofVerified
            assert isinstance(events[0], SendFrame) and isinstance(events[1], StartTLS)
            if separate:
                conn.sendall(events[0].data)
                time.sleep(0.1)
                conn.sendall(INJECTED)
            else:
                conn.sendall(events[0].data + INJECTED)
            said = b""
            while chunk := conn.recv(65536):
                said += chunk
            return said

    heard_back = asyncio.ensure_future(asyncio.to_thread(fake_appliance))
    try:
        with pytest.raises(UnexpectedFrame):
            await enroll("127.0.0.1", listener.getsockname()[1], app.secrets,
                         identity_files(tmp_path, requester_identity), name="victim")
        said = await asyncio.wait_for(heard_back, 10)
    finally:
        listener.close()
    # The requester told the appliance why, in plaintext, and sent no TLS ClientHello.
    assert [(f.type, f.fields["code"]) for f in frames_of(said)] == [("error", "unexpected_frame")]
