"""Issue #25: both doors under hostile clients, over loopback. The enrollment port's post-hello
phase (deadlines, caps, penalties, the hello rate), refusals that arrive, and the journal under
a flood. Deadlines are shortened through the server's arguments where the code allows; the
constants themselves are checked where noted."""

from __future__ import annotations

import asyncio
import base64
import socket
import time

import pytest
from agent_fixture import identity_files, provisioned

from firsttrust import limits
from firsttrust.enrollment import ClientEnrollment
from firsttrust.framing import HEADER, FrameDecoder, encode_frame


async def connect_from(port: int, source: str = "127.0.0.1"):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def read_frame(reader, timeout: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(4)
        return header + await reader.readexactly(HEADER.unpack(header)[0])


def fields(data: bytes) -> dict:
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    return {"type": frame.type, **frame.fields}


async def read_until_closed(reader, timeout: float) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data


# --- 3. one deadline per phase --------------------------------------------------------------


async def test_a_trickled_proof_holds_its_slot_no_longer_than_one_phase(tmp_path, requester_identity):
    """A client_proof header just before the phase deadline buys no second deadline for the body
    (issue #25 finding 3: 14 s + 14 s held a slot 29 s under a 15 s phase timeout)."""
    phase = 2.0
    app = provisioned(tmp_path)
    await app.start(phase_timeout=phase)
    try:
        reader, writer = await connect_from(app.port)
        machine = ClientEnrollment(sec_a=app.secrets.sec_a, sec_b=app.secrets.sec_b,
                                   certificate=requester_identity.cert_der, name="trickler")
        writer.write(machine.start()[0].data)
        proof = machine.receive_data(await read_frame(reader))[0].data
        started = time.monotonic()  # the phase (AWAIT_CLIENT_PROOF) began when challenge left
        await asyncio.sleep(phase * 0.7)
        writer.write(proof[:4])  # the header, just before the deadline
        await asyncio.sleep(phase * 0.6)
        with _nothing():
            writer.write(proof[4:5])  # one body byte, past the deadline: too late
        answer = await read_until_closed(reader, phase * 3)
        held = time.monotonic() - started
        assert fields(answer)["code"] == "timeout"
        assert held < phase + 1.0, f"the trickled proof held its slot {held:.1f} s under a {phase} s phase"
        await app.settled()
        assert app.server.unauthenticated == 0
        writer.close()
    finally:
        await app.stop()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return isinstance(exc[1], OSError)  # the agent may have closed already: that is the point


# --- 7. the lost-connection message names what was lost -------------------------------------


async def test_a_reset_connection_names_the_step_the_requester_was_waiting_for(tmp_path, requester_identity):
    """An appliance that resets the connection after hello: the requester says what it was
    waiting for and why, not "connection lost ()" (issue #25 finding 7)."""
    import struct

    from firsttrust.credentials import EnrollmentSecrets
    from firsttrust.requester.enroll import EnrollmentConnectionError, enroll

    async def reset_after_hello(reader, writer):
        await reader.readexactly(4)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer.transport.abort()

    server = await asyncio.start_server(reset_after_hello, "127.0.0.1", 0)
    try:
        with pytest.raises(EnrollmentConnectionError) as caught:
            await enroll("127.0.0.1", server.sockets[0].getsockname()[1], EnrollmentSecrets.generate(),
                         identity_files(tmp_path, requester_identity), name="x")
    finally:
        server.close()
    message = str(caught.value)
    assert "connection lost while waiting for the appliance's SRP challenge" in message, message
    assert "()" not in message and message.endswith(")"), message
    assert caught.value.retry_reason == "reset"
