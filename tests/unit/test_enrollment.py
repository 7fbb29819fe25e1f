"""The enrollment state machines, driven with bytes and events only."""

import base64
import gc
import json
import struct
import weakref

import pytest
from enrollment_driver import feed, run

from firsttrust import limits
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.enrollment import (
    Authorization,
    ClientEnrolled,
    ClientEnrollment,
    EnrollmentResult,
    PendingPin,
    PersistAuthorization,
    ProofReceived,
    ProofVerified,
    SendFrame,
    ServerEnrolled,
    ServerEnrollment,
    StartTLS,
    State,
)
from firsttrust.errors import (
    AuthenticationFailed,
    BindingFailed,
    ConfirmationFailed,
    FirsttrustError,
    FrameTooLarge,
    InvalidField,
    InvalidSecret,
    InvalidSRPParameter,
    MalformedFrame,
    PeerRefused,
    SecBProofFailed,
    StateError,
    TruncatedFrame,
    UnexpectedFrame,
    UnknownFrameType,
    UnsupportedVersion,
)
from firsttrust.framing import encode_frame
from firsttrust.identity import pin_of_certificate
from firsttrust.srp6a import GROUP_3072_SHA512, new_verifier_record

N = GROUP_3072_SHA512.N
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB6jexample user@bringup"


class Pair:
    """A client and a server for one appliance, stepped by hand."""

    def __init__(self, secrets, requester, appliance, *, client_secrets=None, server_sec_b=None,
                 client_cert=None, server_cert=None):
        self.secrets = secrets
        client_secrets = client_secrets or secrets
        self.salt, self.verifier = new_verifier_record(secrets.sec_a.encode())
        self.ccert = client_cert or requester.cert_der
        self.scert = server_cert or appliance.cert_der
        self.client = ClientEnrollment(sec_a=client_secrets.sec_a, sec_b=client_secrets.sec_b,
                                       certificate=self.ccert, name="bringup-01", ssh_key=SSH_KEY)
        self.server = ServerEnrollment(salt=self.salt, verifier=self.verifier,
                                       sec_b=server_sec_b or secrets.sec_b, certificate=self.scert,
                                       api_port=8443, ssh_host_keys=("ssh-ed25519 AAAAhostkey root@appliance",))

    def hello(self):
        return only_send(self.client.start())

    def challenge(self):
        return only_send(feed(self.server, self.hello()))

    def client_proof(self):
        return only_send(feed(self.client, self.challenge()))

    def server_proof(self):
        # The charge point, the verdict, then the answer: three calls, as the agent drives them.
        assert self.server.receive_data(self.client_proof()) == [ProofReceived()]
        assert self.server.check_proof() == [ProofVerified()]
        events = self.server.proceed()
        assert isinstance(events[0], SendFrame) and isinstance(events[1], StartTLS)
        assert events[1].peer_certificate == self.ccert
        return events[0].data

    def through_tls(self):
        events = feed(self.client, self.server_proof())
        assert events == [StartTLS(peer_certificate=self.scert)]
        appliance_proof = only_send(self.server.tls_established(self.ccert))
        assert self.client.tls_established(self.scert) == []
        return appliance_proof

    def finish(self):
        events = feed(self.client, self.through_tls())
        # The requester is told to keep the verified appliance as a pending pin BEFORE it sends finish.
        assert [type(e) for e in events] == [PendingPin, SendFrame], events
        assert events[0] == PendingPin(pin_of_certificate(self.scert), self.scert, 8443)
        return events[1].data


def only_send(events):
    assert len(events) == 1 and isinstance(events[0], SendFrame), events
    return events[0].data


def fields_of(frame: bytes) -> dict:
    return json.loads(frame[4:])


def rebuild(frame: bytes, **changes) -> bytes:
    fields = fields_of(frame)
    fields.update(changes)
    kind = fields.pop("type")
    fields.pop("v")
    return encode_frame(kind, fields)


