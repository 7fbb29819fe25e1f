"""The requester's typed errors. Each has a stable `code`; messages are one line, never a secret."""

from __future__ import annotations

from firsttrust.errors import FirsttrustError


class RequesterError(FirsttrustError):
    """Base of the requester library's own errors (enrollment, trust store, API session)."""

    code = "requester_error"


class PinMismatch(RequesterError):
    """The appliance presented a key other than the pinned one: nothing was sent to it."""

    code = "pin_mismatch"


class ConnectionFailed(RequesterError):
    """The appliance could not be reached, or closed the connection without an HTTP answer.

    Over TLS 1.3 this is also how a refused client certificate looks from the client's side: the
    server's alert arrives after the client's half of the handshake, on the first read.
    """

    code = "connection_failed"


class RequestTimeout(ConnectionFailed):
    """A configured timeout expired (connect, TLS handshake, or the whole request)."""

    code = "timeout"


class BadResponse(RequesterError):
    """The appliance's answer is not what the API promises (not JSON, too large, missing fields)."""

    code = "bad_response"


class ApiError(RequesterError):
    """The appliance answered with an error; `code` is its stable code, `status` the HTTP status."""

    def __init__(self, code: str, status: int, message: str = "") -> None:
        super().__init__(f"appliance refused ({status} {code}): {message or 'no detail'}", code=code)
        self.status = status
        self.peer_message = message


class SessionClosed(RequesterError, RuntimeError):
    """A PinnedSession used outside its `async with` (before it, or after it ended). Also a
    RuntimeError, which it was before it had a code of its own."""

    code = "session_closed"
