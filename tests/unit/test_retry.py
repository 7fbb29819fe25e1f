"""requester/retry.py and the error frame's retry_after: fake clock, fake sleep, fixed randomness."""

from __future__ import annotations

import asyncio

import pytest

from firsttrust.enrollment import ClientEnrollment
from firsttrust.errors import AuthenticationFailed, BindingFailed, InvalidField, PeerRefused
from firsttrust.framing import FrameDecoder, encode_error
from firsttrust.messages import validate
from firsttrust.requester.enroll import EnrollmentConnectionError
from firsttrust.requester.retry import Backoff, DeadlineExceeded, Waiting, classify, retry_until


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(errors, then=None):
    """An attempt that raises each of `errors` in turn (the last one forever), or returns `then`."""
    queue = list(errors)
    calls = []

    async def attempt():
        calls.append(1)
        if queue:
            error = queue.pop(0) if len(queue) > 1 or then is not None else queue[0]
            raise error
        return then

    attempt.calls = calls
    return attempt


def run(attempt, fake, **kwargs):
    return asyncio.run(retry_until(attempt, address="10.0.0.5:8790", clock=fake.clock, wall_clock=fake.clock,
                                   sleep=fake.sleep, **kwargs))


def refused():
    return EnrollmentConnectionError("10.0.0.5:8790: Connection refused", "refused")


# --- the schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.0, 0.5, 0.999999])
def test_jitter_stays_within_half_to_full_of_a_capped_exponential(r):
    backoff = Backoff(first=0.25, factor=2.0, cap=10.0)
    for attempt in range(40):
        ceiling = min(10.0, 0.25 * 2 ** attempt)
        delay = backoff.delay(attempt, lambda: r)
        assert ceiling / 2 <= delay <= ceiling


def test_jitter_spreads_requesters_out():
    import random
    rng = random.Random(7)
    delays = {round(Backoff().delay(5, rng.random), 3) for _ in range(50)}
    assert len(delays) > 40


def test_retries_until_success_and_only_then_returns():
    fake = FakeTime()
    attempt = failing([refused(), refused(), PeerRefused("busy", "later")], then="enrolled")
    assert run(attempt, fake, deadline=60, random=lambda: 0.0) == "enrolled"
    assert len(attempt.calls) == 4 and fake.sleeps == [0.125, 0.25, 0.5]


def test_deadline_is_respected_and_the_error_names_the_address():
    fake = FakeTime()
    attempt = failing([refused()])
    with pytest.raises(DeadlineExceeded) as caught:
        run(attempt, fake, deadline=30, random=lambda: 1.0)
    assert fake.now == pytest.approx(30.0)  # the last sleep is cut to the deadline, then one last try
    assert "10.0.0.5:8790" in str(caught.value) and "refuses connections" in str(caught.value)
    assert caught.value.code == "deadline" and isinstance(caught.value.__cause__, EnrollmentConnectionError)


def test_deadline_zero_tries_once():
    fake = FakeTime()
    attempt = failing([refused()])
    with pytest.raises(DeadlineExceeded):
        run(attempt, fake, deadline=0)
    assert len(attempt.calls) == 1 and fake.sleeps == []


@pytest.mark.parametrize("error", [
    AuthenticationFailed("wrong SEC-A"),
    BindingFailed("certificate not bound"),
    PeerRefused("locked_out", "locked"),
    PeerRefused("already_enrolled", "enrolled"),
    PeerRefused("window_closed", "expired"),
    EnrollmentConnectionError("10.0.0.5:8790: TLS failed: x"),
    EnrollmentConnectionError("10.0.0.5:8790: Name or service not known"),
])
def test_final_failures_are_raised_at_once(error):
    fake = FakeTime()
    attempt = failing([error])
    with pytest.raises(type(error)):
        run(attempt, fake, deadline=300)
    assert len(attempt.calls) == 1 and fake.sleeps == []


