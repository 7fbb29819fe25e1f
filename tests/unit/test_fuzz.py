"""Property tests: arbitrary bytes into the decoders and state machines end in typed errors."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firsttrust.enrollment import ClientEnrollment, ServerEnrollment
from firsttrust.errors import FirsttrustError
from firsttrust.framing import FrameDecoder, decode_body, encode_frame
from firsttrust.srp6a import new_verifier_record

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def record():
    return new_verifier_record(b"fuzz-password-1234567")


def frames_like():
    """Bytes that are often structurally valid frames, so the fuzzing reaches the handlers."""
    field = st.one_of(st.text(max_size=20), st.integers(), st.binary(max_size=40).map(lambda b: b.hex()),
                      st.none(), st.booleans())
    known = st.sampled_from(["hello", "challenge", "client_proof", "server_proof", "appliance_proof",
                             "finish", "enrolled", "error"])
    fields = st.dictionaries(st.sampled_from(["A", "B", "salt", "M1", "M2", "certificate", "commitment",
                                              "confirm", "name", "code", "message", "pin"]), field, max_size=4)
    framed = st.builds(lambda t, f: encode_frame(t, f), known, fields)
    return st.one_of(st.binary(max_size=300), framed)


@SETTINGS
@given(st.binary(max_size=2000))
def test_decode_body_raises_only_typed_errors(data):
    try:
        decode_body(data)
    except FirsttrustError:
        pass


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_frame_decoder_raises_only_typed_errors(chunks):
    dec = FrameDecoder()
    try:
        for chunk in chunks:
            dec.feed(chunk)
            while dec.next_frame() is not None:
                pass
        dec.close()
    except FirsttrustError:
        pass


@SETTINGS
@given(st.lists(frames_like(), min_size=1, max_size=4))
def test_server_machine_raises_only_typed_errors(record, appliance_identity, chunks):
    salt, verifier = record
    server = ServerEnrollment(salt=salt, verifier=verifier, sec_b="fuzz-sec-b-0123456789", api_port=1,
                              certificate=appliance_identity.cert_der)
    try:
        for chunk in chunks:
            server.receive_data(chunk)
        server.receive_eof()
    except FirsttrustError:
        assert server.state.value == "error" or server.error is None


@SETTINGS
@given(st.lists(frames_like(), min_size=1, max_size=4))
def test_client_machine_raises_only_typed_errors(requester_identity, chunks):
    client = ClientEnrollment(sec_a="fuzz-sec-a-0123456789", sec_b="fuzz-sec-b-0123456789",
                              certificate=requester_identity.cert_der, name="fuzz")
    client.start()
    try:
        for chunk in chunks:
            client.receive_data(chunk)
    except FirsttrustError:
        pass
