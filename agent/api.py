"""The post-enrollment API: HTTPS/JSON over mutually authenticated, pinned TLS 1.3.

Who may call is decided twice, on every connection and on every request:

1. TLS (`AuthorizedContexts`): the listener requires a client certificate and trusts exactly the
   certificates in authorized.json. The listening context itself trusts nobody; an `sni_callback`
   (OpenSSL's servername callback, which runs on every ClientHello, with or without SNI) swaps in
   the context built at the last `reload()` before the certificate exchange, so OpenSSL verifies the
   client against the current trust store and presents the current identity. A key removed through
   the API is refused from the next handshake on, a key added is accepted, a rotated identity is
   presented, all without restarting the listener. If the swap ever stopped working, the listening
   context's empty trust makes every handshake fail: the design fails closed.
2. The application (`_authorized_peer`): the peer certificate's pin must still be in authorized.json
   for each request. This catches keep-alive connections opened before their key was removed, which
   TLS alone cannot (the handshake is long over).

TLS session resumption is disabled (no tickets): a resumed session skips client-certificate
verification, which would let a removed key back in at the TLS layer.

With no authorized key at all (an appliance not yet enrolled), the API still listens but trusts
only a certificate whose private key was discarded when it was made, so no client can complete a
handshake; enrollment then adds a key and `reload()` admits it without a restart.

Identity rotation is crash-safe; see `recover_rotation` for the order of writes and the recovery.

One module, over 450 lines, because the two checks above (the TLS contexts and the per-request
pin) and the handlers they guard answer one review question, who may call the API, and read
best side by side; the port's pre-authentication limits are already agent/apiguard.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import socket
import ssl
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from firsttrust.common.files import fsync_directory, read_at_most, remove_durably, write_atomic
from firsttrust.errors import InvalidCertificate, InvalidField, InvalidPin
from firsttrust.identity import (
    Identity,
    certificate_der,
    create_identity,
    load_certificate,
    normalize_pin,
    pin_of_certificate,
)
from firsttrust.limits import MAX_NAME
from firsttrust.messages import NAME_PATTERN, Text
from firsttrust.rotation import sign_rotation
from firsttrust.tlspolicy import apply_policy

from . import audit
from .apiguard import API_ACCEPT_BATCH, API_BACKLOG, ApiGuard, GuardedSocket, guarded, guarded_protocol
from .apiinfo import ApiInfo
from .errors import AgentError
from .sshkeys import host_public_keys
from .state import MAX_IDENTITY_FILE, StateDir, StateError

log = logging.getLogger("firsttrust.api")

# Largest request body. The largest legitimate one is POST /v1/authorized-keys: a P-256
# certificate is ~0.7 KiB as PEM, plus a name of at most MAX_NAME characters. 64 KiB (the
# enrollment frame cap, firsttrust.limits.MAX_FRAME_BODY) leaves room for long SAN lists and
# bounds what one authenticated client can make the agent buffer; aiohttp's default is 1 MiB.
MAX_REQUEST_BODY = 64 * 1024
# A PEM certificate field, before it is parsed: the whole body bounds it too, but a named cap
# gives a clear error code instead of a JSON parse of a huge string.
MAX_CERTIFICATE_PEM = 32 * 1024

# How long an authenticated keep-alive connection may sit idle between requests. A requester
# reuses its connection for the calls of one command, milliseconds apart; an idle one holds one
# of the descriptors kept for authenticated connections (agent/descriptors.py). aiohttp's own
# default is 75 s (3.8) or 3630 s (3.9+); nginx `keepalive_timeout 75s`, Apache
# `KeepAliveTimeout 5`.
API_KEEPALIVE_TIMEOUT = 15.0
# How long a closed TLS connection waits for its peer's close_notify: asyncio's default is 30 s,
# and a refused or timed-out connection was counted nowhere while it held its descriptor.
API_TLS_SHUTDOWN_TIMEOUT = 2.0

NEXT_KEY = "identity.next.key"
NEXT_CERT = "identity.next.crt"

_NAME = Text(NAME_PATTERN, MAX_NAME)
_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


class ApiRefusal(AgentError):
    """A request the API refuses; `status` is the HTTP status, `code` the stable error code."""

    code = "api_refused"

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status


class NoIdentity(AgentError):
    """The state directory holds no appliance identity: the API has nothing to present."""

    code = "not_provisioned"




# -- TLS ----------------------------------------------------------------------------------------


class AuthorizedContexts:
    """The server TLS contexts of the API: one listening context, and the current one it swaps in.

    Built with the ssl module alone (no key generation, no key parsing through cryptography's
    OpenSSL backend, which costs an enrolled agent ~2 MB): the listening context and a current
    context with no authorized key trust no certificate at all, and loading identity.key with
    identity.crt into a context is what checks that they belong together.

    Args:
        store: the state directory (identity.key/identity.crt, authorized.json).
    Raises:
        NoIdentity: the state directory has no identity.
        StateError: authorized.json is corrupt, or identity.key and identity.crt do not match.
    """

    def __init__(self, store: StateDir) -> None:
        self._store = store
        self.reload()
        self.listening = self._server_context([])
        self.listening.sni_callback = self._select

    def reload(self) -> None:
        """Rebuild the current context from the state directory; the next handshake uses it.

        Raises:
            NoIdentity, StateError, InvalidCertificate: the old context stays in force.
        """
        stamp = self._stamp()
        pems = self._store.load_identity_pem()  # bounded: a key or certificate is a few kB
        if pems is None:
            raise NoIdentity(f"no appliance identity in {self._store.path}")
        identity = Identity(*pems)
        entries = self._store.authorized()
        trusted = [certificate_der(entry["certificate"].encode("ascii")) for entry in entries]
        context = self._server_context(trusted)
        self.identity: Identity = identity
        self.current = context
        self._loaded_stamp = stamp

    def _stamp(self) -> tuple:
        """What identifies the on-disk state a context was built from (files are replaced by
        rename, so a new inode or mtime means new content)."""
        stamps = []
        for path in (self._store.authorized_path, self._store.cert_path):
            try:
                info = os.stat(path)
                stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
            except FileNotFoundError:
                stamps.append(None)
        return tuple(stamps)

    def _server_context(self, trusted: list[bytes]) -> ssl.SSLContext:
        """A context presenting the appliance identity, trusting exactly `trusted` (none: no client
        completes a handshake)."""
        context = apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), trusted, allow_none=True)
        context.num_tickets = 0  # no resumption: it would skip verifying the client certificate
        try:
            context.load_cert_chain(self._store.cert_path, self._store.key_path)
        except FileNotFoundError:
            raise NoIdentity(f"no appliance identity in {self._store.path}") from None
        except (ssl.SSLError, ValueError, OSError):  # OpenSSL: corrupt, or key values mismatch
            raise StateError(f"the appliance identity in {self._store.path} is corrupt or its key "
                             "and certificate do not match") from None
        return context

    def _select(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        # A key added by `firsttrust-agent authorize` (another process, the guest-command mode) is seen on
        # the next handshake: two stat() calls per handshake, a rebuild only on change.
        stamp = self._stamp()
        if stamp != self._loaded_stamp:
            try:
                self.reload()
            except Exception:  # keep serving with the last good context; the API reports errors
                self._loaded_stamp = stamp  # once per change, not once per handshake
                log.exception("could not reload the API's TLS context; keeping the previous one")
        ssl_object.context = self.current


# -- crash-safe identity rotation -------------------------------------------------------------


def _persist_identity(store: StateDir, new: Identity) -> None:
    """Replace identity.key/identity.crt with `new`. Order (recover_rotation relies on it):

    1. write identity.next.key, then identity.next.crt (each atomically and durably);
    2. rename identity.next.key over identity.key  -- the commit point;
    3. rename identity.next.crt over identity.crt; fsync the directory.
    """
    next_key, next_cert = store.path / NEXT_KEY, store.path / NEXT_CERT
    write_atomic(next_key, new.key_pem, 0o600)
    write_atomic(next_cert, new.cert_pem, 0o644)
    os.replace(next_key, store.key_path)
    fsync_directory(store.path)
    os.replace(next_cert, store.cert_path)
    fsync_directory(store.path)


def recover_rotation(store: StateDir) -> str | None:
    """Finish or undo a rotation a crash interrupted; call before loading the identity.

    If identity.next.key is gone but identity.next.crt remains and matches identity.key, the crash
    came after the commit point: the rename of the certificate is completed. In every other case
    with leftovers the rotation never committed; the old identity is whole and the leftovers are
    removed. (A crash after the commit but before the answer leaves the requester with the old
    pin: it re-pins through `firsttrust-agent show-identity` over the manager's guest channel.)

    Returns:
        "completed", "discarded", or None when there was nothing to recover.
    """
    next_key, next_cert = store.path / NEXT_KEY, store.path / NEXT_CERT
    if not next_key.exists() and next_cert.exists() and _matches_key(store, _leftover_certificate(next_cert)):
        os.replace(next_cert, store.cert_path)
        fsync_directory(store.path)
        return "completed"
    if next_key.exists() or next_cert.exists():
        remove_durably(next_key)
        remove_durably(next_cert)
        return "discarded"
    return None


def _leftover_certificate(path) -> bytes:
    """identity.next.crt as a rotation left it, read no further than MAX_IDENTITY_FILE: a larger
    file is no certificate of ours (b"", which matches no key, so the leftovers are discarded)."""
    data, _ = read_at_most(path, MAX_IDENTITY_FILE + 1)
    return b"" if len(data) > MAX_IDENTITY_FILE else data


def _matches_key(store: StateDir, cert_pem: bytes) -> bool:
    """Whether `cert_pem` is a certificate for the private key in identity.key."""
    key_pem = store.load_key_pem()
    try:
        key = serialization.load_pem_private_key(key_pem or b"", password=None)
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return pin_of_certificate(cert_pem) == "sha256:" + hashlib.sha256(spki).hexdigest()
    except (InvalidCertificate, ValueError, TypeError):
        return False


def _names(cert: x509.Certificate) -> dict[str, Any]:
    """The common name and SANs of `cert`, so a rotated certificate names the same appliance."""
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    return {"common_name": str(common[0].value) if common else "appliance",
            "dns_names": sans.get_values_for_type(x509.DNSName),
            "ip_addresses": [str(a) for a in sans.get_values_for_type(x509.IPAddress)]}


# -- HTTP ------------------------------------------------------------------------------------------


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Every failure becomes `{"error": {"code", "message"}}` with its HTTP status."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, _STATUS_CODES.get(exc.status, "http_error"), exc.reason)
    except ApiRefusal as exc:
        return _error(exc.status, exc.code, exc.message)
    except (InvalidCertificate, InvalidPin, InvalidField) as exc:
        return _error(400, exc.code, exc.message)
    except (RequestPayloadError, HttpProcessingError):  # a body that is not what its headers say
        return _error(400, "bad_request", "the request body could not be read as its headers describe it")
    except Exception as exc:  # a bug: one line, counted by the journal's rate limit, never a traceback per request
        log.error("API request %s %s failed: %s", request.method, request.path[:100], type(exc).__name__)
        return _error(500, "internal", "the agent failed on its side")


def _peer_pin(request: web.Request) -> str | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return pin_of_certificate(der) if der else None


def _json_object(body: bytes, fields: dict[str, bool]) -> dict[str, Any]:
    """Parse a JSON object with exactly the `fields` allowed ({name: required})."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise ApiRefusal(400, "invalid_json", "the request body is not JSON") from None
    if not isinstance(value, dict):
        raise ApiRefusal(400, "invalid_json", "the request body must be a JSON object")
    unknown = sorted(set(value) - set(fields))
    missing = sorted(name for name, required in fields.items() if required and name not in value)
    if unknown or missing:
        raise InvalidField(f"unknown fields {unknown}, missing fields {missing}")
    return value


class _Api:
    """The handlers, bound to one state directory and its TLS contexts."""

    def __init__(self, store: StateDir, contexts: AuthorizedContexts, info: ApiInfo) -> None:
        self.store, self.contexts, self.info = store, contexts, info
        # Mutations read-modify-write authorized.json or the identity: one at a time.
        self.lock = asyncio.Lock()

    @web.middleware
    async def authorized_peer(self, request: web.Request, handler):
        """Defense in depth behind TLS: the peer's key must still be authorized, per request."""
        pin = _peer_pin(request)
        if pin is None or pin not in {entry.get("pin") for entry in self.store.authorized()}:
            raise ApiRefusal(403, "not_authorized", "this client's key is not authorized")
        return await handler(request)

    async def health(self, request: web.Request) -> web.Response:
        state = self.store.load()
        return web.json_response({"status": "ok", "phase": state.phase if state else "unprovisioned"})

    async def identity(self, request: web.Request) -> web.Response:
        identity = self.contexts.identity
        return web.json_response({"certificate": identity.cert_pem.decode("ascii"), "pin": identity.pin,
                                  "ssh_host_keys": list(host_public_keys(self.info.host_key_glob))})

    async def list_keys(self, request: web.Request) -> web.Response:
        fields = ("pin", "name", "source", "added_at", "certificate")
        return web.json_response({"keys": [{f: entry.get(f) for f in fields} for entry in self.store.authorized()]})

    async def add_key(self, request: web.Request) -> web.Response:
        body = _json_object(await request.read(), {"certificate": True, "name": True})
        certificate = body["certificate"]
        if not isinstance(certificate, str) or len(certificate) > MAX_CERTIFICATE_PEM:
            raise InvalidField(f"field 'certificate' must be a PEM string of at most {MAX_CERTIFICATE_PEM} characters")
        name = _NAME("name", body["name"])
        try:  # a PEM is ASCII: a lone surrogate ("\ud800") made encode() raise, an untyped 500
            pem = certificate.encode("ascii")
        except UnicodeEncodeError:
            raise InvalidField("field 'certificate' must be a PEM string (ASCII)") from None
        load_certificate(pem)  # InvalidCertificate (400) unless it is a P-256 certificate
        async with self.lock:
            pin, added = await asyncio.to_thread(self.store.authorize, pem, name=name, source="api",
                                                 clock=self.info.clock)
            if added:
                self.contexts.reload()
        audit.event("key-authorized", f"requester key {pin} {'authorized' if added else 'already authorized'} via API",
                    pin=pin, requester=name, source="api", peer=_peer_pin(request),
                    outcome="added" if added else "already-authorized")
        return web.json_response({"pin": pin, "name": name, "added": added}, status=201 if added else 200)

    async def remove_key(self, request: web.Request) -> web.Response:
        pin = normalize_pin(request.match_info["pin"])
        peer = _peer_pin(request)
        async with self.lock:
            pins = [entry.get("pin") for entry in self.store.authorized()]
            if pin not in pins:
                raise ApiRefusal(404, "unknown_key", "no authorized key has this pin")
            if len(pins) == 1:
                audit.event("key-removed", f"refused to remove the last authorized key {pin}", pin=pin, peer=peer,
                            outcome="refused-last-key")
                raise ApiRefusal(409, "last_key", "refusing to remove the last authorized key (it would lock out "
                                                  "every requester)")
            await asyncio.to_thread(self.store.deauthorize, pin)
            self.contexts.reload()
        audit.event("key-removed", f"requester key {pin} removed via API", pin=pin, peer=peer, outcome="removed")
        return web.Response(status=204)

    async def rotate(self, request: web.Request) -> web.Response:
        peer = _peer_pin(request)
        async with self.lock:
            old = self.contexts.identity
            new = create_identity(**_names(old.certificate))
            signature = sign_rotation(old, new.cert_der)
            try:
                await asyncio.to_thread(_persist_identity, self.store, new)
                self.contexts.reload()
            except Exception:
                audit.event("rotated", f"identity rotation from {old.pin} failed", previous_pin=old.pin, peer=peer,
                            outcome="failed")
                raise
        audit.event("rotated", f"identity rotated from {old.pin} to {new.pin}", previous_pin=old.pin, pin=new.pin,
                    peer=peer, outcome="rotated")
        return web.json_response({"certificate": new.cert_pem.decode("ascii"), "pin": new.pin,
                                  "previous_pin": old.pin, "signature": base64.b64encode(signature).decode("ascii")})


def _request_deadlines(guard: ApiGuard):
    """The innermost middleware: a request head was parsed, so the connection's first-request
    deadline (agent/apiguard.py) is met; its body (at most MAX_REQUEST_BODY) must then arrive
    within the same API_PREAUTH_TIMEOUT, or the request is answered 408 and the connection
    closed. aiohttp itself has no deadline on a body: a byte a second would hold the connection
    (and its descriptor) for as long as the client liked."""

    @web.middleware
    async def request_deadlines(request: web.Request, handler):
        guard.request_arrived(request.transport)
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            # Never inflated (auto_decompress=False): a 200 kB gzip body became 443 MB before
            # client_max_size was checked, on aiohttp 3.8.4.
            response = _error(415, "unsupported_encoding", "request bodies are sent without Content-Encoding")
            response.force_close()
            return response
        try:
            await asyncio.wait_for(request.read(), guard.timeout)  # kept: the handler's read() returns it
        except asyncio.TimeoutError:
            response = _error(408, "request_timeout", f"the request body did not arrive within {guard.timeout:g} s")
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            if request.transport is not None:  # sent: now close (aiohttp would linger on the body 10 s)
                request.transport.close()
            return response
        return await handler(request)

    return request_deadlines


def create_app(store: StateDir, contexts: AuthorizedContexts, info: ApiInfo | None = None,
               guard: ApiGuard | None = None) -> web.Application:
    """The API as an aiohttp application (serve it only through `contexts.listening`).

    Routes: GET /v1/health, GET /v1/identity, GET|POST /v1/authorized-keys,
    DELETE /v1/authorized-keys/{pin}, POST /v1/identity/rotate.

    Args:
        store: the state directory.
        contexts: the TLS contexts; mutations reload them.
        info: host facts (SSH host keys glob, clock); defaults to the real host.
        guard: the port's guard (agent/apiguard.py), told of each request head; it also sets the
            deadline of each request's body.
    """
    api = _Api(store, contexts, info or ApiInfo())
    middlewares = [_errors, api.authorized_peer]
    if guard is not None:
        middlewares.append(_request_deadlines(guard))
    app = web.Application(client_max_size=MAX_REQUEST_BODY, middlewares=middlewares)
    app.router.add_get("/v1/health", api.health)
    app.router.add_get("/v1/identity", api.identity)
    app.router.add_get("/v1/authorized-keys", api.list_keys)
    app.router.add_post("/v1/authorized-keys", api.add_key)
    app.router.add_delete("/v1/authorized-keys/{pin}", api.remove_key)
    app.router.add_post("/v1/identity/rotate", api.rotate)
    return app


class _GuardedSite(web.SockSite):
    """aiohttp's SockSite, serving through the API's pre-authentication guard (agent/apiguard.py):
    the listening socket admits each connection into the guard's table, the handshake has the
    guard's deadline, and the request handler is watched for the end of the handshake. Only
    `start` differs from SockSite's (the same in aiohttp 3.8 and 3.9+)."""

    __slots__ = ()

    def __init__(self, runner: web.AppRunner, sock: GuardedSocket, guard: ApiGuard, *,
                 ssl_context: ssl.SSLContext) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=API_ACCEPT_BATCH)
        sock.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self._sock.guard
        self._server = await loop.create_server(
            guarded_protocol(server, guard), sock=self._sock, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=guard.timeout, ssl_shutdown_timeout=API_TLS_SHUTDOWN_TIMEOUT)
        # asyncio's listen(API_ACCEPT_BATCH) sized the kernel queue too: make it API_BACKLOG again.
        self._sock.listen(API_BACKLOG)


