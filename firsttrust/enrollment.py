"""The enrollment state machines: ServerEnrollment (appliance) and ClientEnrollment (requester).

Everything revolves around these two objects. Like h11's Connection they never touch a socket:
bytes go in (`receive_data`, `tls_established`, `authorization_persisted`), events come out
(`SendFrame`, `StartTLS`, `PersistAuthorization`, `ServerEnrolled`/`ClientEnrolled`, and on the
appliance `ProofReceived` then `ProofVerified`). The driver in agent/ or requester/ only moves
bytes, upgrades the stream when told, reports the peer's certificate, and persists what it is
told to persist: it never asks a machine what state it is in. The machine is also the framing
layer: the driver feeds it whatever the stream delivered, and bytes behind the last plaintext
frame (h11's `trailing_data`) are refused here, never left for the driver to find.

Message flow (docs/protocol.md has every byte):

    requester (client)                                   appliance (server)
    hello {A}                      ------------------->
                                   <-------------------  challenge {salt, B}
    client_proof {M1, cert, commitment} -------------->
                                   <-------------------  server_proof {M2, cert, commitment}
    ========================= STARTTLS, TLS 1.3, both certificates =========================
                                   <-------------------  appliance_proof {sec_b_proof, confirm, api_port}
    (keep the verified appliance as a pending pin)
    finish {confirm, name, ssh_key?} ----------------->
                                                         (prepare, commit, apply the grant)
                                   <-------------------  enrolled {pin, ssh_host_keys, api_port}

Any error puts the machine into ERROR for good; every later call raises StateError. Errors the
peer caused carry an error frame for the driver to send before it closes (`error_frame`).

One module of ~650 lines, above the ~450 the project aims for, on purpose: both roles share the
base class, the events, the states and their timeouts, and a reader follows the one message flow
above from hello to enrolled without changing files (h11 keeps its Connection whole the same
way). The frames' fields are in firsttrust/messages.py, the keys in firsttrust/keyschedule.py.
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Union

from . import limits
from .credentials import validate_secret
from .errors import (
    BindingFailed,
    ConfirmationFailed,
    FirsttrustError,
    InvalidField,
    PeerRefused,
    ProtocolError,
    SecBProofFailed,
    StateError,
    TruncatedFrame,
    UnexpectedFrame,
)
from .framing import Frame, FrameDecoder, encode_error, encode_frame
from .identity import InvalidCertificate, certificate_der, pin_of_certificate
from .keyschedule import KeySchedule, equal
from .messages import (
    SCHEMAS,
    ApplianceProofMessage,
    ChallengeMessage,
    ClientProofMessage,
    EnrolledMessage,
    ErrorMessage,
    FinishMessage,
    HelloMessage,
    ServerProofMessage,
    b64encode,
    parse,
)
from .srp6a import EPHEMERAL_BYTES, GROUP_3072_SHA512, SRPClient, SRPGroup, SRPServer

RandomBytes = Callable[[int], bytes]
FINISH_FIELDS = SCHEMAS["finish"]
_ENROLLED_FIELDS = SCHEMAS["enrolled"]
Clock = Callable[[], float]


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendFrame:
    """Write these bytes to the peer (on the current layer: plaintext or TLS)."""

    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """Upgrade the stream to TLS 1.3 now. Trust exactly `peer_certificate` (DER) in the
    handshake and present your own; then call `tls_established` with what the peer presented."""

    peer_certificate: bytes


@dataclass(frozen=True)
class Authorization:
    """What the appliance must persist, atomically, before it may answer "enrolled"."""

    requester_pin: str
    requester_certificate: bytes = field(repr=False)  # DER
    name: str
    ssh_key: str | None
    enrolled_at: float


@dataclass(frozen=True)
class PersistAuthorization:
    authorization: Authorization


@dataclass(frozen=True)
class EnrollmentResult:
    """What the requester learned, every part of it verified."""

    appliance_pin: str
    appliance_certificate: bytes = field(repr=False)  # DER
    ssh_host_keys: tuple[str, ...]
    api_port: int
    enrolled_at: float


@dataclass(frozen=True)
class PendingPin:
    """Requester side, before `finish`: the appliance has passed every check (SRP, commitment,
    TLS binding, SEC-B proof, key confirmation). The driver stores this durably BEFORE it sends
    `finish`: if `enrolled` is then lost, the requester confirms the commit over the pinned API
    with its own key instead of trusting anything new (docs/protocol.md, recovery)."""

    appliance_pin: str
    appliance_certificate: bytes = field(repr=False)  # DER
    api_port: int


@dataclass(frozen=True)
class ServerEnrolled:
    """Appliance side: enrollment is complete; `authorization` is what the driver persisted."""

    authorization: Authorization


@dataclass(frozen=True)
class ClientEnrolled:
    """Requester side: enrollment is complete; only now may the requester pin the appliance."""

    result: EnrollmentResult


@dataclass(frozen=True)
class ProofReceived:
    """Appliance side, the charge point: a complete `client_proof` has arrived and is about to be
    checked. The machine takes no further data now; the driver counts the attempt (durably,
    docs/protocol.md section 9) and then calls `check_proof`."""


@dataclass(frozen=True)
class ProofVerified:
    """Appliance side, the verdict: M1 verified, the peer knows SEC-A. Whatever fails after this
    (a binding failure, bytes injected behind the proof, a timeout) is not a failed guess. A
    wrong M1 is AuthenticationFailed, raised instead. The driver then calls `proceed`."""


Event = Union[SendFrame, StartTLS, PersistAuthorization, PendingPin, ServerEnrolled, ClientEnrolled, ProofReceived,
              ProofVerified]


class State(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await_hello"
    AWAIT_CHALLENGE = "await_challenge"
    AWAIT_CLIENT_PROOF = "await_client_proof"
    CHECKING_PROOF = "checking_proof"  # appliance: ProofReceived emitted, check_proof next
    PROOF_VERIFIED = "proof_verified"  # appliance: ProofVerified emitted, proceed next
    AWAIT_SERVER_PROOF = "await_server_proof"
    TLS_HANDSHAKE = "tls_handshake"
    AWAIT_APPLIANCE_PROOF = "await_appliance_proof"
    AWAIT_FINISH = "await_finish"
    PERSISTING = "persisting"
    AWAIT_ENROLLED = "await_enrolled"
    DONE = "done"
    ERROR = "error"

    # Members are singletons compared by identity: hash them so (in C), not by Enum's Python
    # __hash__ of the name, which ran ~20 times per enrollment in the state tables' lookups.
    __hash__ = object.__hash__


# How long the driver may wait in each state before cutting the peer off. A state missing here
# waits on nobody (START, DONE, ERROR).
TIMEOUTS: dict[State, float] = {
    State.AWAIT_HELLO: limits.PHASE_TIMEOUT,
    State.AWAIT_CHALLENGE: limits.PHASE_TIMEOUT,
    State.AWAIT_CLIENT_PROOF: limits.PHASE_TIMEOUT,
    State.AWAIT_SERVER_PROOF: limits.PHASE_TIMEOUT,
    State.TLS_HANDSHAKE: limits.PHASE_TIMEOUT,
    State.AWAIT_APPLIANCE_PROOF: limits.PHASE_TIMEOUT,
    State.AWAIT_FINISH: limits.PHASE_TIMEOUT,
    State.PERSISTING: limits.PERSIST_TIMEOUT,
    # The appliance may take PERSIST_TIMEOUT to store the authorization before it answers.
    State.AWAIT_ENROLLED: limits.PERSIST_TIMEOUT + limits.PHASE_TIMEOUT,
}

# Where a machine is, in words for error messages people read (no internal state names).
_WHILE: dict[State, str] = {
    State.START: "before the enrollment started",
    State.AWAIT_HELLO: "before sending hello",
    State.AWAIT_CHALLENGE: "before sending the SRP challenge",
    State.AWAIT_CLIENT_PROOF: "before sending the SRP proof",
    State.CHECKING_PROOF: "while its SRP proof was being checked",
    State.PROOF_VERIFIED: "after its SRP proof was checked",
    State.AWAIT_SERVER_PROOF: "before sending its SRP proof",
    State.TLS_HANDSHAKE: "during the TLS upgrade",
    State.AWAIT_APPLIANCE_PROOF: "before proving SEC-B inside TLS",
    State.AWAIT_FINISH: "before sending finish inside TLS",
    State.PERSISTING: "while the appliance was committing the enrollment",
    State.AWAIT_ENROLLED: "before confirming the enrollment",
    State.DONE: "after the enrollment completed",
    State.ERROR: "after the enrollment failed",
}

# States in which the stream is TLS (frames after the upgrade).
TLS_STATES = frozenset({State.AWAIT_APPLIANCE_PROOF, State.AWAIT_FINISH, State.PERSISTING,
                        State.AWAIT_ENROLLED, State.DONE})
# Appliance states in which the machine waits on its driver (check_proof, proceed), not the peer.
_PAUSED = frozenset({State.CHECKING_PROOF, State.PROOF_VERIFIED})


def _transcript_hash(frames: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(frames)).digest()


class _Enrollment:
    """What both roles share: the frame decoder, the state, the error discipline."""

    # Where the machine stops for the driver before it looks at a complete frame (ProofReceived).
    _CHARGE_POINT: State | None = None
    # (state) -> (expected frame type, handler): the state machine as data, one table per role
    # (a class attribute: a table of bound methods on each machine would make every machine a
    # reference cycle, left for the cyclic garbage collector instead of freed with its connection).
    _HANDLERS: ClassVar[dict[State, tuple[str, Callable[[Any, Frame, Any], list[Any]]]]]

    def __init__(self, random: RandomBytes, clock: Clock, group: SRPGroup) -> None:
        self._random = random
        self._clock = clock
        self._group = group
        self._decoder = FrameDecoder()
        self._transcript: list[bytes] = []
        self._keys: KeySchedule | None = None
        self.state = State.START
        self.error: FirsttrustError | None = None

    # -- public surface ---------------------------------------------------------------------

    @property
    def timeout(self) -> float | None:
        """Seconds the driver may wait for the peer in the current state (None: no wait)."""
        return TIMEOUTS.get(self.state)

    @property
    def uses_tls(self) -> bool:
        return self.state in TLS_STATES

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the peer; return what to do next.

        Raises:
            ProtocolError, AuthenticationError (subclasses): the peer misbehaved or failed a
                check; send `error_frame()` and close.
            PeerRefused: the peer sent an error frame; close.
            StateError: called in a state that takes no data (e.g. during the TLS handshake).
        """
        return self._guard(self._receive_data, data)

    def receive_eof(self) -> None:
        """The peer closed its side. Anywhere but DONE that is an error."""
        self._guard(self._receive_eof)

    def tls_established(self, peer_certificate: bytes | None) -> list[Event]:
        """Report the certificate the peer presented in the TLS handshake (DER).

        Raises:
            BindingFailed: it is not the certificate the peer committed to under K.
        """
        return self._guard(self._tls_established, peer_certificate)

    def error_frame(self) -> bytes | None:
        """The error frame to send the peer after a failure (None: nothing to send)."""
        if self.error is None or isinstance(self.error, (PeerRefused, StateError)):
            return None
        return encode_error(self.error.code, str(self.error))

    def abort(self, code: str, message: str, retry_after: int | None = None) -> bytes:
        """A local decision to stop (timeout, lockout, back-off, shutdown): enter ERROR, return the
        frame (with `retry_after` seconds when the peer may try again later)."""
        if self.state is not State.ERROR:
            self.state = State.ERROR
            self.error = ProtocolError(message, code=code)
        return encode_error(code, message, retry_after)

    # -- machinery --------------------------------------------------------------------------

    def _guard(self, method: Callable[..., Any], *args: Any) -> Any:
        if self.state is State.ERROR:
            raise StateError(f"enrollment already failed ({self.error.code if self.error else 'error'})")
        try:
            return method(*args)
        except FirsttrustError as exc:
            if not isinstance(exc, StateError):
                self.state = State.ERROR
                self.error = exc
            raise

    def _receive_data(self, data: bytes) -> list[Event]:
        if self.state is State.START:
            raise StateError(f"no data expected in state {self.state.value}")
        if self.state is State.TLS_HANDSHAKE:
            # Plaintext that arrived after the last plaintext frame and before TLS began: the
            # STARTTLS injection class (docs/protocol.md section 7.2). Never handed to TLS.
            raise UnexpectedFrame("plaintext data after the last plaintext frame, before the TLS handshake")
        handlers = self._HANDLERS
        if self.state not in handlers:  # persisting or done: the peer must be silent
            if self.state in _PAUSED:
                raise StateError(f"no data expected in state {self.state.value}")
            raise UnexpectedFrame(f"the peer sent data {_WHILE[self.state]}")
        try:
            self._decoder.feed(data)
        except FirsttrustError:
            if self.state is not self._CHARGE_POINT:
                raise
            # A bad length where the proof is due: it is the proof, refused when it is checked.
        events: list[Event] = []
        while self.state in handlers:
            if self.state is self._CHARGE_POINT:
                # The frame that must be the proof is complete (or its length is refused): say so
                # before looking at it, and wait for check_proof.
                if self._decoder.frame_ready():
                    self.state = State.CHECKING_PROOF
                    events.append(ProofReceived())
                break
            frame = self._decoder.next_frame()
            if frame is None:
                break
            events += self._dispatch(frame)
        if self.state not in handlers and self.state not in _PAUSED and self._decoder.buffered:
            raise UnexpectedFrame(f"the peer sent data after the last frame it may send {_WHILE[self.state]}")
        return events

    def _dispatch(self, frame: Frame, state: State | None = None) -> list[Event]:
        if frame.type == "error":
            error: ErrorMessage = parse(frame)  # type: ignore[assignment]
            raise PeerRefused(error.code, error.message, error.retry_after)
        expected, handler = self._HANDLERS[state or self.state]
        if frame.type != expected:
            raise UnexpectedFrame(f"got {frame.type} while expecting {expected}")
        events = handler(self, frame, parse(frame))
        self._check_no_trailing_data()
        return events

    def _check_no_trailing_data(self) -> None:
        if self.state is State.TLS_HANDSHAKE and self._decoder.buffered:
            # Strict lockstep: the peer must not send a byte past the frame that triggers the
            # upgrade; those bytes would be read as plaintext and never reach TLS.
            raise UnexpectedFrame("data after the last plaintext frame (STARTTLS lockstep broken)")

    def _receive_eof(self) -> None:
        self._decoder.close()
        if self.state is not State.DONE:
            raise TruncatedFrame(f"the peer closed the connection {_WHILE[self.state]}")

    def _check_peer_certificate(self, presented: bytes | None, key: bytes) -> None:
        if not presented:
            raise BindingFailed("peer presented no certificate in the TLS handshake")
        if not equal(KeySchedule.commitment(key, presented), self._peer_commitment):
            raise BindingFailed("TLS peer certificate is not the one committed to under the SRP key")

    def _new_ephemeral(self) -> bytes:
        value = self._random(EPHEMERAL_BYTES)
        if len(value) != EPHEMERAL_BYTES:
            raise ValueError("random source returned the wrong number of bytes")
        return value

    def _send(self, frame_type: str, fields: dict[str, Any], transcript: bool = False) -> SendFrame:
        data = encode_frame(frame_type, fields)
        if transcript:
            self._transcript.append(data)
        return SendFrame(data)


