"""common/streams.py: one frame deadline per connection on one timer, and the kernel peek."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from firsttrust.common.streams import FrameDeadline, unread_in_kernel


async def _timed_read(reader: asyncio.StreamReader) -> tuple[object, float]:
    began = time.monotonic()
    try:
        return await reader.read(100), time.monotonic() - began
    except TimeoutError as exc:
        return exc, time.monotonic() - began


async def test_a_frame_not_in_by_its_deadline_raises_timeout_error_from_the_read():
    reader = asyncio.StreamReader()
    deadline = FrameDeadline(reader)
    deadline.start(0.2)
    outcome, waited = await _timed_read(reader)
    deadline.close()
    assert isinstance(outcome, TimeoutError) and 0.15 < waited < 1.0


async def test_a_later_frame_gets_its_whole_deadline_from_the_timer_set_for_an_earlier_one():
    """The timer armed for the first frame fires during the second frame's wait, which started
    later: it must re-arm at the second frame's due time, not cut the second frame short."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    deadline = FrameDeadline(reader)
    deadline.start(0.3)
    reader.feed_data(b"first")
    assert await reader.read(100) == b"first"
    deadline.stop()
    await asyncio.sleep(0.2)
    deadline.start(0.3)  # due 0.5 s after the first start; the first timer fires at 0.3 s
    loop.call_later(0.25, reader.feed_data, b"second")  # in time for the second deadline only
    outcome, _ = await _timed_read(reader)
    assert outcome == b"second"
    deadline.stop()
    deadline.start(0.1)  # and the re-armed timer still ends a frame that never comes
    outcome, waited = await _timed_read(reader)
    deadline.close()
    assert isinstance(outcome, TimeoutError) and waited < 0.5


async def test_a_stopped_deadline_never_fires_and_a_closed_one_leaves_no_timer():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    deadline = FrameDeadline(reader)
    deadline.start(0.1)
    deadline.stop()
    loop.call_later(0.3, reader.feed_data, b"late")  # after the due time, while not reading a frame
    assert await reader.read(100) == b"late"
    deadline.start(0.1)
    deadline.close()
    loop.call_later(0.3, reader.feed_data, b"later")
    assert await reader.read(100) == b"later"
    assert reader.exception() is None


async def test_a_frame_read_in_the_same_event_loop_turn_as_its_deadline_is_handed_over_not_timed_out():
    """The loop is blocked past the deadline while the frame's bytes wait in the kernel, so its
    next turn reads them and runs the due timer together: the read gets the frame."""
    near, far = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=near)
    try:
        deadline = FrameDeadline(reader)
        deadline.start(0.05)
        read = asyncio.ensure_future(_timed_read(reader))
        await asyncio.sleep(0)  # the read is waiting
        far.sendall(b"frame")
        time.sleep(0.15)  # blocks the loop: the bytes and the due timer meet in its next turn
        outcome, _ = await read
        deadline.stop()
        assert outcome == b"frame"
        deadline.start(0.05)  # and a frame that does not come still ends at its deadline
        outcome, waited = await _timed_read(reader)
        assert isinstance(outcome, TimeoutError) and waited < 1.0
        deadline.close()
    finally:
        writer.close()
        far.close()


async def test_an_earlier_due_time_moves_the_timer_forward():
    reader = asyncio.StreamReader()
    deadline = FrameDeadline(reader)
    deadline.start(5)
    deadline.start(0.1)
    outcome, waited = await _timed_read(reader)
    deadline.close()
    assert isinstance(outcome, TimeoutError) and waited < 1.0


async def test_unread_in_kernel_peeks_without_consuming_or_closing_the_transports_socket():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer, _ = listener.accept()
    try:
        assert unread_in_kernel(writer, 4) == b""  # nothing waiting: no wait either
        writer.transport.pause_reading()
        peer.sendall(b"abcdefgh")
        await asyncio.sleep(0.1)
        assert unread_in_kernel(writer, 4) == b"abcd"
        assert unread_in_kernel(writer, 4) == b"abcd"  # still there
        fd = writer.get_extra_info("socket").fileno()
        os.fstat(fd)  # the transport's descriptor is still open
        writer.transport.resume_reading()
        assert await asyncio.wait_for(reader.readexactly(8), 2) == b"abcdefgh"
    finally:
        writer.close()
        peer.close()
        listener.close()


async def test_unread_in_kernel_of_a_closed_transport_is_empty():
    listener = socket.create_server(("127.0.0.1", 0))
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
    writer.close()
    await writer.wait_closed()
    listener.close()
    assert unread_in_kernel(writer, 4) == b""
