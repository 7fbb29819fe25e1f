"""requester/interrupts.py: a stop starts no new item and hands control back within its grace."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from firsttrust.requester.interrupts import GRACE_SECONDS, StopSignal, run_coroutine, run_each


def test_no_item_starts_after_the_stop():
    stop, started = StopSignal(), []

    def work(number):
        started.append(number)
        if number == 2:
            stop.stop()

    finished = run_each(work, [(n,) for n in range(100)], concurrency=3, stop=stop)
    assert 2 in started and max(started) < 2 + 3, "at most the items other workers had taken already"
    assert finished.count(True) == len(started)


def test_the_caller_gets_control_back_within_the_grace_while_items_are_still_in_flight():
    stop, started, release = StopSignal(), [], threading.Event()

    def work(number):
        started.append(number)
        if number == 2:
            stop.stop()
        release.wait(10)  # the items in flight never end by themselves

    began = time.monotonic()
    finished = run_each(work, [(n,) for n in range(100)], concurrency=3, stop=stop)
    elapsed = time.monotonic() - began
    release.set()
    assert sorted(started) == [0, 1, 2]
    assert finished == [False] * 100
    assert elapsed < GRACE_SECONDS + 0.3


def test_without_a_stop_every_item_runs_and_a_bug_is_raised():
    seen = []
    assert run_each(lambda n: seen.append(n), [(n,) for n in range(20)], 4, StopSignal()) == [True] * 20
    assert sorted(seen) == list(range(20))

    def broken(n):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        run_each(broken, [(1,)], 1, StopSignal())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_set_the_stop_and_run_its_callbacks_instead_of_raising(signum):
    stop, called = StopSignal(), threading.Event()
    stop.on_stop(called.set)
    before = signal.getsignal(signum)
    with stop.installed():
        os.kill(os.getpid(), signum)
        assert stop.wait(2) and stop.signum == signum
    assert called.wait(2)
    assert signal.getsignal(signum) is before
    late = threading.Event()
    stop.on_stop(late.set)  # registered after the stop: called at once
    assert late.wait(2)


# The main thread holds the stop's own lock (as it does, briefly, inside `stop.wait` between two
# polls) when the signal comes, and goes on running Python code while it holds it: Python runs a
# Python-level handler at the next bytecode boundary of the main thread, so a handler that took
# that lock would run inside the hold, every time. The signal is sent from inside the hold (the
# kernel runs the C-level handler before `kill` returns), so no timing decides where it lands.
_SIGNAL_WHILE_LOCKED = """
import os, signal, sys, threading, time
from firsttrust.requester.interrupts import StopSignal
stop = StopSignal()
with stop.installed():
    with stop._event._cond:
        os.kill(os.getpid(), signal.SIGINT)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
    print(stop.wait(2), stop.signum)
"""


def test_a_signal_that_arrives_while_the_main_thread_holds_the_stops_lock_still_stops_it():
    process = subprocess.Popen([sys.executable, "-c", _SIGNAL_WHILE_LOCKED], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()  # the handler waits for a lock its own thread holds: SIGTERM would wait too
        process.communicate()
        pytest.fail("deadlocked: the signal handler took a lock the interrupted main thread held")
    assert process.returncode == 0 and out.split() == ["True", str(int(signal.SIGINT))]


def test_a_stopped_coroutine_is_cancelled_and_returns_none_at_once():
    stop, cancelled = StopSignal(), threading.Event()

    async def forever():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    threading.Timer(0.1, stop.stop).start()
    began = time.monotonic()
    assert run_coroutine(forever, stop) is None
    assert time.monotonic() - began < 0.1 + GRACE_SECONDS + 0.3
    assert cancelled.wait(2)


def test_a_coroutine_that_ends_returns_its_result():
    async def answer():
        return 42
    assert run_coroutine(answer, StopSignal()) == 42
