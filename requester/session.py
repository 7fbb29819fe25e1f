"""The requester's pinned mTLS session to an enrolled appliance's API.

    async with PinnedSession(host, port, pinned_cert, key_file, cert_file) as api:
        health = await api.get("/v1/health")
        rotation = await api.rotate()      # store rotation.certificate_pem / rotation.pin yourself

The appliance is authenticated twice before a request byte leaves: the TLS context trusts
exactly the pinned certificate (OpenSSL refuses any other in the handshake, and TLS 1.3's
CertificateVerify proves the server holds its key), and then the connector compares the SPKI
pin of the certificate actually presented with the stored pin, on every new connection. The
second check is defense in depth: it is what the pin means (a key, not a certificate), and it
still holds if a context were ever built from the wrong certificate. aiohttp's own `fingerprint`
check does not fit: it hashes the whole certificate and cannot be combined with a client
certificate context.

The session never reads or writes a trust store: the caller passes the pinned certificate in and
gets the rotated one back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from firsttrust.errors import InvalidCertificate, InvalidPin
from firsttrust.identity import certificate_der, certificate_pem, pin_matches, pin_of_certificate
from firsttrust.rotation import RotationError, verify_rotation
from firsttrust.tlspolicy import apply_policy, load_own_identity

from .errors import ApiError, BadResponse, ConnectionFailed, PinMismatch, RequestTimeout, SessionClosed

# A whole request, handshake included, on a slow WAN to a busy appliance: 30 s; the TCP connect
# plus TLS handshake alone: 10 s (firsttrust.limits.PHASE_TIMEOUT is 15 s per enrollment phase).
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=10.0)
# Largest answer read. The largest legitimate one is GET /v1/authorized-keys: ~1 KiB per key
# (PEM certificate and metadata); 1 MiB holds a thousand keys and bounds what a broken
# appliance can make the requester buffer.
MAX_RESPONSE_BODY = 1024 * 1024
_READ_CHUNK = 64 * 1024


def pinned_ssl_context(pinned_certificate: bytes, client_key_file: str | Path,
                       client_cert_file: str | Path) -> ssl.SSLContext:
    """A TLS 1.3 client context that trusts exactly `pinned_certificate` and presents ours.

    Args:
        pinned_certificate: the appliance certificate (PEM or DER) pinned at enrollment.
        client_key_file: the requester's private key (PEM file).
        client_cert_file: the requester's certificate (PEM file), the one the appliance authorized.
    Raises:
        InvalidCertificate: `pinned_certificate` is not a P-256 certificate.
        InvalidCertificate: the key or certificate file does not load (corrupt).
        OSError: the key or certificate file cannot be read.
    """
    context = apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), [certificate_der(pinned_certificate)])
    return load_own_identity(context, client_cert_file, client_key_file)


class _PinCheckingConnector(aiohttp.TCPConnector):
    """Compares the server's SPKI pin on each new connection, before the request is written.

    `_create_connection(req, traces, timeout)` is aiohttp's per-connection hook (the same from 3.8,
    Debian 12's, to 3.14); tests/integration/test_api.py counts its checks so a rename is noticed.
    """

    def __init__(self, pin: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pin = pin
        self.connections_checked = 0

    async def _create_connection(self, req, traces, timeout):  # type: ignore[no-untyped-def]
        protocol = await super()._create_connection(req, traces, timeout)
        transport = protocol.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            matches = der is not None and pin_matches(self._pin, der)
        except (InvalidCertificate, InvalidPin):
            matches = False
        if not matches:
            protocol.close()
            raise PinMismatch("the appliance presented a key other than the pinned one")
        self.connections_checked += 1
        return protocol


@dataclass(frozen=True)
class Rotation:
    """A verified identity rotation: the caller stores `certificate_pem` and `pin` in place of the old."""

    certificate_pem: bytes
    pin: str
    previous_pin: str


class PinnedSession:
    """An HTTPS/JSON session to one appliance, pinned to its key, presenting our certificate.

    Args:
        host, port: the appliance's API address.
        pinned_certificate: the appliance certificate pinned at enrollment (PEM or DER).
        client_key_file, client_cert_file: the requester's identity (PEM files).
        timeout: per-request limits; every phase has one (no request can hang forever).
    Raises:
        InvalidCertificate: `pinned_certificate` is not a P-256 certificate.

    Use as `async with`. After `rotate()` the appliance presents its new certificate on new
    connections, which this session (pinned to the old one) refuses: open a new session with
    the returned certificate.
    """

    def __init__(self, host: str, port: int, pinned_certificate: bytes | str, client_key_file: str | Path,
                 client_cert_file: str | Path, *, timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT) -> None:
        self.pinned_certificate = certificate_pem(pinned_certificate)
        self.pin = pin_of_certificate(self.pinned_certificate)
        self._context = pinned_ssl_context(self.pinned_certificate, client_key_file, client_cert_file)
        self._base = URL.build(scheme="https", host=host, port=port)
        self._timeout = timeout
        self._connector: _PinCheckingConnector | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "PinnedSession":
        self._connector = _PinCheckingConnector(self.pin, ssl=self._context)
        self._session = aiohttp.ClientSession(connector=self._connector, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def connections_checked(self) -> int:
        """How many connections passed the pin check (for tests and diagnostics)."""
        return self._connector.connections_checked if self._connector else 0

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any = None) -> Any:
        return await self.request("POST", path, body)

    async def delete(self, path: str) -> Any:
        return await self.request("DELETE", path)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the parsed JSON answer (None for an empty one, e.g. 204).

        Raises:
            PinMismatch: the appliance's key is not the pinned one (nothing was sent).
            RequestTimeout: a timeout expired.
            ConnectionFailed: unreachable, or closed without an answer (also how a TLS 1.3 server
                refusing our certificate looks: its alert comes on the first read).
            ApiError: the appliance answered with an error (its code and HTTP status).
            BadResponse: the answer is not JSON or larger than MAX_RESPONSE_BODY.
        """
        if self._session is None:
            raise SessionClosed("use PinnedSession in `async with`: this session is not open")
        try:
            async with self._session.request(method, self._base.with_path(path), json=body) as response:
                status = response.status
                data = await _read_bounded(response)
        except aiohttp.ClientConnectorCertificateError:
            raise PinMismatch("the appliance's certificate is not the pinned one (TLS verification failed)") from None
        except asyncio.TimeoutError:
            raise RequestTimeout(f"{method} {path}: no answer within the configured timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionFailed(f"{method} {path}: connection failed or refused ({type(exc).__name__})") from None
        return _parse(status, data)

    async def rotate(self) -> Rotation:
        """Have the appliance re-key, and verify the new certificate with the pinned (old) key.

        Returns:
            the new certificate and pin, to store in place of the old ones.
        Raises:
            RotationError: the answer's signature does not verify with the pinned key, or its
                pins do not match (the appliance may already have rotated: re-pin out of band).
            and what `request` raises.
        """
        answer = await self.post("/v1/identity/rotate")
        if not isinstance(answer, dict):
            raise BadResponse("the rotation answer is not a JSON object")
        fields = {name: answer.get(name) for name in ("certificate", "pin", "previous_pin", "signature")}
        if not all(isinstance(value, str) for value in fields.values()):
            raise BadResponse("the rotation answer lacks certificate, pin, previous_pin or signature")
        try:
            signature = base64.b64decode(fields["signature"], validate=True)
            certificate = fields["certificate"].encode("ascii")
        except (binascii.Error, ValueError):
            raise RotationError("the rotation signature or certificate is not well-formed") from None
        new_pin = verify_rotation(self.pinned_certificate, certificate, signature)
        if fields["previous_pin"] != self.pin or fields["pin"] != new_pin:
            raise RotationError("the rotation answer names other pins than the ones signed")
        return Rotation(certificate_pem=certificate_pem(certificate), pin=new_pin, previous_pin=self.pin)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > MAX_RESPONSE_BODY:
            raise BadResponse(f"the appliance's answer is larger than {MAX_RESPONSE_BODY} bytes")
    return bytes(body)


def _parse(status: int, data: bytes) -> Any:
    if not data and status < 400:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError):
        if status >= 400:
            raise ApiError("http_error", status) from None
        raise BadResponse(f"the appliance's answer (HTTP {status}) is not JSON") from None
    if status >= 400:
        error = value.get("error") if isinstance(value, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise ApiError(code if isinstance(code, str) else "http_error", status,
                       message if isinstance(message, str) else "")
    return value
