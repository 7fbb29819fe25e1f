"""A source sitting out a penalty is refused at accept (agent/frontdoor_asyncio.py DoorSocket),
looked up by its source key: an IPv6 peer by its /64, an IPv4-mapped peer of a dual-stack listener
by its IPv4 address, so that neither can slip past the penalty its source earned."""

from __future__ import annotations

import json
import socket

import pytest

from firsttrust.agent.frontdoor import PENALTY_MIN, PENALTY_SECONDS, FrontDoor, source_key
from firsttrust.agent.frontdoor_asyncio import DoorSocket
from firsttrust.framing import HEADER


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")


def blocked_door(source: str) -> FrontDoor:
    door = FrontDoor(max_unauthenticated=4, per_source=2, first_frame_timeout=5.0)
    while not door.blocked_for(source):
        door.penalize(source, "garbage")
    assert door.penalties[source].accrued >= PENALTY_MIN >= PENALTY_SECONDS["garbage"]
    return door


def listener(door: FrontDoor, family: int, host: str) -> DoorSocket:
    sock = DoorSocket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack: IPv4 peers as ::ffff:a.b.c.d
    sock.bind((host, 0))
    sock.listen(8)
    sock.setblocking(False)
    sock.door = door
    return sock


def connect_and_accept(sock: DoorSocket, client_host: str, client_family: int):
    client = socket.socket(client_family, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect((client_host, sock.getsockname()[1]))
    # The connection is queued once connect returns; accept() answers it or returns it.
    for _ in range(200):
        try:
            return client, sock.accept()
        except BlockingIOError as exc:
            if client.recv(1, socket.MSG_PEEK):
                return client, exc  # refused: busy was sent
    raise AssertionError("the connection never reached accept")


def refused_with_busy(client: socket.socket) -> bool:
    data = b""
    while chunk := client.recv(4096):
        data += chunk
    (length,) = HEADER.unpack(data[:HEADER.size])
    return json.loads(data[HEADER.size:HEADER.size + length])["code"] == "busy"


@pytest.mark.parametrize("peer, family, listen_host, client_host", [
    ("::1", socket.AF_INET6, "::1", "::1"),  # IPv6: its /64 is the source
    ("::ffff:127.0.0.1", socket.AF_INET6, "::", "127.0.0.1"),  # IPv4-mapped: its IPv4 address is the source
])
def test_a_penalized_source_is_refused_at_accept_by_its_source_key(peer, family, listen_host, client_host):
    key = source_key(peer)
    assert key != peer  # the key is not the address: looking the address up would miss the penalty
    door = blocked_door(key)
    sock = listener(door, family, listen_host)
    client_family = socket.AF_INET if "." in client_host else socket.AF_INET6
    try:
        client, accepted = connect_and_accept(sock, client_host, client_family)
        with client:
            assert isinstance(accepted, BlockingIOError), f"accepted a connection from a blocked source: {accepted}"
            assert refused_with_busy(client)
        assert door.penalty_refusals == 1
    finally:
        sock.close()


def test_another_source_is_accepted():
    door = blocked_door("2001:db8::/64")
    sock = listener(door, socket.AF_INET6, "::1")
    try:
        client, accepted = connect_and_accept(sock, "::1", socket.AF_INET6)
        with client:
            assert not isinstance(accepted, BlockingIOError)
            accepted[0].close()
    finally:
        sock.close()
