"""An attacker for the demo: a relay that sits between requester and appliance.

It forwards the four plaintext SRP frames unchanged (hello, challenge, client proof, server
proof: it cannot forge them, it knows neither SEC-A nor a verifier), so SRP succeeds end to end.
Then, at the STARTTLS point, it terminates TLS itself on both sides with its own key, hoping to
sit inside both sessions. The protocol defeats that twice (docs/protocol.md, binding TLS to
SRP): each side committed, under a key from the SRP session, to the certificate it would present
and checks the other's certificate against that commitment. The requester's TLS context trusts
exactly the committed appliance certificate, so it rejects the relay's; the appliance likewise
rejects the relay's client certificate, and authorizes nothing.

This is the attack of tests/integration/test_enrollment_server.py
(test_relay_that_terminates_tls_is_caught_on_both_sides), as a reusable object.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from firsttrust.framing import HEADER
from firsttrust.identity import create_identity
from firsttrust.tlspolicy import VERIFY_NO_CHECK_TIME

# Frames forwarded before the STARTTLS point: hello ->, challenge <-, client proof ->, server proof <-.
PLAINTEXT_FRAMES = ("requester", "appliance", "requester", "appliance")
# Per read and per TLS handshake: the real peers answer within milliseconds on loopback.
STEP_TIMEOUT = 5.0


@dataclass
class RelayOutcome:
    """What the relay saw: how far it got, and how each TLS side ended."""

    frames_forwarded: int = 0
    tls_to_requester: str = "not attempted"
    tls_to_appliance: str = "not attempted"
    errors: list[str] = field(default_factory=list)

    @property
    def inside_tls(self) -> bool:
        """Whether the relay completed TLS with both sides (the attack would have worked)."""
        return self.tls_to_requester == "established" and self.tls_to_appliance == "established"


class TlsTerminatingRelay:
    """Listen on 127.0.0.1; relay each connection to `target` as described above.

    Use as `async with TlsTerminatingRelay(host, port, workdir) as relay:` and connect the
    requester to `relay.port`; `await relay.finished()` then returns the outcome.
    """

    def __init__(self, target_host: str, target_port: int, workdir: Path) -> None:
        self.target = (target_host, target_port)
        identity = create_identity("relay")  # the attacker's own key: not the appliance's, not the requester's
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cert, self._key = workdir / "relay.crt", workdir / "relay.key"
        self._cert.write_bytes(identity.cert_pem)
        self._key.touch(mode=0o600)
        self._key.write_bytes(identity.key_pem)
        self.outcome = RelayOutcome()
        self._server: asyncio.base_events.Server | None = None
        self._done = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> "TlsTerminatingRelay":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), STEP_TIMEOUT)

    async def finished(self, timeout: float = 2 * STEP_TIMEOUT) -> RelayOutcome:
        """Wait until the relayed connection is over on both sides."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._done.wait()
        return self.outcome

    def _context(self, side: str) -> ssl.SSLContext:
        # The attacker accepts anything: it wants in, it does not care whom it talks to.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
        context.load_cert_chain(self._cert, self._key)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.verify_flags |= VERIFY_NO_CHECK_TIME
        return context

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_writer = None
        try:
            s_reader, s_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), STEP_TIMEOUT)
            ends = {"requester": (c_reader, s_writer), "appliance": (s_reader, c_writer)}
            for sender in PLAINTEXT_FRAMES:
                source, destination = ends[sender]
                destination.write(await _frame(source))
                await destination.drain()
                self.outcome.frames_forwarded += 1
            results = await asyncio.gather(
                asyncio.wait_for(c_writer.start_tls(self._context("server")), STEP_TIMEOUT),
                asyncio.wait_for(s_writer.start_tls(self._context("client")), STEP_TIMEOUT),
                return_exceptions=True)
            self.outcome.tls_to_requester, self.outcome.tls_to_appliance = (_describe(r) for r in results)
            if self.outcome.tls_to_appliance == "established":
                # In TLS 1.3 the client's handshake ends before the server has checked the client
                # certificate; the appliance's verdict arrives on the first read.
                try:
                    data = await asyncio.wait_for(s_reader.read(65536), STEP_TIMEOUT)
                    if not data:
                        self.outcome.tls_to_appliance = "closed by the appliance after the handshake"
                except TimeoutError:
                    pass  # the appliance is still talking to us: the attack got in
                except (OSError, ssl.SSLError) as exc:
                    self.outcome.tls_to_appliance = _describe(exc)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.outcome.errors.append(type(exc).__name__)
        finally:
            for writer in (c_writer, s_writer):
                if writer is not None:
                    writer.close()
            self._done.set()


async def _frame(reader: asyncio.StreamReader) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(HEADER.size), STEP_TIMEOUT)
    return header + await asyncio.wait_for(reader.readexactly(HEADER.unpack(header)[0]), STEP_TIMEOUT)


def _describe(result: object) -> str:
    if not isinstance(result, BaseException):
        return "established"
    reason = getattr(result, "reason", None)
    return f"refused ({reason or type(result).__name__})"
