"""Typed errors with stable codes.

Every failure the protocol can see is one of these classes. `code` is stable (it travels in error
frames, logs and exit codes); `str(error)` is a one-line message for people and never carries a
secret value, only field names, sizes and states.
"""

from __future__ import annotations


class FirsttrustError(Exception):
    """Base of every firsttrust error. `code` is stable; the message is one line."""

    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message.splitlines()[0] if message and message.splitlines() else self.code)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


# --- the peer broke the framing or message rules -------------------------------------------


class ProtocolError(FirsttrustError):
    """The peer sent something the protocol does not allow."""

    code = "protocol_error"


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class MalformedFrame(ProtocolError):
    """Bad length, bad UTF-8, bad JSON, not an object, duplicate keys."""

    code = "malformed_frame"


class TruncatedFrame(ProtocolError):
    code = "truncated_frame"


class UnsupportedVersion(ProtocolError):
    code = "unsupported_version"


class UnknownFrameType(ProtocolError):
    code = "unknown_type"


class UnexpectedFrame(ProtocolError):
    """A known frame at the wrong time: out of order, repeated, or after the end."""

    code = "unexpected_frame"


class InvalidField(ProtocolError):
    """A field is missing, extra, of the wrong JSON type, bad base64 or of the wrong length."""

    code = "invalid_field"


# --- authentication and binding ------------------------------------------------------------


class AuthenticationError(FirsttrustError):
    code = "authentication_error"


class AuthenticationFailed(AuthenticationError):
    """An SRP proof did not verify: the peer does not know SEC-A (or the verifier)."""

    code = "auth_failed"


class InvalidSRPParameter(AuthenticationError):
    """A % N == 0 (RFC 5054 section 2.5.4) or B % N == 0 (section 2.5.3), or u == 0."""

    code = "bad_srp_parameter"


class BindingFailed(AuthenticationError):
    """A certificate does not match the commitment made under the SRP session key."""

    code = "binding_failed"


class SecBProofFailed(AuthenticationError):
    """The appliance could not prove it holds SEC-B for this transcript and certificate."""

    code = "sec_b_failed"


class ConfirmationFailed(AuthenticationError):
    """The in-TLS key confirmation did not verify."""

    code = "confirm_failed"


# --- the peer refused us, or local misuse ----------------------------------------------------


class PeerRefused(FirsttrustError):
    """The peer sent an error frame; `code` is the peer's code, `retry_after` its optional
    retry_after member (seconds; None when absent)."""

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(f"peer refused: {code}: {message}")
        self.code = code
        self.peer_message = message
        self.retry_after = retry_after


class StateError(FirsttrustError):
    """A method was called in a state that does not allow it (a bug in the caller)."""

    code = "invalid_state"


class InvalidSecret(FirsttrustError):
    """A SEC-A or SEC-B value that is not a valid secret (never echoes the value)."""

    code = "invalid_secret"


class InvalidPin(FirsttrustError):
    code = "invalid_pin"


class InvalidCertificate(FirsttrustError):
    code = "invalid_certificate"


class SRPBackendError(FirsttrustError):
    code = "srp_backend"


# Codes the agent sends in error frames on its own account (not raised by this package's
# state machines, but part of the protocol: docs/protocol.md lists them all).
AGENT_CODES = {
    "already_enrolled": "SRP enrollment is closed: this appliance is already enrolled",
    "locked_out": "too many failed attempts; enrollment is locked",
    "backing_off": "a recent attempt failed; retry after the back-off",
    "window_closed": "the enrollment window has expired; re-arm with fresh secrets",
    "not_provisioned": "the appliance has no enrollment secrets yet",
    "busy": "too many unauthenticated connections; retry later",
    "timeout": "the peer was too slow in this phase",
    "internal": "the agent failed on its side; nothing was authorized",
    "ssh_key_rejected": "the SSH key cannot be installed (bad key, missing account or home); nothing was authorized",
    "commit_failed": "the appliance could not store the enrollment; nothing was authorized",
}


def all_codes() -> dict[str, str]:
    """Every stable error code an error frame may carry, with its meaning."""
    codes: dict[str, str] = {}
    stack: list[type[FirsttrustError]] = [FirsttrustError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        # Only this module's classes: agent/ and requester/ errors are local, never on the wire.
        if cls.__module__ == __name__ and isinstance(cls.__dict__.get("code"), str):
            codes[cls.code] = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    codes.update(AGENT_CODES)
    return codes
