"""Test helper: run a ClientEnrollment against a ServerEnrollment with no sockets.

The "TLS layer" is simulated: when both sides have asked for StartTLS, each is told which
certificate its peer presented (by default the one it really holds; tests override that to
play a relay)."""

from __future__ import annotations

from dataclasses import dataclass, field

from firsttrust.enrollment import (
    ClientEnrolled,
    ClientEnrollment,
    PersistAuthorization,
    ProofReceived,
    SendFrame,
    ServerEnrolled,
    ServerEnrollment,
    StartTLS,
)


def feed(machine, data: bytes) -> list:
    """`receive_data`; on the appliance, the charge point and the verdict passed straight through
    (`check_proof`, then `proceed`), as a driver with nothing to charge would."""
    events = machine.receive_data(data)
    if events and isinstance(events[-1], ProofReceived):
        events = events[:-1] + machine.check_proof()
        events += machine.proceed()
    return events


@dataclass
class Run:
    client_frames: list[bytes] = field(default_factory=list)
    server_frames: list[bytes] = field(default_factory=list)
    client_result: object = None
    server_result: object = None
    persisted: list = field(default_factory=list)


def run(client: ClientEnrollment, server: ServerEnrollment, *, client_cert: bytes, server_cert: bytes,
        presented_to_client: bytes | None = None, presented_to_server: bytes | None = None) -> Run:
    """Drive both machines to the end; exceptions propagate from whichever side raises."""
    record = Run()
    to_server: list[bytes] = []
    to_client: list[bytes] = []
    tls = {"client": False, "server": False}

    def handle(side: str, events: list) -> None:
        for ev in events:
            if isinstance(ev, SendFrame):
                (to_server if side == "client" else to_client).append(ev.data)
                (record.client_frames if side == "client" else record.server_frames).append(ev.data)
            elif isinstance(ev, StartTLS):
                tls[side] = True
            elif isinstance(ev, PersistAuthorization):
                record.persisted.append(ev.authorization)
                handle("server", server.authorization_persisted())
            elif isinstance(ev, ClientEnrolled):
                record.client_result = ev.result
            elif isinstance(ev, ServerEnrolled):
                record.server_result = ev.authorization

    handle("client", client.start())
    tls_done = False
    while to_server or to_client:
        while to_server:
            handle("server", feed(server, to_server.pop(0)))
        while to_client:
            handle("client", client.receive_data(to_client.pop(0)))
        if tls["client"] and tls["server"] and not tls_done:
            tls_done = True
            # The server learns the client's certificate from the handshake, and vice versa.
            handle("server", server.tls_established(presented_to_server or client_cert))
            handle("client", client.tls_established(presented_to_client or server_cert))
    return record
