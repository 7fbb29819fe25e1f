"""SRP-6a (RFC 5054) on top of PyPI's `srp` (pysrp), with pysrp's sharp edges filed off.

This is the only module that touches pysrp, and so the only one that sets its process-wide
switches (`rfc5054_enable`, `no_username_in_x`). What it adds to pysrp:

* the RFC 5054 3072-bit group (pysrp has no constant for it) with g = 5 and SHA-512;
* the fast OpenSSL (ctypes) backend loads on a machine with only the libssl3 runtime: pysrp
  asks for `libssl.so`, which only libssl-dev provides; we point it at `libssl.so.3`;
* a loud SlowSRPBackendWarning (and an error log line) if only the pure-Python fallback loads;
* A % N == 0 rejected on the server and B % N == 0 on the client (pysrp's ctypes User only
  rejects B == 0, so B = N would pass);
* proofs compared with hmac.compare_digest (pysrp uses ==);
* salts chosen by the caller (pysrp draws its own, 4 bytes by default), so transcripts are
  reproducible from injected randomness.

Exactly how pysrp computes each value (with rfc5054 mode on) is in docs/protocol.md, "SRP".
"""

from __future__ import annotations

import ctypes
import os
import hashlib
import hmac
import importlib
import logging
import warnings
from dataclasses import dataclass
from types import ModuleType

from .errors import AuthenticationFailed, InvalidSRPParameter, SRPBackendError

log = logging.getLogger("firsttrust.srp")


class SlowSRPBackendWarning(RuntimeWarning):
    """Only pysrp's pure-Python backend could be loaded: every handshake is ~30x slower."""


# pysrp's ctypes backend calls ctypes.cdll.LoadLibrary("libssl.so.1.1.0"), then "libssl.so".
# On Debian, "libssl.so" is the development symlink (libssl-dev); the runtime package libssl3
# ships only the versioned soname. The BN_* symbols it needs live in libcrypto, which libssl
# links, so any libssl soname will do.
_RUNTIME_SONAMES = ("libssl.so.3", "libssl.so.1.1")


def _load_backend() -> tuple[ModuleType, str]:
    loader = ctypes.cdll
    real_load = loader.LoadLibrary

    def load_library(name: str):  # type: ignore[no-untyped-def]
        if name != "libssl.so":
            return real_load(name)
        for candidate in (name, *_RUNTIME_SONAMES):
            try:
                return real_load(candidate)
            except OSError:
                continue
        raise OSError("no libssl shared library found (tried libssl.so, " + ", ".join(_RUNTIME_SONAMES) + ")")

    loader.LoadLibrary = load_library  # type: ignore[method-assign]
    try:
        # A failed import of srp._ctsrp is dropped from sys.modules, so this retries it even
        # when someone imported `srp` before us and pysrp fell back silently.
        return importlib.import_module("srp._ctsrp"), "openssl"
    except (ImportError, OSError) as exc:
        reason = str(exc)
    finally:
        del loader.LoadLibrary  # back to the class's own method
    pure = importlib.import_module("srp._pysrp")
    message = (f"pysrp's OpenSSL backend could not be loaded ({reason}); using the pure-Python "
               "backend, about 30x slower. Install libssl3.")
    warnings.warn(message, SlowSRPBackendWarning, stacklevel=2)
    log.error("%s", message)
    return pure, "pure-python"


_backend, BACKEND = _load_backend()

# The process-wide switches, set once, here and nowhere else: RFC 5054 padding in k and u,
# and the username kept in x (x = H(s | H(I | ":" | P)), RFC 5054 section 2.4).
_backend.rfc5054_enable(True)
_backend.no_username_in_x(False)


def require_fast_backend() -> None:
    """Raise SRPBackendError unless the OpenSSL backend is in use."""
    if BACKEND != "openssl":
        raise SRPBackendError("SRP is running on pysrp's pure-Python backend (install libssl3)")


_HASH_IDS = {"sha1": _backend.SHA1, "sha256": _backend.SHA256, "sha512": _backend.SHA512}


