"""Ctrl-C and SIGTERM for the long commands (`deploy`, batch `enroll`): stop within a second, say what was done.

    stop = StopSignal()
    with stop.installed():                       # SIGINT and SIGTERM now set it instead of raising
        finished = run_each(work, items, concurrency=8, stop=stop)
    if stop.is_set(): ... write the partial report ..., then exit_now(INTERRUPTED_EXIT, stop)

`StopSignal` is the one object: a signal sets it, and its callbacks run (on a thread of their
own, never inside the signal handler, which may have interrupted the main thread while it held a
lock the callback needs): `Vcenter.interrupt` is one, so every vCenter wait in flight ends within
a second (requester/vsphere_wait.py). `run_each` replaces `with ThreadPoolExecutor`, whose exit
waits for every queued item: its workers take the next item only while the signal is not set,
and once it is, the caller gets control back after at most GRACE_SECONDS, whether or not the
items in flight have ended (their threads are daemons). `run_coroutine` does the same for an
asyncio batch (enroll_many), and `run_stoppable` for one call whose result the caller needs (the
deploy's login and inventory read): in the main thread, a call blocked in a socket read would
outlive the signal, since Python retries the read once the handler returned (PEP 475).

After an interrupt the process ends with `exit_now`, not by unwinding: the threads still in a
step would otherwise hold the interpreter's exit (concurrent.futures joins its threads at exit)
until their step ends. Nothing is lost by it: secrets files, the trust store and the deploy
report are written whole or not at all (temp file and rename), and an appliance's enrollment
recovers from the requester dying at any instant (docs/protocol.md, "recovery"), so the re-run
finishes what was in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from typing import Awaitable, Callable, Iterator, Sequence, TypeVar

from firsttrust.errors import FirsttrustError

# The shell's convention for "ended by SIGINT" (128 + 2); SIGTERM ends the same way, since both
# mean "stop now, keep what is done".
INTERRUPTED_EXIT = 130
# After the signal: how long the steps in flight get to end before the report is written without
# them. A vCenter wait ends within vsphere_wait.MAX_WAIT_SECONDS of Vcenter.interrupt, and at
# once when CancelWaitForUpdates reaches the server; a SOAP call in flight is one round trip. Half
# a second leaves the other half of the "within a second" for the report and the exit.
GRACE_SECONDS = 0.5
POLL_SECONDS = 0.02  # how often a waiting main thread looks at the signal and the workers
SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Interrupted(FirsttrustError):
    """The run was stopped (SIGINT or SIGTERM) before this appliance's work ended."""

    code = "interrupted"


