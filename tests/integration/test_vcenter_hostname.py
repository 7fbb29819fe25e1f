"""With --ca-file (requester/vcenter_tls.py ca_context), the vCenter's certificate is verified
against the bundle and its host name checked during the handshake, before the login (and its
password) is written: a certificate the CA issued for another name gets nothing."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from firsttrust.identity import create_identity
from firsttrust.requester.vcenter_tls import ca_context

PASSWORD = b"<Login><password>hunter2</password></Login>"


class RecordingServer:
    """A TLS server for `vc.example` (its self-signed certificate is the CA bundle), recording
    every byte a client sends after the handshake."""

    def __init__(self, tmp_path) -> None:
        identity = create_identity("vc.example", dns_names=["vc.example"])
        self.ca_file = tmp_path / "ca.pem"
        self.ca_file.write_bytes(identity.cert_pem)
        (tmp_path / "k.pem").write_bytes(identity.key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.ca_file, tmp_path / "k.pem")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        try:
            raw, _ = self.sock.accept()
            with self.context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(2)
                while chunk := conn.recv(4096):
                    self.received += chunk
        except (OSError, ssl.SSLError):
            pass

    def login(self, server_hostname: str) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            with ca_context(str(self.ca_file)).wrap_socket(raw, server_hostname=server_hostname) as conn:
                conn.sendall(PASSWORD)

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def server(tmp_path):
    server = RecordingServer(tmp_path)
    yield server
    server.close()


def test_the_ca_verified_name_gets_the_login(server):
    server.login("vc.example")
    server.thread.join(5)
    assert server.received == PASSWORD


@pytest.mark.parametrize("name", ["other.example", "127.0.0.1"])
def test_a_certificate_for_another_name_is_refused_before_the_password_is_sent(server, name):
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        server.login(name)
    server.thread.join(5)
    assert server.received == b""


def test_the_ca_context_requires_tls_1_2_and_a_verified_chain(server):
    context = ca_context(str(server.ca_file))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_the_pinned_context_requires_tls_1_2():
    from firsttrust.requester.vcenter_tls import pinned_context
    assert pinned_context("ab" * 20).minimum_version >= ssl.TLSVersion.TLSv1_2