@dataclass(frozen=True)
class SRPGroup:
    name: str
    N: int
    g: int
    hash_name: str

    @property
    def n_bytes(self) -> int:
        return (self.N.bit_length() + 7) // 8

    def hash(self, *parts: bytes) -> bytes:
        h = hashlib.new(self.hash_name)
        for part in parts:
            h.update(part)
        return h.digest()

    def pad(self, value: int) -> bytes:
        """PAD() of RFC 5054: big-endian, left-padded with zeros to the length of N."""
        return value.to_bytes(self.n_bytes, "big")

    def _pysrp_args(self) -> dict[str, object]:
        return {"hash_alg": _HASH_IDS[self.hash_name], "ng_type": _backend.NG_CUSTOM,
                "n_hex": b"%X" % self.N, "g_hex": b"%X" % self.g}


# RFC 5054 Appendix A, 3072-bit group (the RFC 3526 MODP prime), generator 5.
_N_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
    "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF", 16)

# RFC 5054 Appendix A, 1024-bit group, generator 2: only for the Appendix B test vectors.
_N_1024 = int(
    "EEAF0AB9ADB38DD69C33F80AFA8FC5E86072618775FF3C0B9EA2314C9C256576D674DF7496EA81D3383B4813"
    "D692C6E0E0D5D8E250B98BE48E495C1D6089DAD15DC7D7B46154D6B6CE8EF4AD69B15D4982559B297BCF1885"
    "C529F566660E57EC68EDBC3C05726CC02FD4CBF4976EAA9AFD5138FE8376435B9FC61D2FC0EB06E3", 16)

GROUP_3072_SHA512 = SRPGroup("rfc5054-3072/sha512", _N_3072, 5, "sha512")
GROUP_1024_SHA1 = SRPGroup("rfc5054-1024/sha1", _N_1024, 2, "sha1")

# The SRP username I. Fixed by the protocol: there is one enrollment identity per appliance.
IDENTITY = b"firsttrust-enrollment"

# pysrp's ctypes backend wants exactly 32-byte ephemerals a and b (256-bit exponents).
EPHEMERAL_BYTES = 32


def _minimal(data: bytes) -> bytes:
    """pysrp turns byte strings into OpenSSL BIGNUMs and back: leading zero bytes vanish."""
    return data.lstrip(b"\0")


def compute_verifier(password: bytes, salt: bytes, group: SRPGroup = GROUP_3072_SHA512,
                     identity: bytes = IDENTITY) -> bytes:
    """v = g^x mod N with x = H(s | H(I | ":" | P)), returned as PAD(v).

    pysrp cannot take a caller's salt, so x and v are computed here exactly as pysrp does it
    (tests check both give the same verifier for the same salt).
    """
    x = int.from_bytes(group.hash(_minimal(salt), group.hash(identity + b":" + password)), "big")
    return group.pad(pow(group.g, x, group.N))


SALT_BYTES = 32  # RFC 5054 asks for >= 16; 32 costs nothing


def new_verifier_record(password: bytes, random=None, group: SRPGroup = GROUP_3072_SHA512,
                        identity: bytes = IDENTITY) -> tuple[bytes, bytes]:
    """A fresh (salt, verifier) for `password`. The salt's first byte is never zero, so the
    salt bytes and pysrp's minimal integer encoding of them are the same string."""
    salt = bytearray((random or os.urandom)(SALT_BYTES))
    salt[0] |= 0x80
    return bytes(salt), compute_verifier(password, bytes(salt), group, identity)


def _ephemeral(value: bytes) -> bytes:
    if len(value) != EPHEMERAL_BYTES or not any(value):
        raise ValueError(f"SRP ephemerals are {EPHEMERAL_BYTES} random bytes")
    return value


def _construct(cls, *args, ephemeral_name: str, ephemeral: bytes, **kwargs):
    """pysrp's backends disagree on the ephemeral's length (ctypes: 32 bytes; pure Python
    1.0.22: 256). Left-padding with zeros gives the pure backend the same integer."""
    try:
        return cls(*args, **{ephemeral_name: ephemeral}, **kwargs)
    except ValueError:
        if BACKEND == "openssl":
            raise
        return cls(*args, **{ephemeral_name: bytes(256 - len(ephemeral)) + ephemeral}, **kwargs)