def flip(b64: str) -> str:
    data = bytearray(base64.b64decode(b64))
    data[0] ^= 1
    return base64.b64encode(bytes(data)).decode()


@pytest.fixture
def pair(secrets, requester_identity, appliance_identity):
    return Pair(secrets, requester_identity, appliance_identity)


# --- the happy path ---------------------------------------------------------------------------


def test_enrollment_succeeds_and_both_sides_hold_the_others_pin(pair, requester_identity, appliance_identity):
    record = run(pair.client, pair.server, client_cert=pair.ccert, server_cert=pair.scert)
    assert isinstance(record.client_result, EnrollmentResult)
    assert isinstance(record.server_result, Authorization)
    assert record.client_result.appliance_pin == appliance_identity.pin
    assert record.client_result.appliance_certificate == appliance_identity.cert_der
    assert record.client_result.ssh_host_keys == ("ssh-ed25519 AAAAhostkey root@appliance",)
    assert record.client_result.api_port == 8443
    assert record.server_result.requester_pin == requester_identity.pin
    assert record.server_result.ssh_key == SSH_KEY and record.server_result.name == "bringup-01"
    assert record.persisted == [record.server_result]
    assert pair.client.state is pair.server.state is State.DONE
    assert [fields_of(f)["type"] for f in record.client_frames] == ["hello", "client_proof", "finish"]
    assert [fields_of(f)["type"] for f in record.server_frames] == [
        "challenge", "server_proof", "appliance_proof", "enrolled"]


def test_server_answers_enrolled_only_after_persisting(pair):
    finish = pair.finish()
    events = feed(pair.server, finish)
    assert len(events) == 1 and isinstance(events[0], PersistAuthorization)
    assert pair.server.state is State.PERSISTING and pair.server.timeout == limits.PERSIST_TIMEOUT
    events = pair.server.authorization_persisted()
    assert isinstance(events[0], SendFrame) and fields_of(events[0].data)["type"] == "enrolled"
    assert isinstance(events[1], ServerEnrolled) and isinstance(events[1].authorization, Authorization)
    with pytest.raises(StateError):
        pair.server.authorization_persisted()


def test_no_secret_appears_in_any_frame(pair):
    record = run(pair.client, pair.server, client_cert=pair.ccert, server_cert=pair.scert)
    wire = b"".join(record.client_frames + record.server_frames)
    for secret in (pair.secrets.sec_a, pair.secrets.sec_b):
        assert secret.encode() not in wire
        assert base64.b64encode(secret.encode()) not in wire
    assert "hidden" in repr(pair.secrets) and pair.secrets.sec_a not in repr(pair.secrets)


def test_timeouts_and_layers_follow_the_state(pair):
    assert pair.server.timeout == limits.PHASE_TIMEOUT and not pair.server.uses_tls
    pair.through_tls()
    assert pair.client.uses_tls and pair.server.uses_tls


# --- wrong secrets --------------------------------------------------------------------------


def test_wrong_sec_a_is_refused_by_the_server(secrets, requester_identity, appliance_identity):
    other = EnrollmentSecrets.generate()
    p = Pair(secrets, requester_identity, appliance_identity, client_secrets=other)
    with pytest.raises(AuthenticationFailed) as info:
        p.server_proof()
    assert info.value.code == "auth_failed"
    error = p.server.error_frame()
    assert fields_of(error)["code"] == "auth_failed"
    with pytest.raises(PeerRefused) as refused:
        feed(p.client, error)
    assert refused.value.code == "auth_failed"
    assert p.client.error_frame() is None  # nothing to answer an error frame with
    assert p.server.state is State.ERROR  # a wrong M1: no ProofVerified, the one failed guess stays charged
    for secret in (secrets.sec_a, other.sec_a, secrets.sec_b):
        assert secret not in str(info.value) and secret.encode() not in error


