"""The SRP layer: backend, RFC 5054 vectors, pysrp compatibility, and the checks pysrp lacks."""

import os
import subprocess
import sys
import textwrap

import pytest
import srp._ctsrp as ctsrp

from firsttrust import srp6a
from firsttrust.errors import AuthenticationFailed, InvalidSRPParameter
from firsttrust.srp6a import GROUP_1024_SHA1, GROUP_3072_SHA512, SRPClient, SRPServer, compute_verifier

N = GROUP_3072_SHA512.N


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def run_without_libssl(body: str, *, only: tuple[str, ...] | None = None,
                       timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `body` in a fresh interpreter in which loading libssl fails: every libssl, or only the
    library names in `only` (("libssl.so", "libssl.so.1.1.0") imitates a machine without libssl-dev)."""
    hidden = f"str(name) in {only!r}" if only else '"libssl" in str(name)'
    prelude = textwrap.dedent(f"""
        import ctypes
        _real = ctypes.CDLL.__init__
        def _init(self, name, *a, **k):
            if {hidden}:
                raise OSError(str(name) + ": cannot open shared object file")
            return _real(self, name, *a, **k)
        ctypes.CDLL.__init__ = _init
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], capture_output=True,
                          text=True, timeout=timeout)


def test_fast_openssl_backend_is_active():
    assert srp6a.BACKEND == "openssl"
    assert srp6a._backend.__name__ == "srp._ctsrp"
    srp6a.require_fast_backend()