class SRPServer:
    """The host side: knows salt and verifier, never the password.

    Raises on construction:
        InvalidSRPParameter: A % N == 0 (RFC 5054 section 2.5.4: the host MUST abort).
    """

    def __init__(self, salt: bytes, verifier: bytes, A: bytes, b: bytes,
                 group: SRPGroup = GROUP_3072_SHA512, identity: bytes = IDENTITY) -> None:
        self.group = group
        if int.from_bytes(A, "big") % group.N == 0:
            raise InvalidSRPParameter("client public value A is 0 mod N")
        self._impl = _construct(_backend.Verifier, identity, salt, verifier, A, ephemeral_name="bytes_b",
                                ephemeral=_ephemeral(b), **group._pysrp_args())
        _, B = self._impl.get_challenge()
        if B is None:  # pysrp's own A % N check; unreachable after ours, kept as a backstop
            raise InvalidSRPParameter("client public value A is 0 mod N")
        self.salt = salt
        self.B = group.pad(int.from_bytes(B, "big"))
        self._key: bytes | None = None

    def verify(self, M1: bytes) -> bytes:
        """Check the client's proof M1; return the host proof M2 = H(A | M1 | K).

        Raises:
            AuthenticationFailed: M1 is wrong (the client does not know the password).
        """
        # pysrp derives M, H_AMK and K inside verify_session and then compares with `==`.
        # Passing an empty proof makes it derive without accepting; we compare ourselves.
        self._impl.verify_session(b"")
        if not hmac.compare_digest(self._impl.M, M1):
            raise AuthenticationFailed("SRP client proof M1 did not verify (wrong SEC-A)")
        self._key = self._impl.K
        return self._impl.H_AMK

    @property
    def session_key(self) -> bytes:
        if self._key is None:
            raise AuthenticationFailed("SRP session is not authenticated")
        return self._key


class SRPClient:
    """The user side: knows the password."""

    def __init__(self, password: bytes, a: bytes, group: SRPGroup = GROUP_3072_SHA512,
                 identity: bytes = IDENTITY) -> None:
        self.group = group
        self._impl = _construct(_backend.User, identity, password, ephemeral_name="bytes_a",
                                ephemeral=_ephemeral(a), **group._pysrp_args())
        _, A = self._impl.start_authentication()
        self.A = group.pad(int.from_bytes(A, "big"))
        self._M1: bytes | None = None
        self._key: bytes | None = None

    def process_challenge(self, salt: bytes, B: bytes) -> bytes:
        """Compute the client proof M1 = H(H(N) xor H(g) | H(I) | s | A | B | K).

        Raises:
            InvalidSRPParameter: B % N == 0 (RFC 5054 section 2.5.3; pysrp checks only B == 0),
                or u == 0.
        """
        if int.from_bytes(B, "big") % self.group.N == 0:
            raise InvalidSRPParameter("server public value B is 0 mod N")
        M1 = self._impl.process_challenge(salt, B)
        if M1 is None:
            raise InvalidSRPParameter("SRP scrambling parameter u is 0")
        self._M1 = M1
        return M1

    @property
    def unverified_session_key(self) -> bytes:
        """K after process_challenge, before M2 is checked: the requester needs it to commit to
        its certificate in the same frame as M1. Nothing may rely on it being authentic."""
        if self._M1 is None:
            raise AuthenticationFailed("SRP challenge not processed")
        return self._impl.K

    def verify(self, M2: bytes) -> None:
        """Check the host proof M2.

        Raises:
            AuthenticationFailed: M2 is wrong (the server does not hold the verifier).
        """
        if self._M1 is None:
            raise AuthenticationFailed("SRP challenge not processed")
        if not hmac.compare_digest(self._impl.H_AMK, M2):
            raise AuthenticationFailed("SRP server proof M2 did not verify")
        self._key = self._impl.K

    @property
    def session_key(self) -> bytes:
        if self._key is None:
            raise AuthenticationFailed("SRP session is not authenticated")
        return self._key