def test_wrong_sec_b_is_a_forged_appliance_and_the_requester_sends_nothing_in_tls(
        secrets, requester_identity, appliance_identity):
    forged = EnrollmentSecrets.generate()
    p = Pair(secrets, requester_identity, appliance_identity, server_sec_b=forged.sec_b)
    appliance_proof = p.through_tls()
    with pytest.raises(SecBProofFailed) as info:
        feed(p.client, appliance_proof)
    assert info.value.code == "sec_b_failed"
    assert p.client.state is State.ERROR


def test_a_server_without_the_verifier_fails_m2(secrets, requester_identity, appliance_identity, pair):
    # A server that guesses: right frames, wrong verifier.
    hello = pair.hello()
    rogue = ServerEnrollment(salt=pair.salt, verifier=new_verifier_record(b"guess" * 5)[1], sec_b=secrets.sec_b,
                             certificate=pair.scert, api_port=1)
    challenge = only_send(feed(rogue, hello))
    client_proof = only_send(feed(pair.client, challenge))
    with pytest.raises(AuthenticationFailed):
        feed(rogue, client_proof)
    # Even if the rogue answered with a made-up M2, the client refuses it.
    fake = encode_frame("server_proof", {"M2": base64.b64encode(b"\1" * 64).decode(),
                                         "certificate": base64.b64encode(pair.scert).decode(),
                                         "commitment": base64.b64encode(b"\2" * 32).decode()})
    with pytest.raises(AuthenticationFailed):
        feed(pair.client, fake)


# --- bad SRP public values ------------------------------------------------------------------------


