"""Pinning vCenter's certificate: thumbprint forms, and a mismatch sends nothing, not even a request line."""

from __future__ import annotations

import hashlib
import http.client
import socket
import ssl
import threading

import pytest

from firsttrust.identity import create_identity
from firsttrust.requester.vcenter_tls import (
    InvalidThumbprint,
    ThumbprintMismatch,
    format_thumbprint,
    parse_thumbprint,
    pinned_context,
)


def test_thumbprint_forms():
    digest = bytes(range(20))
    colon = format_thumbprint(digest)
    assert colon.startswith("00:01:02:") and len(colon) == 59
    for text in (colon, colon.lower(), colon.replace(":", ""), colon.replace(":", " ")):
        assert parse_thumbprint(text) == ("sha1", digest)
    assert parse_thumbprint("ab" * 32) == ("sha256", bytes([0xab]) * 32)


@pytest.mark.parametrize("text", ["", "zz" * 20, "ab" * 19, "ab" * 21, "ab" * 64, "abc", "AB:CD:EF"])
def test_anything_else_is_refused(text):
    with pytest.raises(InvalidThumbprint):
        parse_thumbprint(text)


class RecordingTLSServer:
    """Accepts TLS connections and records every byte a client sends after the handshake."""

    def __init__(self, identity, tmp_path) -> None:
        (tmp_path / "c.pem").write_bytes(identity.cert_pem)
        (tmp_path / "k.pem").write_bytes(identity.key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        raw, _ = self.sock.accept()
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(2)
                while chunk := conn.recv(4096):
                    self.received += chunk
                    if self.received.endswith(b"</Login>"):
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                        break
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def server(tmp_path):
    identity = create_identity("vcenter", ip_addresses=["127.0.0.1"])
    server = RecordingTLSServer(identity, tmp_path)
    server.der = identity.cert_der
    yield server
    server.close()


def _get(port: int, context) -> bytes:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    conn.request("POST", "/sdk", body=b"<Login><password>hunter2</password></Login>")
    return conn.getresponse().read()


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_the_pinned_certificate_is_accepted(server, algorithm):
    thumbprint = format_thumbprint(hashlib.new(algorithm, server.der).digest())
    assert _get(server.port, pinned_context(thumbprint)) == b"ok"
    server.thread.join(5)
    assert b"hunter2" in server.received


def test_another_certificate_is_refused_before_a_byte_is_sent(server):
    wrong = format_thumbprint(hashlib.sha1(server.der + b"x").digest())
    with pytest.raises(ThumbprintMismatch) as caught:
        _get(server.port, pinned_context(wrong))
    assert format_thumbprint(hashlib.sha1(server.der).digest()) in caught.value.args[0]
    server.thread.join(5)
    assert server.received == b""


def test_the_mismatch_is_no_certificate_verification_error_pyvmomi_would_retry():
    assert not issubclass(ThumbprintMismatch, ssl.SSLCertVerificationError)