def _peer_certificate(name: str, der: bytes) -> bytes:
    try:
        canonical = certificate_der(der)
    except InvalidCertificate as exc:
        raise InvalidField(f"field {name!r}: {exc}") from None
    if canonical != der:
        raise InvalidField(f"field {name!r} is not a DER certificate")
    return der


class ServerEnrollment(_Enrollment):
    """The appliance's half. It knows the SRP salt and verifier (never SEC-A), SEC-B, and its
    own certificate.

    Args:
        salt, verifier: from provisioning (`srp6a.compute_verifier`).
        sec_b: SEC-B as provisioned.
        certificate: the appliance's certificate (DER) that its TLS layer will present.
        api_port: where the pinned mTLS API listens, told to the requester in "appliance_proof" and "enrolled".
        ssh_host_keys: the appliance's SSH host public keys (OpenSSH lines), possibly none.
        random, clock: injectable for tests and vectors.
    """

    _CHARGE_POINT = State.AWAIT_CLIENT_PROOF

    def __init__(self, *, salt: bytes, verifier: bytes, sec_b: str, certificate: bytes, api_port: int,
                 ssh_host_keys: tuple[str, ...] = (), random: RandomBytes = os.urandom,
                 clock: Clock = time.time, group: SRPGroup = GROUP_3072_SHA512) -> None:
        super().__init__(random, clock, group)
        self._salt = salt
        self._verifier = verifier
        self._sec_b = validate_secret(sec_b, "SEC-B").encode("ascii")
        self._certificate = certificate
        self._api_port = api_port
        # Checked with the requester's own rules now, so a bad host key line fails here and not
        # after the authorization has been persisted.
        self._ssh_host_keys = _ENROLLED_FIELDS["ssh_host_keys"][0]("ssh_host_keys", list(ssh_host_keys))
        _ENROLLED_FIELDS["api_port"][0]("api_port", api_port)
        self._srp: SRPServer | None = None
        self._peer_certificate = b""
        self._peer_commitment = b""
        self._authorization: Authorization | None = None
        self._proof: ClientProofMessage | None = None
        self._M2 = b""
        self.state = State.AWAIT_HELLO

    def _on_hello(self, frame: Frame, hello: HelloMessage) -> list[Event]:
        self._transcript.append(frame.raw)
        self._srp = SRPServer(self._salt, self._verifier, hello.A, self._new_ephemeral(), self._group)
        self.state = State.AWAIT_CLIENT_PROOF
        return [self._send("challenge", {"salt": b64encode(self._salt), "B": b64encode(self._srp.B)},
                           transcript=True)]

    def check_proof(self) -> list[Event]:
        """After `ProofReceived` (and the driver's charge): decode the frame and check M1.
        Returns [ProofVerified].

        Raises:
            AuthenticationFailed: wrong SEC-A (the one failed guess).
            ProtocolError (subclasses), PeerRefused: the frame is not a valid client_proof.
            StateError: no proof is waiting to be checked.
        """
        return self._guard(self._check_proof)

    def _check_proof(self) -> list[Event]:
        if self.state is not State.CHECKING_PROOF:
            raise StateError(f"check_proof in state {self.state.value}")
        frame = self._decoder.next_frame()
        assert frame is not None  # frame_ready said so
        return self._dispatch(frame, State.AWAIT_CLIENT_PROOF)

    def _on_client_proof(self, frame: Frame, proof: ClientProofMessage) -> list[Event]:
        assert self._srp is not None
        self._transcript.append(frame.raw)
        self._proof = proof
        self._M2 = self._srp.verify(proof.M1)  # AuthenticationFailed: wrong SEC-A
        self.state = State.PROOF_VERIFIED
        return [ProofVerified()]

    def proceed(self) -> list[Event]:
        """After `ProofVerified`: check the requester's commitment and that nothing follows the
        proof. Returns [SendFrame(server_proof), StartTLS].

        Raises:
            BindingFailed: the certificate does not match its commitment.
            UnexpectedFrame: bytes arrived behind client_proof (STARTTLS injection).
        """
        return self._guard(self._proceed)

    def _proceed(self) -> list[Event]:
        if self.state is not State.PROOF_VERIFIED or self._srp is None or self._proof is None:
            raise StateError(f"proceed in state {self.state.value}")
        fields = self._proof
        self._keys = keys = KeySchedule(self._srp.session_key)
        peer_cert = _peer_certificate("certificate", fields.certificate)
        if not equal(fields.commitment, keys.commitment(keys.commit_requester, peer_cert)):
            raise BindingFailed("requester certificate does not match its commitment")
        self._peer_certificate, self._peer_commitment = peer_cert, fields.commitment
        send = self._send("server_proof", {
            "M2": b64encode(self._M2),
            "certificate": b64encode(self._certificate),
            "commitment": b64encode(keys.commitment(keys.commit_appliance, self._certificate)),
        }, transcript=True)
        self.state = State.TLS_HANDSHAKE
        self._check_no_trailing_data()
        return [send, StartTLS(peer_certificate=peer_cert)]

    def _tls_established(self, peer_certificate: bytes | None) -> list[Event]:
        if self.state is not State.TLS_HANDSHAKE:
            raise StateError(f"tls_established in state {self.state.value}")
        assert self._keys is not None
        self._check_peer_certificate(peer_certificate, self._keys.commit_requester)
        th = _transcript_hash(self._transcript)
        self.state = State.AWAIT_FINISH
        return [self._send("appliance_proof", {
            "sec_b_proof": b64encode(self._keys.sec_b_proof(self._sec_b, th, self._certificate)),
            "confirm": b64encode(self._keys.confirmation(self._keys.confirm_appliance, th, self._certificate,
                                                         self._peer_certificate)),
            "api_port": self._api_port,
        })]

    def _on_finish(self, frame: Frame, fields: FinishMessage) -> list[Event]:
        assert self._keys is not None
        th = _transcript_hash(self._transcript)
        expected = self._keys.confirmation(self._keys.confirm_requester, th, self._certificate, self._peer_certificate)
        if not equal(fields.confirm, expected):
            raise ConfirmationFailed("requester key confirmation did not verify")
        self._authorization = Authorization(
            requester_pin=pin_of_certificate(self._peer_certificate),
            requester_certificate=self._peer_certificate,
            name=fields.name,
            ssh_key=fields.ssh_key,
            enrolled_at=self._clock(),
        )
        self.state = State.PERSISTING
        return [PersistAuthorization(self._authorization)]

    _HANDLERS = {
        State.AWAIT_HELLO: ("hello", _on_hello),
        State.AWAIT_CLIENT_PROOF: ("client_proof", _on_client_proof),
        State.AWAIT_FINISH: ("finish", _on_finish),
    }

    def authorization_persisted(self) -> list[Event]:
        """The driver has durably stored the Authorization; answer "enrolled"."""
        return self._guard(self._persisted)

    def _persisted(self) -> list[Event]:
        if self.state is not State.PERSISTING or self._authorization is None:
            raise StateError(f"authorization_persisted in state {self.state.value}")
        send = self._send("enrolled", {"pin": pin_of_certificate(self._certificate),
                                       "ssh_host_keys": self._ssh_host_keys, "api_port": self._api_port})
        self.state = State.DONE
        return [send, ServerEnrolled(self._authorization)]


