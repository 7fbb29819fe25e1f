"""One JSON line in, one JSON line out, per connection, on a private Unix socket: the transport of
the lab's guest channel (lab/vsphere_channel.py, the emulated tools' RPCs) and of its guest
operations (lab/guestops.py, what the simulator asks of a guest).

    server = LineServer(path, answer, name="lab-guest-channel", timeout=20.0, max_request=512 * 1024)
    server.start(); ...; server.stop()

`answer(line)` gets the request line as read (at most `max_request` + 1 bytes: the caller refuses a
longer one) and returns the reply as a JSON-able dict. Connections are served in threads; the
socket is 0600 from before it listens until it is removed at `stop`.
"""

from __future__ import annotations

import json
import socketserver
import threading
from pathlib import Path
from typing import Callable


class LineServer:
    def __init__(self, path: Path, answer: Callable[[bytes], dict], *, name: str, timeout: float,
                 max_request: int) -> None:
        self.path = Path(path)
        self.name = name

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.connection.settimeout(timeout)
                try:
                    line = self.rfile.readline(max_request + 1)
                except OSError:
                    return
                reply = answer(line)
                try:
                    self.wfile.write(json.dumps(reply).encode("utf-8", "surrogateescape") + b"\n")
                except OSError:
                    pass  # the client is gone (a tool killed at its own timeout): nobody to answer

        class Server(socketserver.ThreadingUnixStreamServer):
            # socketserver's default accept queue is 5: twenty appliances booting at once on a
            # loaded machine filled it, and a Unix socket's connect then fails at once (EAGAIN),
            # where a VMX never refuses its guest's RPC (CI, test_fleet_lab).
            request_queue_size = 128

        self._server = Server(str(self.path), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server.server_bind()
        self.path.chmod(0o600)
        self._server.server_activate()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and remove the socket (idempotent)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self.path.unlink(missing_ok=True)
