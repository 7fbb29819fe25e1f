"""The transport of the lab's guest channel and guest operations (lab/lineserver.py): many
guests at once never find it refusing, as a VMX never refuses its guest's RPC."""

from __future__ import annotations

import socket
import threading

from firsttrust.lab import vsphere_channel
from firsttrust.lab.lineserver import LineServer


def test_fifty_guests_connecting_while_the_server_is_busy_all_get_in(tmp_path):
    """socketserver's accept queue is 5 by default: with the server not accepting for a moment
    (a loaded machine), the sixth connect of a Unix socket with a timeout failed at once (EAGAIN),
    and a booting appliance's provisioning with it (CI, test_fleet_lab)."""
    server = LineServer(tmp_path / "s.sock", lambda line: {"ok": True}, name="t", timeout=5, max_request=100)
    server._server.server_bind()  # listening, not accepting: as a server thread that has not come round yet
    server._server.server_activate()
    sockets = []
    try:
        for _ in range(50):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            sockets.append(sock)
            sock.connect(str(tmp_path / "s.sock"))
    finally:
        for sock in sockets:
            sock.close()
        server._server.server_close()


def test_a_channel_request_waits_for_a_full_accept_queue_instead_of_failing(tmp_path, monkeypatch):
    calls = []
    real = socket.socket.connect

    def connect(self, address):
        calls.append(address)
        if len(calls) < 3:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(self, address)

    server = LineServer(tmp_path / "c.sock", lambda line: {"ok": True, "reply": "v"}, name="t", timeout=5,
                        max_request=100)
    server.start()
    try:
        monkeypatch.setattr(socket.socket, "connect", connect)
        document = {"vsphere": {"socket": str(tmp_path / "c.sock"), "vm": "vm-1"}}
        assert vsphere_channel.request(document, "info-get guestinfo.x") == (True, "v")
        assert len(calls) == 3
    finally:
        monkeypatch.undo()
        server.stop()