class StopSignal:
    """Set once, by SIGINT or SIGTERM (while `installed`) or by `stop()`; never cleared."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.signum: int | None = None  # the signal that set it, if one did

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on a thread of its own) when the signal is set; at once if it is."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        _in_thread(callback)

    def stop(self, signum: int | None = None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.signum = signum
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _in_thread(callback)

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopSignal"]:
        """SIGINT and SIGTERM set this signal instead of raising KeyboardInterrupt or ending the
        process, while the block runs (only the main thread can install handlers: elsewhere the
        block runs with the process's handlers as they are).

        No Python code of ours runs in the handler: the interpreter's own C-level handler writes
        the signal's number to a pipe (`signal.set_wakeup_fd`, as asyncio does), from whichever
        thread the kernel chose, and a thread reading it calls `stop`. Python runs a Python
        handler in the main thread between any two bytecodes, also while that thread holds a lock
        (the Event's own, inside `wait`): a handler that took a lock could wait for itself forever,
        and did (a deploy hung after Ctrl-C in CI); and it runs only once the main thread gets
        to a bytecode, which a thread blocked in a C call delays."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)  # set_wakeup_fd's condition: the C handler never blocks
        watcher = _SignalWatcher(target=self._watch, args=(read_end,), name="firsttrust-signals", daemon=True)
        watcher.start()

        def handler(number: int, frame) -> None:
            pass  # the number is in the pipe already (set_wakeup_fd); this only replaces the default

        previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in SIGNALS:
            signal.signal(signum, handler)
        try:
            yield self
        finally:
            for signum, handler_before in previous.items():
                signal.signal(signum, handler_before)
            signal.set_wakeup_fd(previous_fd)
            os.close(write_end)  # the watcher reads end-of-file and ends
            watcher.join()

    def _watch(self, read_end: int) -> None:
        try:
            while number := os.read(read_end, 1):
                if number[0] in SIGNALS:  # the wakeup fd carries every signal Python handles
                    self.stop(number[0])
        finally:
            os.close(read_end)


class _SignalWatcher(threading.Thread):
    """The thread `installed` starts: blocked in a pipe read, holding no lock, until a signal."""


def other_threads() -> int:
    """How many threads besides the caller's might hold a lock right now: the signal watcher,
    blocked in a read, is not one (a fork next to it is as safe as in a one-thread process)."""
    current = threading.current_thread()
    return sum(1 for thread in threading.enumerate()
               if thread is not current and not isinstance(thread, _SignalWatcher))


def _in_thread(callback: Callable[[], None]) -> None:
    def run() -> None:
        with contextlib.suppress(Exception):  # a callback's failure must not hide the interrupt
            callback()
    threading.Thread(target=run, name="firsttrust-stop", daemon=True).start()


def run_each(work: Callable[..., None], items: Sequence[tuple], concurrency: int,
             stop: StopSignal) -> list[bool]:
    """Call `work(*item)` for each item, at most `concurrency` at once, none started once `stop`
    is set.

    Returns:
        Per item, whether its call ended (False: never started, or still running GRACE_SECONDS
        after the stop).

    Raises:
        Whatever a call raised that is not an interrupt (a bug: the steps record their own
        failures), once every call has ended; never after a stop.
    """
    items = list(items)
    finished = [False] * len(items)
    errors: list[BaseException] = []
    cursor = iter(range(len(items)))
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            try:
                work(*items[index])
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                if not stop.is_set():
                    errors.append(exc)
            finished[index] = True

    threads = [threading.Thread(target=worker, name=f"firsttrust-step-{n}", daemon=True)
               for n in range(max(1, min(concurrency, len(items))))]
    for thread in threads:
        thread.start()
    _join(threads, stop)
    if errors and not stop.is_set():
        raise errors[0]
    return finished


def _join(threads: list[threading.Thread], stop: StopSignal) -> None:
    """Until every thread ended, or GRACE_SECONDS after the stop."""
    while any(thread.is_alive() for thread in threads):
        if stop.wait(POLL_SECONDS):
            end = time.monotonic() + GRACE_SECONDS
            for thread in threads:
                thread.join(max(0.0, end - time.monotonic()))
            return


def run_stoppable(what: str, call: Callable[[], T], stop: StopSignal) -> T:
    """`call()` on a thread of its own, the caller waiting for it or for `stop` (module docstring).

    Returns:
        What `call()` returned.

    Raises:
        What `call()` raised; Interrupted (naming `what`) if `stop` was set before it started, or
        if it has not ended GRACE_SECONDS after the stop (its thread is a daemon).
    """
    if stop.is_set():
        raise Interrupted(f"stopped before {what}")
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="firsttrust-call", daemon=True)
    thread.start()
    _join([thread], stop)
    if thread.is_alive():
        raise Interrupted(f"stopped during {what}")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]


def run_coroutine(make: Callable[[], Awaitable], stop: StopSignal):
    """Run `make()` in an event loop of its own thread; cancel it when `stop` is set.

    Returns:
        Its result, or None when it was stopped (what it did so far is the caller's to collect,
        e.g. through enroll_many's on_done).
    """
    outcome: dict[str, object] = {}
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    def run() -> None:
        try:
            task = loop.create_task(_as_coroutine(make))
            outcome["task"] = task
            ready.set()
            outcome["result"] = loop.run_until_complete(task)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="firsttrust-loop", daemon=True)
    thread.start()
    ready.wait()
    stop.on_stop(lambda: "task" in outcome and loop.call_soon_threadsafe(outcome["task"].cancel))
    _join([thread], stop)
    if stop.is_set():
        return None
    loop.close()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("result")


async def _as_coroutine(make: Callable[[], Awaitable]):
    return await make()


def exit_now(code: int, stop: StopSignal) -> None:
    """After a signal: flush what was written and end the process at once (see the module
    docstring for why that loses nothing). Without a signal (a library caller, a test that set
    the stop itself) it returns, and the caller returns its exit code as usual."""
    if stop.signum is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


PR_SET_PDEATHSIG = 1  # prctl(2)


def follow_parent() -> None:
    """In a worker process: leave SIGINT to the parent (a terminal's Ctrl-C reaches the whole
    process group; the parent decides and reports), and end when the parent ends (PR_SET_PDEATHSIG,
    Linux; elsewhere the worker ends at its next read of the work queue)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the parent's StopSignal handler
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
