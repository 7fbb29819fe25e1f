"""enroll_many's worker pool (requester/library.py): a batch spread over worker processes (or
threads), each with its own event loop running its share of the targets, every outcome sent back
as it finishes, and a stop that ends them all within STOP_POLL_SECONDS when the batch is
cancelled. The enrollment itself is the library's; this module only deals, collects and stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import pickle
import queue
import threading
from typing import Any, Awaitable, Callable

from firsttrust.errors import FirsttrustError

from .batch import Outcome, Target
from .errors import RequesterError
from .interrupts import other_threads
from .truststore import TrustStore

# The one-process batch a worker runs on its share: (targets, concurrency, store, on_done,
# deadline, enroll_appliance's keyword arguments) -> outcomes in order.
Share = Callable[[list[Target], int, TrustStore, Callable[[Outcome], None], float, dict], Awaitable[list[Outcome]]]

# A worker process costs a fork and a second event loop: below this many targets per worker the
# batch runs in this process (a handful of appliances is I/O-bound, not CPU-bound).
MIN_TARGETS_PER_WORKER = 8
WORKER_KINDS = ("process", "thread")


def default_workers() -> int:
    """enroll_many's default: one worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1



async def enroll_in_workers(run: Share, targets: list[Target], concurrency: int, store: TrustStore,
                            on_done: Callable[[Outcome], None] | None, deadline: float, kwargs: dict,
                            workers: int, worker_kind: str) -> list[Outcome]:
    """Deal the targets round-robin to `workers` workers; each runs `run` (library's one-process
    batch, a module-level function: a worker process gets it by name) on its share and reports
    every outcome as it finishes, through a queue this process reads in a thread."""
    loop = asyncio.get_running_loop()
    executor: concurrent.futures.Executor
    stop: Any
    if worker_kind == "thread":
        done_queue: Any = queue.SimpleQueue()
        stop = threading.Event()
        executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="enroll-worker")
    else:
        # fork is cheap (nothing re-imported) and safe while this process runs no other thread;
        # with threads around (one could hold a lock mid-fork) forkserver starts clean processes.
        context = multiprocessing.get_context("fork" if other_threads() == 0 else "forkserver")
        done_queue = context.SimpleQueue()  # inherited by the workers, never pickled
        stop = context.Event()
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                                          initargs=(done_queue, stop))
    results: list[Outcome | None] = [None] * len(targets)
    with executor:
        jobs = []
        try:
            for start in range(workers):
                shard = [(i, targets[i]) for i in range(start, len(targets), workers)]
                share = concurrency // workers + (start < concurrency % workers)  # the shares sum to concurrency
                job = loop.run_in_executor(executor, _worker, run, shard, share, store,
                                           deadline, kwargs, *((done_queue, stop) if worker_kind == "thread" else ()))
                # A worker that fails as a whole never reports its end: say it for it.
                job.add_done_callback(lambda job: job.cancelled() or job.exception() is None
                                      or done_queue.put(_WORKER_DONE))
                jobs.append(job)
            finished = 0
            while finished < workers:
                item = await loop.run_in_executor(None, done_queue.get)
                if item == _WORKER_DONE:
                    finished += 1
                    continue
                index, record, error, seconds, already_pinned = item
                outcome = Outcome(targets[index], record, _rebuild_error(error), seconds, already_pinned)
                results[index] = outcome
                if on_done:
                    on_done(outcome)
            await asyncio.gather(*jobs)  # re-raises a worker's own failure (a bug, not an appliance's)
        except BaseException:
            # Cancelled (the caller's timeout, or Ctrl-C in its asyncio.run), or a bug here: the
            # workers stop their enrollments (each recovers from a requester that stops at any
            # instant, docs/protocol.md "recovery"), so that leaving the `with`, which waits for
            # them, takes about a second and not the batch's deadline. Each worker then ends, with
            # CancelledError or its _WORKER_DONE, and either puts an item on the queue that frees
            # the thread still waiting on it (asyncio.run's end waits for that thread).
            stop.set()
            raise
    return [outcome for outcome in results if outcome is not None]


_WORKER_DONE = "done"
# How often a worker looks at enroll_many's stop event: the bound on how long a cancelled batch
# keeps its workers enrolling.
STOP_POLL_SECONDS = 0.1
_done_queue: Any = None  # a worker process's queue back to enroll_many (set by _worker_init)
_stop: Any = None  # and the event that tells it to stop


def _worker_init(done_queue: Any, stop: Any) -> None:
    global _done_queue, _stop
    _done_queue, _stop = done_queue, stop
    from .interrupts import follow_parent
    follow_parent()  # an interrupted batch ends its workers with it (requester/interrupts.py)


def _worker(run: Share, shard: list[tuple[int, Target]], concurrency: int, store: TrustStore, deadline: float,
            kwargs: dict, done_queue: Any = None, stop: Any = None) -> None:
    """One worker's share of enroll_many, in its own event loop (a worker process or thread):
    one queue item per outcome as it finishes, then _WORKER_DONE. Once `stop` is set, the
    enrollments in flight are cancelled and the worker ends (raising CancelledError)."""
    done_queue = done_queue or _done_queue
    stop = stop or _stop
    indices = {id(target): index for index, target in shard}

    def report(outcome: Outcome) -> None:
        done_queue.put((indices[id(outcome.target)], outcome.record, _portable_error(outcome.error),
                        outcome.seconds, outcome.already_pinned))

    async def until_stopped() -> None:
        work = asyncio.ensure_future(run([target for _, target in shard], concurrency, store, report, deadline,
                                         kwargs))
        while not work.done():
            if stop.is_set():
                work.cancel()
                break
            await asyncio.wait([work], timeout=STOP_POLL_SECONDS)
        await work

    asyncio.run(until_stopped())
    done_queue.put(_WORKER_DONE)


def _portable_error(error: FirsttrustError | None) -> tuple | None:
    """A typed error as (class, args, attributes): firsttrust errors' constructors take other
    arguments than their `args`, so plain pickling cannot rebuild them."""
    if error is None:
        return None
    portable = (type(error), error.args, dict(vars(error)))
    try:
        pickle.dumps(portable)
    except Exception:  # noqa: BLE001 - an attribute that does not pickle: keep code and message
        portable = (RequesterError, (str(error),), {"code": error.code})
    return portable


def _rebuild_error(portable: tuple | None) -> FirsttrustError | None:
    if portable is None:
        return None
    cls, args, attributes = portable
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(attributes)
    return error
