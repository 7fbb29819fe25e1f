"""A listening TCP socket made as asyncio's create_server makes it, for the two listeners the
agent binds itself (the enrollment port's DoorSockets, agent/server.py; the API port, agent/apidoor.py)."""

from __future__ import annotations

import socket


def passive_addresses(host: str | None, port: int) -> list[tuple]:
    """getaddrinfo(host, port) for a listener (AI_PASSIVE, TCP). An ASCII host (an address, or
    a plain name) goes in as bytes: as a str, Python passes it through the "idna" codec, whose
    import (with stringprep and unicodedata) is ~2 ms of the agent's start-up, and which leaves
    ASCII unchanged anyway."""
    if host is not None and host.isascii():
        host = host.encode("ascii")
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)


def listen_on(sock: socket.socket, address: tuple, backlog: int) -> socket.socket:
    """Bind `sock` to `address` and listen: SO_REUSEADDR, IPv6 sockets IPv6-only, non-blocking.
    Closes `sock` and raises OSError when that fails."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
