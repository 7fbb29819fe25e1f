"""What both enrollment drivers need of an asyncio stream beyond reading and writing it:

  FrameDeadline   the longest wait for one frame (docs/protocol.md section 8.1), on one timer per
                  connection instead of one per frame
  unread_in_kernel  a look at the bytes the kernel holds for a socket, before the TLS upgrade

Both sides run them on every enrollment; they cost what the shape (bench/skeleton.py) does not,
so they are written to cost little: bench/README.md, "What firsttrust's own code adds".
"""

from __future__ import annotations

import asyncio
import socket

# How early a timer may fire: asyncio runs a timer due within its clock resolution (a nanosecond
# on Linux); anything earlier than this is a deadline that moved, not one that passed.
_EARLY = 0.001


class FrameDeadline:
    """One frame's deadline, for a connection that reads frame after frame from `reader`.

    `start(seconds)` before a frame's first read, `stop()` once the frame is in, `close()` when
    the connection ends. While started and due, the reader's pending and later reads raise
    TimeoutError (StreamReader.set_exception): one deadline for the whole frame, header and body,
    however many reads it takes.

    A frame whose bytes the event loop reads in the same turn as it runs the due timer is handed
    over, not timed out: reading them wakes the frame's read before the timer runs, and
    set_exception then only fails the reads after it (StreamReader takes its buffer on waking).
    A timeout that cancels the reading task (asyncio.timeout, wait_for) loses that frame.

    One timer serves the whole connection: `start` only records the new due time, unless the
    timer would fire after it; a timer that fires before the due time (it was set for an earlier
    frame) re-arms itself at it, and one that fires while stopped does nothing. A frame that
    arrives in time therefore costs an assignment, where an asyncio.timeout per frame cost a
    timer (TimerHandle, heap push, cancel) and a task lookup: four of each per enrollment on each
    side (bench/README.md).
    """

    __slots__ = ("_reader", "_loop", "_due", "_timer")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._loop = asyncio.get_running_loop()
        self._due: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, seconds: float) -> None:
        due = self._due = self._loop.time() + seconds
        timer = self._timer
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(due, self._fire)

    def stop(self) -> None:
        self._due = None

    def close(self) -> None:
        self._due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        due = self._due
        if due is None:
            return
        if self._loop.time() < due - _EARLY:  # started again since this timer was set
            self._timer = self._loop.call_at(due, self._fire)
            return
        self._reader.set_exception(TimeoutError())


def unread_in_kernel(writer: asyncio.StreamWriter, size: int) -> bytes:
    """Up to `size` bytes the kernel holds for this connection's socket, left where they are
    (MSG_PEEK), without waiting; b"" when there are none or the socket is gone.

    Peeks through a socket object made for the transport's descriptor and detached again, not a
    dup(): no descriptor is made or closed, and the transport's is never closed here."""
    transport_socket = writer.get_extra_info("socket")
    if transport_socket is None:
        return b""
    try:
        sock = socket.socket(fileno=transport_socket.fileno())
    except (OSError, ValueError):  # closed meanwhile (fileno -1)
        return b""
    try:
        return sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # BlockingIOError: nothing waiting
        return b""
    finally:
        sock.detach()
