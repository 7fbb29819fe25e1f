"""The TLS policy, exercised with real OpenSSL handshakes over memory BIOs (no sockets)."""

import ssl

import pytest

from firsttrust.identity import create_identity
from firsttrust.tlspolicy import SharedContext, apply_enrollment_client_policy, apply_policy


def context(side, identity, trusted, tmp_path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
    key, cert = tmp_path / f"{side}.key", tmp_path / f"{side}.crt"
    key.write_bytes(identity.key_pem)
    cert.write_bytes(identity.cert_pem)
    ctx.load_cert_chain(cert, key)
    return apply_policy(ctx, trusted)


def handshake(client_ctx, server_ctx):
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_side=False)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    done = set()
    for _ in range(10):
        for name, conn, out, peer_in in (("c", client, bios[1], bios[2]), ("s", server, bios[3], bios[0])):
            if name not in done:
                try:
                    conn.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if done == {"c", "s"}:
            # In TLS 1.3 the server judges the client certificate after the client is "done":
            # make the client read so a server-side alert reaches it.
            client.write(b"x")
            server_in = bios[2]
            server_in.write(bios[1].read())
            assert server.read(1) == b"x"
            return client, server
    raise AssertionError("handshake did not finish")


def test_mutual_tls13_with_exactly_the_trusted_certificates(requester_identity, appliance_identity, tmp_path):
    client, server = handshake(context("client", requester_identity, [appliance_identity.cert_der], tmp_path),
                               context("server", appliance_identity, [requester_identity.cert_der], tmp_path))
    assert client.version() == "TLSv1.3"
    assert client.getpeercert(binary_form=True) == appliance_identity.cert_der
    assert server.getpeercert(binary_form=True) == requester_identity.cert_der


def test_client_refuses_an_untrusted_server(requester_identity, appliance_identity, stranger_identity, tmp_path):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context("client", requester_identity, [stranger_identity.cert_der], tmp_path),
                  context("server", appliance_identity, [requester_identity.cert_der], tmp_path))


def test_server_refuses_an_untrusted_client(requester_identity, appliance_identity, stranger_identity, tmp_path):
    with pytest.raises(ssl.SSLError):
        handshake(context("client", stranger_identity, [appliance_identity.cert_der], tmp_path),
                  context("server", appliance_identity, [requester_identity.cert_der], tmp_path))


def test_tls12_is_refused(requester_identity, appliance_identity, tmp_path):
    client_ctx = context("client", requester_identity, [appliance_identity.cert_der], tmp_path)
    client_ctx.minimum_version = client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(client_ctx, context("server", appliance_identity, [requester_identity.cert_der], tmp_path))


def test_empty_trust_is_refused():
    with pytest.raises(ValueError):
        apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), [])


def shared(side, identity, tmp_path, max_anchors=64):
    def new_context():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
        key, cert = tmp_path / f"shared-{side}.key", tmp_path / f"shared-{side}.crt"
        key.write_bytes(identity.key_pem)
        cert.write_bytes(identity.cert_pem)
        ctx.load_cert_chain(cert, key)
        return ctx
    return SharedContext(new_context, max_anchors)


def test_a_shared_context_accepts_each_of_several_same_named_anchors(requester_identity, tmp_path):
    """Every appliance certificate is CN=firsttrust-appliance: a shared requester context must
    still accept each anchor it was given, not only the first of that name."""
    appliances = [create_identity("firsttrust-appliance") for _ in range(3)]
    requester = shared("client", requester_identity, tmp_path)
    for appliance in appliances:
        client_ctx = requester.for_peer(appliance.cert_der)
        client, _ = handshake(client_ctx, context("server", appliance, [requester_identity.cert_der], tmp_path))
        assert client.getpeercert(binary_form=True) == appliance.cert_der
    assert len({id(requester.for_peer(a.cert_der)) for a in appliances}) == 1  # one context for all


def test_a_shared_context_still_refuses_a_certificate_nobody_committed(requester_identity, appliance_identity,
                                                                        stranger_identity, tmp_path):
    requester = shared("client", requester_identity, tmp_path)
    requester.for_peer(appliance_identity.cert_der)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(requester.for_peer(create_identity("firsttrust-appliance").cert_der),
                  context("server", stranger_identity, [requester_identity.cert_der], tmp_path))


def test_a_shared_context_is_replaced_after_max_anchors(requester_identity, tmp_path):
    requester = shared("client", requester_identity, tmp_path, max_anchors=2)
    first = requester.for_peer(create_identity("a").cert_der)
    assert requester.for_peer(create_identity("b").cert_der) is first
    assert requester.for_peer(create_identity("c").cert_der) is not first


def test_servers_send_no_session_tickets(requester_identity, appliance_identity, tmp_path):
    """Nothing is resumed (docs/protocol.md section 7.3): a shared server context must not hand
    one connection a ticket that resumes on another."""
    server_ctx = context("server", appliance_identity, [requester_identity.cert_der], tmp_path)
    assert server_ctx.num_tickets == 0


def enrollment_client(identity, tmp_path):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    key, cert = tmp_path / "enroll-client.key", tmp_path / "enroll-client.crt"
    key.write_bytes(identity.key_pem)
    cert.write_bytes(identity.cert_pem)
    ctx.load_cert_chain(cert, key)
    return apply_enrollment_client_policy(ctx)


def test_the_enrollment_client_context_trusts_no_anchor_and_hands_the_presented_certificate_to_the_binding_check(
        requester_identity, appliance_identity, stranger_identity, tmp_path):
    """Section 7.3: the requester's enrollment context has no trust anchor and builds no chain;
    any server certificate completes the TLS 1.3 handshake (its CertificateVerify checked by
    OpenSSL) and is reported as presented, byte for byte, for the section 7.4 check to judge."""
    client_ctx = enrollment_client(requester_identity, tmp_path)
    assert client_ctx.get_ca_certs() == [] and client_ctx.verify_mode == ssl.CERT_NONE
    for server_identity in (appliance_identity, stranger_identity):
        client, server = handshake(client_ctx, context("server", server_identity, [requester_identity.cert_der],
                                                       tmp_path))
        assert client.version() == "TLSv1.3"
        assert client.getpeercert(binary_form=True) == server_identity.cert_der
        assert server.getpeercert(binary_form=True) == requester_identity.cert_der


def test_the_enrollment_client_context_speaks_only_tls13(requester_identity, appliance_identity, tmp_path):
    server_ctx = context("server", appliance_identity, [requester_identity.cert_der], tmp_path)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(enrollment_client(requester_identity, tmp_path), server_ctx)
    with pytest.raises(ValueError):
        apply_enrollment_client_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))


def test_an_own_key_that_does_not_load_is_an_invalid_certificate_naming_the_files(tmp_path):
    # OpenSSL says "[SSL] PEM lib (_ssl.c:NNNN)", which reached the user as the whole message.
    from firsttrust.errors import InvalidCertificate
    from firsttrust.identity import create_identity
    from firsttrust.requester.session import pinned_ssl_context
    from firsttrust.tlspolicy import load_own_identity

    own = create_identity("requester")
    cert, key = tmp_path / "identity.crt", tmp_path / "identity.key"
    cert.write_bytes(own.cert_pem)
    key.write_bytes(own.key_pem)
    load_own_identity(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key)
    key.write_bytes(b"garbage\n")
    with pytest.raises(InvalidCertificate, match="identity.key") as raised:
        load_own_identity(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key)
    assert "PEM lib" not in str(raised.value)
    with pytest.raises(InvalidCertificate, match="identity.key"):
        pinned_ssl_context(create_identity("appliance").cert_pem, key, cert)