@pytest.mark.parametrize("error, reason", [
    (PeerRefused("busy", "x"), "busy"),
    (PeerRefused("backing_off", "x", 3), "backing_off"),
    (EnrollmentConnectionError("x", "refused"), "refused"),
    (EnrollmentConnectionError("x", "reset"), "reset"),
    (EnrollmentConnectionError("x", "timeout"), "timeout"),
    (EnrollmentConnectionError("x", "unreachable"), "unreachable"),
    (EnrollmentConnectionError("x"), None),
    (PeerRefused("auth_failed", "x"), None),
    (AuthenticationFailed("x"), None),
])
def test_classify(error, reason):
    assert classify(error) == reason


def test_backing_off_waits_its_retry_after():
    fake = FakeTime()
    attempt = failing([PeerRefused("backing_off", "retry in 4 s", 4)], then="enrolled")
    assert run(attempt, fake, deadline=60, random=lambda: 0.0) == "enrolled"
    assert fake.sleeps == [4.0]


def test_busy_with_retry_after_waits_as_advised():
    fake = FakeTime()
    attempt = failing([PeerRefused("busy", "this address ... refused for 12 s", 12)], then="enrolled")
    assert run(attempt, fake, deadline=60, random=lambda: 0.0) == "enrolled"
    assert fake.sleeps == [12.0]


def test_backing_off_past_the_deadline_is_final_at_once():
    fake = FakeTime()
    attempt = failing([PeerRefused("backing_off", "retry in 256 s", 256)])
    with pytest.raises(DeadlineExceeded) as caught:
        run(attempt, fake, deadline=60)
    assert fake.sleeps == [] and "backing_off" in str(caught.value)


def test_one_notice_per_change_of_reason_not_per_retry():
    fake = FakeTime()
    seen: list[Waiting] = []
    attempt = failing([refused(), refused(), refused(), PeerRefused("busy", "x"), PeerRefused("busy", "x")],
                      then="ok")
    run(attempt, fake, deadline=60, on_wait=seen.append, random=lambda: 0.0)
    assert [w.reason for w in seen] == ["refused", "busy"]
    line = seen[0].describe("10.0.0.5:8790")
    assert line.startswith("10.0.0.5:8790 refuses connections (still booting?); retrying until ")
    assert line.endswith("Ctrl-C to stop")


# --- retry_after on the wire --------------------------------------------------------------------


def decode(data: bytes):
    decoder = FrameDecoder()
    decoder.feed(data)
    return decoder.next_frame()


def test_error_frame_without_retry_after_is_unchanged():
    body = b'{"code":"busy","message":"later","type":"error","v":1}'
    assert encode_error("busy", "later") == bytes.fromhex("00000036") + body


def test_error_frame_carries_retry_after_and_the_client_reports_it():
    data = encode_error("backing_off", "retry in 4 s", 4)
    assert validate(decode(data))["retry_after"] == 4
    machine = ClientEnrollment(sec_a="a" * 32, sec_b="b" * 32, certificate=b"x", name="n")
    machine.start()
    with pytest.raises(PeerRefused) as caught:
        machine.receive_data(data)
    assert caught.value.code == "backing_off" and caught.value.retry_after == 4
    machine = ClientEnrollment(sec_a="a" * 32, sec_b="b" * 32, certificate=b"x", name="n")
    machine.start()
    with pytest.raises(PeerRefused) as caught:
        machine.receive_data(encode_error("busy", "later"))
    assert caught.value.retry_after is None


@pytest.mark.parametrize("value", [-1, 86401, 1.5, True, "4"])
def test_retry_after_out_of_range_is_refused_both_ways(value):
    with pytest.raises(ValueError):
        encode_error("backing_off", "x", value)
    from firsttrust.framing import encode_frame
    frame = decode(encode_frame("error", {"code": "backing_off", "message": "x", "retry_after": value}))
    with pytest.raises(InvalidField):
        validate(frame)
