"""How the deployer knows it talks to the right vCenter before it sends the credentials.

Two ways, and no third: a CA bundle (ordinary verification, host name included), or a pinned
certificate thumbprint as vCenter shows it: SHA-1 in colon-hex (`AB:CD:...`, 20 bytes), or
SHA-256 (32 bytes); colons and case do not matter. There is no "insecure" switch.

`pinned_context` returns an SSLContext whose `wrap_socket` checks the peer's certificate right
after the handshake and closes the socket on a mismatch, before a single HTTP byte is written.
Every connection pyVmomi opens through it is checked, not only the first one. pyVmomi's own
`thumbprint=` argument is not used: in pyVmomi 9 it is consulted only when ordinary verification
fails, and not at all with a context that does not verify.

Both contexts also bound every socket they wrap (`TIMEOUT`, unless the caller set its own): one
TLS handshake, one read or one write of a vCenter call, on Debian 12's pyVmomi 6.7.1 as on newer
ones (6.7.1's SmartConnect takes no socket timeout, and no pyVmomi bounds its version probe). A
vCenter that accepts the connection and then stalls fails the call with TimeoutError, which
vsphere.api_call names ("vCenter did not answer within 60 s"); the TCP connect is the system's.

And they bound what an answer may cost in memory: pyVmomi reads a SOAP answer to its end (the
version probe's whole, into one bytes object), and neither it nor http.client has a limit. A
socket of these contexts refuses to receive more than MAX_ANSWER_BYTES since it last sent
(`AnswerTooLarge`): an answer follows its request, so that is one answer, whatever its framing.
The largest the deployer asks for is one page of RetrievePropertiesEx, far below the bound. A
compressed answer is bounded by what it inflates to as well (vsphere.py `_bound_decompression`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl

from firsttrust.errors import FirsttrustError

_HEX_RE = re.compile(r"[0-9a-f]+")
ALGORITHMS = {20: "sha1", 32: "sha256"}
# Seconds one socket operation with vCenter may take (see the module docstring): a vCenter call is
# one round trip (the waits are WaitForUpdatesEx of a second, vsphere_wait.py), so a minute without
# a byte means vCenter stalls, not that it works.
TIMEOUT = 60.0
# Bytes one socket may receive between two sends: one answer of vCenter, HTTP head included.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class InvalidThumbprint(FirsttrustError):
    """A --thumbprint that is not SHA-1 or SHA-256 hex."""

    code = "invalid_thumbprint"


class InvalidCaFile(InvalidThumbprint):
    """A --ca-file that cannot be read or holds no CA certificate: whom to trust, given wrong
    (an input error, exit 2, as a bad --thumbprint)."""

    code = "ca_file"


class ThumbprintMismatch(ssl.SSLError):
    """The server's certificate is not the pinned one. Nothing was sent to it.

    An ssl.SSLError, so that it surfaces from the connect of whatever HTTP client holds the
    context; not an SSLCertVerificationError, which pyVmomi catches to retry without checks.
    """


def parse_thumbprint(text: str) -> tuple[str, bytes]:
    """("sha1" | "sha256", digest) from `AB:CD:..`, `abcd..` or `AB CD ..`.

    Raises:
        InvalidThumbprint: not 20 or 32 bytes of hex.
    """
    compact = re.sub(r"[\s:]", "", text or "").lower()
    if not _HEX_RE.fullmatch(compact) or len(compact) // 2 not in ALGORITHMS or len(compact) % 2:
        raise InvalidThumbprint("a thumbprint is the SHA-1 (20 bytes) or SHA-256 (32 bytes) of the certificate in "
                                "hex, e.g. as vCenter shows it: AB:CD:...")
    digest = bytes.fromhex(compact)
    return ALGORITHMS[len(digest)], digest


def format_thumbprint(digest: bytes) -> str:
    """Colon-hex, uppercase: how vCenter and ESXi show a thumbprint."""
    return ":".join(f"{byte:02X}" for byte in digest)


def certificate_matches(der: bytes, thumbprint: tuple[str, bytes]) -> bool:
    algorithm, expected = thumbprint
    return hmac.compare_digest(hashlib.new(algorithm, der).digest(), expected)


class AnswerTooLarge(OSError):
    """vCenter's answer to one request went past MAX_ANSWER_BYTES (module docstring)."""


class _BoundedSocket(ssl.SSLSocket):
    """An SSLSocket that counts what it received since it last sent (module docstring)."""

    _received = 0

    def send(self, data, flags=0):  # type: ignore[override]  # sendall sends through this
        self._received = 0
        return super().send(data, flags)

    def recv(self, buflen=1024, flags=0):  # type: ignore[override]
        data = super().recv(buflen, flags)
        self._add(len(data))
        return data

    def recv_into(self, buffer, nbytes=None, flags=0):  # type: ignore[override]  # http.client's reads
        count = super().recv_into(buffer, nbytes, flags)
        self._add(count)
        return count

    def _add(self, count: int) -> None:
        self._received += count
        if self._received > MAX_ANSWER_BYTES:
            self.close()
            raise AnswerTooLarge(f"vCenter's answer is larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")


class _VcenterContext(ssl.SSLContext):
    """An SSLContext whose sockets time out after TIMEOUT and refuse an answer larger than
    MAX_ANSWER_BYTES (see the module docstring)."""

    sslsocket_class = _BoundedSocket

    def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[override]
        if sock.gettimeout() is None:  # an upload's connection has its own (vsphere.UPLOAD_TIMEOUT)
            sock.settimeout(TIMEOUT)
        return super().wrap_socket(sock, *args, **kwargs)


class _PinnedContext(_VcenterContext):
    pinned: tuple[str, bytes]

    def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[override]
        kwargs["do_handshake_on_connect"] = True
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        der = wrapped.getpeercert(binary_form=True)
        if der is None or not certificate_matches(der, self.pinned):
            seen = format_thumbprint(hashlib.sha1(der).digest()) if der else "none"
            wrapped.close()
            raise ThumbprintMismatch(f"the server's certificate does not match the pinned thumbprint "
                                     f"(its SHA-1 thumbprint is {seen})")
        return wrapped


def pinned_context(thumbprint: str) -> ssl.SSLContext:
    """A client context that accepts exactly the certificate with this thumbprint.

    The chain and host name are not verified (a vCenter's certificate is commonly self-signed
    or from its own VMCA); the pin replaces both, and is checked on every connection.

    Raises:
        InvalidThumbprint: see parse_thumbprint.
    """
    pinned = parse_thumbprint(thumbprint)
    context = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.pinned = pinned
    return context


def ca_context(ca_file: str) -> ssl.SSLContext:
    """Ordinary verification against a CA bundle, host name included.

    Raises:
        InvalidCaFile: the bundle cannot be read, or holds no certificate OpenSSL loads.
    """
    context = _VcenterContext(ssl.PROTOCOL_TLS_CLIENT)  # what ssl.create_default_context makes
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:  # before OSError: SSLError is one, and its strerror is OpenSSL's whole line
        raise InvalidCaFile(f"cannot load CA bundle {ca_file}: {exc.reason or 'no CA certificate in it'}") from None
    except OSError as exc:
        raise InvalidCaFile(f"cannot load CA bundle {ca_file}: {exc.strerror or type(exc).__name__}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