@pytest.mark.parametrize("A, error", [(0, InvalidSRPParameter), (N, InvalidSRPParameter), (2 * N, InvalidField)])
def test_server_rejects_bad_A(pair, A, error):
    length = max(384, (A.bit_length() + 7) // 8)
    hello = encode_frame("hello", {"A": base64.b64encode(A.to_bytes(length, "big")).decode()})
    with pytest.raises(error):
        feed(pair.server, hello)
    assert fields_of(pair.server.error_frame())["code"] == error.code


@pytest.mark.parametrize("B", [0, N])
def test_client_rejects_bad_B(pair, B):
    pair.hello()
    challenge = encode_frame("challenge", {"salt": base64.b64encode(pair.salt).decode(),
                                           "B": base64.b64encode(B.to_bytes(384, "big")).decode()})
    with pytest.raises(InvalidSRPParameter):
        feed(pair.client, challenge)


# --- binding TLS to SRP -------------------------------------------------------------------------------


def test_tampered_requester_commitment(pair):
    client_proof = pair.client_proof()
    bad = rebuild(client_proof, commitment=flip(fields_of(client_proof)["commitment"]))
    assert pair.server.receive_data(bad) == [ProofReceived()]
    assert pair.server.check_proof() == [ProofVerified()]  # M1 was right: not a failed guess (refunded)
    with pytest.raises(BindingFailed):
        pair.server.proceed()


def test_a_correct_proof_with_bytes_behind_it_is_refused_but_reported_verified(pair):
    """STARTTLS injection behind a correct client_proof (section 7.2): refused, yet M1 verified,
    so the attempt is not a failed guess and the agent refunds its charge (section 9)."""
    client_proof = pair.client_proof()
    behind = encode_frame("finish", {"confirm": "A" * 43 + "=", "name": "x"})
    assert pair.server.receive_data(client_proof + behind) == [ProofReceived()]  # the charge point first
    assert pair.server.check_proof() == [ProofVerified()]  # the verdict: M1 verified
    with pytest.raises(UnexpectedFrame):
        pair.server.proceed()
    assert pair.server.state is State.ERROR


def test_the_proof_is_checked_only_when_the_driver_says_so(pair):
    """Between ProofReceived and check_proof the machine takes no data and answers nothing, and
    proceed before the verdict is a local mistake, not the peer's."""
    assert pair.server.receive_data(pair.client_proof()) == [ProofReceived()]
    with pytest.raises(StateError):
        pair.server.receive_data(b"\0")
    with pytest.raises(StateError):
        pair.server.proceed()
    assert pair.server.check_proof() == [ProofVerified()]
    with pytest.raises(StateError):
        pair.server.check_proof()
    assert [type(e) for e in pair.server.proceed()] == [SendFrame, StartTLS]


def test_tampered_appliance_commitment(pair):
    server_proof = pair.server_proof()
    bad = rebuild(server_proof, commitment=flip(fields_of(server_proof)["commitment"]))
    with pytest.raises(BindingFailed):
        feed(pair.client, bad)


def test_relay_cannot_swap_the_requester_certificate_in_plaintext(pair, stranger_identity):
    client_proof = pair.client_proof()
    bad = rebuild(client_proof, certificate=base64.b64encode(stranger_identity.cert_der).decode())
    with pytest.raises(BindingFailed):
        feed(pair.server, bad)


def test_relay_cannot_swap_the_appliance_certificate_in_plaintext(pair, stranger_identity):
    server_proof = pair.server_proof()
    bad = rebuild(server_proof, certificate=base64.b64encode(stranger_identity.cert_der).decode())
    with pytest.raises(BindingFailed):
        feed(pair.client, bad)


def test_server_refuses_a_tls_client_certificate_other_than_the_committed_one(pair, stranger_identity):
    record_error = None
    try:
        run(pair.client, pair.server, client_cert=pair.ccert, server_cert=pair.scert,
            presented_to_server=stranger_identity.cert_der)
    except BindingFailed as exc:
        record_error = exc
    assert record_error is not None and pair.server.state is State.ERROR
    assert pair.server.error.code == "binding_failed"


def test_client_refuses_a_tls_server_certificate_other_than_the_committed_one(pair, stranger_identity):
    feed(pair.client, pair.server_proof())
    with pytest.raises(BindingFailed):
        pair.client.tls_established(stranger_identity.cert_der)


@pytest.mark.parametrize("side", ["client", "server"])
def test_no_tls_certificate_at_all(pair, side):
    feed(pair.client, pair.server_proof())
    with pytest.raises(BindingFailed, match="presented no certificate"):
        getattr(pair, side).tls_established(None)


def test_tampered_confirmations(pair):
    appliance_proof = pair.through_tls()
    bad = rebuild(appliance_proof, confirm=flip(fields_of(appliance_proof)["confirm"]))
    with pytest.raises(ConfirmationFailed):
        feed(pair.client, bad)


def test_tampered_requester_confirmation(pair):
    finish = pair.finish()
    with pytest.raises(ConfirmationFailed):
        feed(pair.server, rebuild(finish, confirm=flip(fields_of(finish)["confirm"])))


def test_enrolled_with_another_pin_is_refused(pair):
    finish = pair.finish()
    feed(pair.server, finish)
    enrolled = pair.server.authorization_persisted()[0].data
    with pytest.raises(BindingFailed):
        feed(pair.client, rebuild(enrolled, pin="sha256:" + "00" * 32))


# --- order, repetition, truncation, garbage -------------------------------------------------------------


def test_server_frame_out_of_order(pair):
    with pytest.raises(UnexpectedFrame):
        feed(pair.server, encode_frame("finish", {"confirm": "A" * 43 + "=", "name": "x"}))


def test_repeated_hello(pair):
    hello = pair.hello()
    feed(pair.server, hello)
    with pytest.raises(UnexpectedFrame):
        feed(pair.server, hello)


def test_client_frame_out_of_order(pair):
    server_proof = pair.server_proof()
    fresh = Pair(pair.secrets, *_identities(pair))
    fresh.hello()
    with pytest.raises(UnexpectedFrame):
        feed(fresh.client, server_proof)


def _identities(pair):
    class I:  # noqa: E742 - minimal identity stand-ins
        def __init__(self, der):
            self.cert_der = der
    return I(pair.ccert), I(pair.scert)


def test_frame_after_the_end(pair):
    run(pair.client, pair.server, client_cert=pair.ccert, server_cert=pair.scert)
    with pytest.raises(UnexpectedFrame):
        feed(pair.server, encode_frame("hello", {"A": "AA=="}))


def test_bytes_after_finish_in_the_same_read(pair):
    finish = pair.finish()
    with pytest.raises(UnexpectedFrame):
        feed(pair.server, finish + b"\0")


def test_data_while_persisting(pair):
    feed(pair.server, pair.finish())
    with pytest.raises(UnexpectedFrame):
        feed(pair.server, b"\0")


def test_server_checks_its_own_enrolled_fields(pair):
    with pytest.raises(InvalidField):
        ServerEnrollment(salt=pair.salt, verifier=pair.verifier, sec_b=pair.secrets.sec_b, certificate=pair.scert,
                         api_port=8443, ssh_host_keys=("ssh-ed25519 AAAA host\n",))
    with pytest.raises(InvalidField):
        ServerEnrollment(salt=pair.salt, verifier=pair.verifier, sec_b=pair.secrets.sec_b, certificate=pair.scert,
                         api_port=0)


def test_lockstep_no_bytes_after_the_last_plaintext_frame(pair):
    client_proof = pair.client_proof()
    with pytest.raises(UnexpectedFrame):
        feed(pair.server, client_proof + b"\x16\x03\x01")


def test_lockstep_client_side(pair):
    server_proof = pair.server_proof()
    with pytest.raises(UnexpectedFrame):
        feed(pair.client, server_proof + b"\0")


def test_plaintext_before_the_tls_handshake_is_an_injection_on_the_appliance(pair):
    pair.server_proof()
    with pytest.raises(UnexpectedFrame, match="before the TLS handshake"):
        feed(pair.server, encode_frame("finish", {"confirm": "AAAA", "name": "x"}))
    assert pair.server.error_frame() is not None and b"unexpected_frame" in pair.server.error_frame()


def test_plaintext_before_the_tls_handshake_is_an_injection_on_the_requester(pair):
    feed(pair.client, pair.server_proof())
    with pytest.raises(UnexpectedFrame, match="before the TLS handshake"):
        feed(pair.client, b"\x00\x00\x00\x02{}")
    assert b"unexpected_frame" in pair.client.error_frame()


def test_truncated_frame_then_eof(pair):
    hello = pair.hello()
    assert feed(pair.server, hello[:-10]) == []
    with pytest.raises(TruncatedFrame):
        pair.server.receive_eof()


def test_eof_between_frames_before_done(pair):
    feed(pair.server, pair.hello())
    with pytest.raises(TruncatedFrame):
        pair.server.receive_eof()


def test_eof_after_done_is_fine(pair):
    done = run(pair.client, pair.server, client_cert=pair.ccert, server_cert=pair.scert)
    assert done.client_result is not None
    pair.client.receive_eof()
    assert pair.client.state is State.DONE and pair.client.error is None and pair.client.error_frame() is None


@pytest.mark.parametrize("data, error", [
    (struct.pack(">I", limits.MAX_FRAME_BODY + 1), FrameTooLarge),
    (struct.pack(">I", 8) + b"not json", MalformedFrame),
    (struct.pack(">I", 2) + b"\xc3\x28", MalformedFrame),
    (encode_frame("hello", {"A": "AA=="})[:4] + b'{"A":"AA==","type":"hello","v":9}'[:30], None),
    (struct.pack(">I", 25) + b'{"v":9,"type":"hello"}   ', UnsupportedVersion),
    (struct.pack(">I", 25) + b'{"v":1,"type":"howdy"}   ', UnknownFrameType),
    (encode_frame("hello", {"A": "!!!!"}), InvalidField),
    (encode_frame("hello", {"A": base64.b64encode(b"\1" * 100).decode()}), InvalidField),
    (encode_frame("hello", {"A": base64.b64encode(b"\1" * 384).decode(), "extra": 1}), InvalidField),
])
def test_garbage_ends_in_a_typed_error(pair, data, error):
    if error is None:  # an incomplete frame just waits for more bytes
        assert feed(pair.server, data) == []
        return
    with pytest.raises(error) as info:
        feed(pair.server, data)
    assert fields_of(pair.server.error_frame())["code"] == info.value.code
    with pytest.raises(StateError):  # and the machine stays failed
        feed(pair.server, pair.hello())


def test_peer_error_frame_becomes_peer_refused(pair):
    pair.hello()
    with pytest.raises(PeerRefused) as info:
        feed(pair.client, encode_frame("error", {"code": "locked_out", "message": "too many failures"}))
    assert info.value.code == "locked_out" and "too many failures" in str(info.value)


def test_abort_gives_an_error_frame_and_ends_the_machine(pair):
    frame = pair.server.abort("timeout", "no hello within 15 s")
    assert fields_of(frame) == {"v": 1, "type": "error", "code": "timeout", "message": "no hello within 15 s"}
    assert pair.server.error.code == "timeout"
    with pytest.raises(StateError):
        feed(pair.server, pair.hello())


def test_start_twice(pair):
    pair.client.start()
    with pytest.raises(StateError):
        pair.client.start()


# --- construction and determinism ---------------------------------------------------------------------


def test_client_checks_its_own_inputs_clearly(pair):
    with pytest.raises(InvalidField):
        ClientEnrollment(sec_a=pair.secrets.sec_a, sec_b=pair.secrets.sec_b, certificate=pair.ccert,
                         name="no spaces allowed")
    with pytest.raises(InvalidField):
        ClientEnrollment(sec_a=pair.secrets.sec_a, sec_b=pair.secrets.sec_b, certificate=pair.ccert,
                         name="ok", ssh_key="not an ssh key")
    with pytest.raises(InvalidSecret) as info:
        ClientEnrollment(sec_a="short secret", sec_b=pair.secrets.sec_b, certificate=pair.ccert, name="ok")
    assert "short secret" not in str(info.value)


def test_injected_randomness_makes_transcripts_reproducible(pair, requester_identity, appliance_identity):
    def frames():
        seeds = iter([b"\x11" * 32, b"\x22" * 32])
        c = ClientEnrollment(sec_a=pair.secrets.sec_a, sec_b=pair.secrets.sec_b, certificate=pair.ccert,
                             name="n", random=lambda n: next(seeds), clock=lambda: 5.0)
        s = ServerEnrollment(salt=pair.salt, verifier=pair.verifier, sec_b=pair.secrets.sec_b,
                             certificate=pair.scert, api_port=1, random=lambda n: next(seeds), clock=lambda: 6.0)
        r = run(c, s, client_cert=pair.ccert, server_cert=pair.scert)
        return r.client_frames + r.server_frames, r.server_result.enrolled_at, r.client_result.enrolled_at

    first, second = frames(), frames()
    assert first == second and first[1:] == (6.0, 5.0)


def test_every_error_is_a_firsttrust_error_with_a_stable_code():
    from firsttrust.errors import all_codes
    codes = all_codes()
    for code in ("auth_failed", "bad_srp_parameter", "binding_failed", "sec_b_failed", "confirm_failed",
                 "frame_too_large", "malformed_frame", "truncated_frame", "unsupported_version",
                 "unknown_type", "unexpected_frame", "invalid_field", "locked_out", "already_enrolled"):
        assert code in codes
    assert issubclass(PeerRefused, FirsttrustError)


def test_machines_that_ran_an_enrollment_are_freed_with_their_last_reference_not_by_the_cycle_collector(
        secrets, requester_identity, appliance_identity):
    """A machine that is a reference cycle (e.g. a table of its own bound methods) is freed only
    by the cyclic garbage collector: on a host running many enrollments that is CPU spent on each
    (bench/README.md, "Garbage"). Both roles, through every handler up to finish."""
    gc.disable()
    try:
        pair = Pair(secrets, requester_identity, appliance_identity)
        events = feed(pair.server, pair.finish())
        assert [type(e) for e in events] == [PersistAuthorization]
        machines = [weakref.ref(pair.client), weakref.ref(pair.server)]
        del pair, events
        assert [m() for m in machines] == [None, None]
    finally:
        gc.enable()