async def start_api(store: StateDir, host: str, port: int, info: ApiInfo | None = None, *,
                    sock: socket.socket | None = None,
                    guard: ApiGuard | None = None) -> tuple[web.AppRunner, AuthorizedContexts]:
    """Recover an interrupted rotation, then serve the API on host:port (0: an ephemeral port).

    Returns:
        the runner (its `addresses` give the bound port; stop it with `stop_api`) and the contexts
        (call `reload()` after changing authorized.json or the identity outside the API).
    Raises:
        NoIdentity: the appliance is not provisioned.
        OSError: the address cannot be bound.

    With `sock` (a listening socket handed over by systemd), host and port are ignored.
    `guard` polices the unauthenticated phase (agent/apiguard.py); one sized from the descriptor
    limit by default.
    """
    recovered = recover_rotation(store)
    if recovered == "completed":
        audit.event("rotated", "completed an identity rotation interrupted by a restart", outcome="completed")
    contexts = AuthorizedContexts(store)
    ours = sock is None
    if sock is None:
        from .apidoor import bind_api_socket

        sock = bind_api_socket(host, port)
    sock = guarded(sock)
    guard = guard or ApiGuard()
    # No access log: nobody reads it (aiohttp's logger is not kept, agent/systemd_glue.py), and
    # it would copy each client's request line.
    runner = web.AppRunner(create_app(store, contexts, info, guard), keepalive_timeout=API_KEEPALIVE_TIMEOUT,
                           access_log=None, auto_decompress=False)
    await runner.setup()
    try:
        await _GuardedSite(runner, sock, guard, ssl_context=contexts.listening).start()
    except BaseException:
        await runner.cleanup()
        if ours:  # a socket handed in (agent/apidoor.py, systemd) stays its owner's to retry on
            sock.close()
        raise
    return runner, contexts


async def stop_api(runner: web.AppRunner) -> None:
    """Close the listener and the open connections."""
    await runner.cleanup()
