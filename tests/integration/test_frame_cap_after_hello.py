"""After hello, a frame that announces more than the frame cap is refused from its header:
the agent answers frame_too_large at once, without waiting for (or buffering) a single body
byte. Before hello the front door's first-frame watch does the same (test_frontdoor.py)."""

import asyncio
import json

import pytest
from agent_fixture import provisioned

from firsttrust.enrollment import ClientEnrollment
from firsttrust.framing import HEADER
from firsttrust.limits import MAX_FRAME_BODY

PHASE_TIMEOUT = 5.0  # what an agent waiting for the announced body would wait


@pytest.fixture
async def appliance(tmp_path):
    app = provisioned(tmp_path)
    await app.start(phase_timeout=PHASE_TIMEOUT)
    yield app
    await app.stop()


async def read_frame(reader: asyncio.StreamReader) -> dict:
    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return json.loads(await reader.readexactly(length))


@pytest.mark.parametrize("announced", [MAX_FRAME_BODY + 1, 2**32 - 1])
async def test_an_oversized_frame_after_hello_is_refused_from_its_header(appliance, requester_identity, announced):
    client = ClientEnrollment(sec_a=appliance.secrets.sec_a, sec_b=appliance.secrets.sec_b,
                              certificate=requester_identity.cert_der, name="x")
    reader, writer = await asyncio.open_connection("127.0.0.1", appliance.port)
    try:
        writer.write(client.start()[0].data)
        assert (await read_frame(reader))["type"] == "challenge"
        writer.write(HEADER.pack(announced) + b"x" * 64)  # the header and a few body bytes, no more
        await writer.drain()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(PHASE_TIMEOUT / 2):
            reply = await read_frame(reader)
            assert await reader.read() == b""  # and the connection is closed
        assert reply["type"] == "error" and reply["code"] == "frame_too_large"
        assert loop.time() - started < PHASE_TIMEOUT / 2
    finally:
        writer.close()
    await appliance.settled()