def test_fast_backend_loads_with_only_the_libssl3_runtime():
    # Without libssl-dev the unversioned libssl.so (and pysrp's libssl.so.1.1.0) do not exist.
    out = run_without_libssl("""
        import warnings
        warnings.simplefilter("error")
        import srp  # pysrp alone falls back to pure Python here...
        assert srp._mod.__name__ == "srp._pysrp", srp._mod
        from firsttrust import srp6a  # ...firsttrust still gets the OpenSSL backend
        print(srp6a.BACKEND)
    """, only=("libssl.so", "libssl.so.1.1.0"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "openssl"


def test_pure_python_fallback_warns_loudly():
    out = run_without_libssl("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from firsttrust import srp6a
        print(srp6a.BACKEND, [w.category.__name__ for w in caught])
        try:
            srp6a.require_fast_backend()
        except Exception as exc:
            print(type(exc).__name__, exc.code)
    """)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first == "pure-python ['SlowSRPBackendWarning']"
    assert second == "SRPBackendError srp_backend"
    assert "pure-Python backend" in out.stderr  # the error log line


def test_group_3072_is_the_rfc5054_safe_prime():
    assert N.bit_length() == 3072
    assert GROUP_3072_SHA512.g == 5
    q = (N - 1) // 2
    # Fermat checks on N and q (a composite passing both for these bases is not a concern here),
    # and 5 generates the full group (it is a quadratic non-residue mod N).
    for base in (2, 3, 7):
        assert pow(base, N - 1, N) == 1
        assert pow(base, q - 1, q) == 1
    assert pow(5, q, N) == N - 1


# RFC 5054 Appendix B (1024-bit group, SHA-1).
RFC_I = b"alice"
RFC_P = b"password123"
RFC_s = h("BEB25379 D1A8581E B5A72767 3A2441EE")
RFC_v = h("""7E273DE8 696FFC4F 4E337D05 B4B375BE B0DDE156 9E8FA00A 9886D812 9BADA1F1 822223CA 1A605B53
             0E379BA4 729FDC59 F105B478 7E5186F5 C671085A 1447B52A 48CF1970 B4FB6F84 00BBF4CE BFBB1681
             52E08AB5 EA53D15C 1AFF87B2 B9DA6E04 E058AD51 CC72BFC9 033B564E 26480D78 E955A5E2 9E7AB245
             DB2BE315 E2099AFB""")
RFC_a = h("60975527 035CF2AD 1989806F 0407210B C81EDC04 E2762A56 AFD529DD DA2D4393")
RFC_b = h("E487CB59 D31AC550 471E81F0 0F6928E0 1DDA08E9 74A004F4 9E61F5D1 05284D20")
RFC_A = h("""61D5E490 F6F1B795 47B0704C 436F523D D0E560F0 C64115BB 72557EC4 4352E890 3211C046 92272D8B
             2D1A5358 A2CF1B6E 0BFCF99F 921530EC 8E393561 79EAE45E 42BA92AE ACED8251 71E1E8B9 AF6D9C03
             E1327F44 BE087EF0 6530E69F 66615261 EEF54073 CA11CF58 58F0EDFD FE15EFEA B349EF5D 76988A36
             72FAC47B 0769447B""")
RFC_B = h("""BD0C6151 2C692C0C B6D041FA 01BB152D 4916A1E7 7AF46AE1 05393011 BAF38964 DC46A067 0DD125B9
             5A981652 236F99D9 B681CBF8 7837EC99 6C6DA044 53728610 D0C6DDB5 8B318885 D7D82C7F 8DEB75CE
             7BD4FBAA 37089E6F 9C6059F3 88838E7A 00030B33 1EB76840 910440B1 B27AAEAE EB4012B7 D7665238
             A8E3FB00 4B117B58""")
RFC_u = h("CE38B959 3487DA98 554ED47D 70A7AE5F 462EF019")
RFC_S = h("""B0DC82BA BCF30674 AE450C02 87745E79 90A3381F 63B387AA F271A10D 233861E3 59B48220 F7C4693C
             9AE12B0A 6F67809F 0876E2D0 13800D6C 41BB59B6 D5979B5C 00A172B4 A2A5903A 0BDCAF8A 709585EB
             2AFAFA8F 3499B200 210DCC1F 10EB3394 3CD67FC8 8A2F39A4 BE5BEC4E C0A3212D C346D7E4 74B29EDE
             8A469FFE CA686E5A""")


def test_rfc5054_appendix_b_vectors_through_the_srp_layer():
    g = GROUP_1024_SHA1
    assert compute_verifier(RFC_P, RFC_s, g, RFC_I) == RFC_v
    client = SRPClient(RFC_P, RFC_a, g, RFC_I)
    assert client.A == RFC_A
    server = SRPServer(RFC_s, RFC_v, client.A, RFC_b, g, RFC_I)
    assert server.B == RFC_B
    assert g.hash(g.pad(int.from_bytes(RFC_A, "big")), g.pad(int.from_bytes(RFC_B, "big"))) == RFC_u
    M1 = client.process_challenge(RFC_s, server.B)
    M2 = server.verify(M1)
    client.verify(M2)
    # pysrp's session key is K = H(S) over S's minimal big-endian bytes.
    assert client.session_key == server.session_key == g.hash(RFC_S)


def test_our_verifier_equals_pysrps_for_its_own_salt():
    args = GROUP_3072_SHA512._pysrp_args()
    salt, verifier = ctsrp.create_salted_verification_key(srp6a.IDENTITY, b"some password", salt_len=16, **args)
    assert compute_verifier(b"some password", salt) == GROUP_3072_SHA512.pad(int.from_bytes(verifier, "big"))


def test_new_verifier_record_salt_is_32_bytes_without_a_leading_zero():
    salt, verifier = srp6a.new_verifier_record(b"pw" * 10, random=lambda n: bytes(n))
    assert len(salt) == 32 and salt[0] == 0x80
    assert len(verifier) == 384


def handshake(password=b"right password", server_password=b"right password"):
    salt, verifier = srp6a.new_verifier_record(server_password)
    client = SRPClient(password, os.urandom(32))
    server = SRPServer(salt, verifier, client.A, os.urandom(32))
    return client, server, salt


def test_full_handshake_agrees_on_a_64_byte_key():
    client, server, salt = handshake()
    M2 = server.verify(client.process_challenge(salt, server.B))
    client.verify(M2)
    assert len(client.session_key) == 64
    assert client.session_key == server.session_key


def test_wrong_password_fails_on_the_server():
    client, server, salt = handshake(password=b"wrong password")
    M1 = client.process_challenge(salt, server.B)
    with pytest.raises(AuthenticationFailed):
        server.verify(M1)
    with pytest.raises(AuthenticationFailed):
        server.session_key


def test_server_without_the_verifier_fails_on_the_client():
    client, server, salt = handshake(server_password=b"another password")
    M1 = client.process_challenge(salt, server.B)
    with pytest.raises(AuthenticationFailed):
        server.verify(M1)
    with pytest.raises(AuthenticationFailed):
        client.verify(os.urandom(64))
    with pytest.raises(AuthenticationFailed):
        client.session_key


@pytest.mark.parametrize("A", [0, N, 2 * N, 3 * N])
def test_server_rejects_A_that_is_zero_mod_N(A):
    salt, verifier = srp6a.new_verifier_record(b"pw")
    with pytest.raises(InvalidSRPParameter):
        SRPServer(salt, verifier, A.to_bytes(385, "big"), os.urandom(32))


@pytest.mark.parametrize("B", [0, N, 2 * N])
def test_client_rejects_B_that_is_zero_mod_N(B):
    client = SRPClient(b"pw", os.urandom(32))
    with pytest.raises(InvalidSRPParameter):
        client.process_challenge(os.urandom(32), B.to_bytes(385, "big"))


def test_pysrp_alone_would_accept_B_equal_N():
    # The reason for our own check: pysrp's ctypes User only rejects B == 0.
    args = GROUP_3072_SHA512._pysrp_args()
    user = ctsrp.User(srp6a.IDENTITY, b"pw", bytes_a=os.urandom(32), **args)
    assert user.process_challenge(os.urandom(32), N.to_bytes(384, "big")) is not None


def test_ephemerals_must_be_32_random_bytes():
    with pytest.raises(ValueError):
        SRPClient(b"pw", b"\x01" * 31)
    with pytest.raises(ValueError):
        SRPClient(b"pw", bytes(32))


def test_pure_python_fallback_still_completes_a_handshake():
    out = run_without_libssl("""
        import os, warnings
        warnings.simplefilter("ignore")
        from firsttrust import srp6a
        assert srp6a.BACKEND == "pure-python"
        salt, v = srp6a.new_verifier_record(b"pw")
        c = srp6a.SRPClient(b"pw", os.urandom(32)); s = srp6a.SRPServer(salt, v, c.A, os.urandom(32))
        c.verify(s.verify(c.process_challenge(salt, s.B)))
        print(c.session_key == s.session_key)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# --- firsttrust's own checks, layer by layer: pysrp's repeated checks bypassed -----------------
# pysrp's ctypes backend makes its SRP-6a safety checks (Verifier: A % N == 0; User: B == 0,
# u == 0) through one module-level helper, BN_is_zero. With it answering "not zero", pysrp would
# accept anything, and only firsttrust's own checks stand between a bad value and a session.


@pytest.fixture
def pysrp_checks_bypassed(monkeypatch):
    assert srp6a.BACKEND == "openssl"
    monkeypatch.setattr(ctsrp, "BN_is_zero", lambda bn: False)


def test_the_bypass_really_makes_pysrp_accept_A_equal_N(pysrp_checks_bypassed):
    salt, verifier = srp6a.new_verifier_record(b"pw")
    impl = ctsrp.Verifier(srp6a.IDENTITY, salt, verifier, N.to_bytes(385, "big"), bytes_b=os.urandom(32),
                          **GROUP_3072_SHA512._pysrp_args())
    assert impl.get_challenge()[1] is not None


@pytest.mark.parametrize("A", [0, N, 2 * N])
def test_firsttrust_alone_refuses_A_zero_mod_N(pysrp_checks_bypassed, A):
    salt, verifier = srp6a.new_verifier_record(b"pw")
    with pytest.raises(InvalidSRPParameter, match="A is 0 mod N"):
        SRPServer(salt, verifier, A.to_bytes(385, "big"), os.urandom(32))


@pytest.mark.parametrize("B", [0, N, 2 * N])
def test_firsttrust_alone_refuses_B_zero_mod_N(pysrp_checks_bypassed, B):
    client = SRPClient(b"pw", os.urandom(32))
    with pytest.raises(InvalidSRPParameter, match="B is 0 mod N"):
        client.process_challenge(os.urandom(32), B.to_bytes(385, "big"))


def test_firsttrust_alone_compares_M1_when_pysrp_would_accept_any_proof(monkeypatch):
    # pysrp's own comparison made to accept everything: the refusal must be firsttrust's.
    real = ctsrp.Verifier.verify_session

    def accepting(self, user_M, bytes_A=None):
        real(self, user_M, bytes_A)
        self._authenticated = True
        return self.H_AMK

    monkeypatch.setattr(ctsrp.Verifier, "verify_session", accepting)
    salt, verifier = srp6a.new_verifier_record(b"right")
    client = SRPClient(b"wrong", os.urandom(32))
    server = SRPServer(salt, verifier, client.A, os.urandom(32))
    M1 = client.process_challenge(salt, server.B)
    with pytest.raises(AuthenticationFailed, match="M1"):
        server.verify(M1)