class ClientEnrollment(_Enrollment):
    """The requester's half. It knows SEC-A, SEC-B and its own certificate.

    Args:
        sec_a, sec_b: the secrets injected into this appliance.
        certificate: the requester's certificate (DER) that its TLS layer will present.
        name: how the requester names itself to the appliance (a label in the authorization).
        ssh_key: an OpenSSH public key line for the appliance account, or None.
        random, clock: injectable for tests and vectors.
    """

    def __init__(self, *, sec_a: str, sec_b: str, certificate: bytes, name: str, ssh_key: str | None = None,
                 random: RandomBytes = os.urandom, clock: Clock = time.time,
                 group: SRPGroup = GROUP_3072_SHA512) -> None:
        super().__init__(random, clock, group)
        self._sec_a = validate_secret(sec_a, "SEC-A").encode("ascii")
        self._sec_b = validate_secret(sec_b, "SEC-B").encode("ascii")
        self._certificate = certificate
        # Checked here with the receiver's rules, so a bad value fails locally and clearly.
        self._name = FINISH_FIELDS["name"][0]("name", name)
        self._ssh_key = None if ssh_key is None else FINISH_FIELDS["ssh_key"][0]("ssh_key", ssh_key.strip())
        self._srp: SRPClient | None = None
        self._peer_certificate = b""
        self._peer_commitment = b""
        self._api_port = 0

    def start(self) -> list[Event]:
        """Begin: returns the hello frame to send."""
        return self._guard(self._start)

    def _start(self) -> list[Event]:
        if self.state is not State.START:
            raise StateError(f"start in state {self.state.value}")
        self._srp = SRPClient(self._sec_a, self._new_ephemeral(), self._group)
        self.state = State.AWAIT_CHALLENGE
        return [self._send("hello", {"A": b64encode(self._srp.A)}, transcript=True)]

    def _on_challenge(self, frame: Frame, fields: ChallengeMessage) -> list[Event]:
        assert self._srp is not None
        self._transcript.append(frame.raw)
        M1 = self._srp.process_challenge(fields.salt, fields.B)  # InvalidSRPParameter: B % N == 0
        self._keys = keys = KeySchedule(self._srp.unverified_session_key)
        self.state = State.AWAIT_SERVER_PROOF
        return [self._send("client_proof", {
            "M1": b64encode(M1),
            "certificate": b64encode(self._certificate),
            "commitment": b64encode(keys.commitment(keys.commit_requester, self._certificate)),
        }, transcript=True)]

    def _on_server_proof(self, frame: Frame, fields: ServerProofMessage) -> list[Event]:
        assert self._srp is not None and self._keys is not None
        self._transcript.append(frame.raw)
        self._srp.verify(fields.M2)  # AuthenticationFailed: the server lacks the verifier
        peer_cert = _peer_certificate("certificate", fields.certificate)
        if not equal(fields.commitment, self._keys.commitment(self._keys.commit_appliance, peer_cert)):
            raise BindingFailed("appliance certificate does not match its commitment")
        self._peer_certificate, self._peer_commitment = peer_cert, fields.commitment
        self.state = State.TLS_HANDSHAKE
        return [StartTLS(peer_certificate=peer_cert)]

    def _tls_established(self, peer_certificate: bytes | None) -> list[Event]:
        if self.state is not State.TLS_HANDSHAKE:
            raise StateError(f"tls_established in state {self.state.value}")
        assert self._keys is not None
        self._check_peer_certificate(peer_certificate, self._keys.commit_appliance)
        self.state = State.AWAIT_APPLIANCE_PROOF
        return []

    def _on_appliance_proof(self, frame: Frame, fields: ApplianceProofMessage) -> list[Event]:
        assert self._keys is not None
        th = _transcript_hash(self._transcript)
        keys = self._keys
        if not equal(fields.confirm, keys.confirmation(keys.confirm_appliance, th, self._peer_certificate,
                                                       self._certificate)):
            raise ConfirmationFailed("appliance key confirmation did not verify")
        if not equal(fields.sec_b_proof, keys.sec_b_proof(self._sec_b, th, self._peer_certificate)):
            raise SecBProofFailed("appliance did not prove SEC-B: not the appliance the secrets were given to")
        finish: dict[str, Any] = {
            "confirm": b64encode(keys.confirmation(keys.confirm_requester, th, self._peer_certificate,
                                                   self._certificate)),
            "name": self._name,
        }
        if self._ssh_key is not None:
            finish["ssh_key"] = self._ssh_key
        self._api_port = fields.api_port
        self.state = State.AWAIT_ENROLLED
        # In this order: the driver persists the pending pin before it sends `finish`.
        return [PendingPin(pin_of_certificate(self._peer_certificate), self._peer_certificate, self._api_port),
                self._send("finish", finish)]

    def _on_enrolled(self, frame: Frame, fields: EnrolledMessage) -> list[Event]:
        pin = pin_of_certificate(self._peer_certificate)
        if fields.pin != pin:
            raise BindingFailed("appliance reported a pin other than its TLS certificate's")
        if fields.api_port != self._api_port:
            raise InvalidField("enrolled names another API port than appliance_proof")
        self.state = State.DONE
        return [ClientEnrolled(EnrollmentResult(
            appliance_pin=pin,
            appliance_certificate=self._peer_certificate,
            ssh_host_keys=tuple(fields.ssh_host_keys),
            api_port=fields.api_port,
            enrolled_at=self._clock(),
        ))]

    _HANDLERS = {
        State.AWAIT_CHALLENGE: ("challenge", _on_challenge),
        State.AWAIT_SERVER_PROOF: ("server_proof", _on_server_proof),
        State.AWAIT_APPLIANCE_PROOF: ("appliance_proof", _on_appliance_proof),
        State.AWAIT_ENROLLED: ("enrolled", _on_enrolled),
    }
