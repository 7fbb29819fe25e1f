"""A batch: one requester enrolls COUNT appliances hosted in another process.

The appliances run in bench.appliance_host (one process, one EnrollmentServer per appliance,
each with its own identity and secrets); the requester runs here with
firsttrust.requester.library.enroll_many (its worker processes, default one per CPU) and a
TrustStore in a temp dir.

Timed: the enroll_many call only (wall time), worker start-up included. Also taken over the same
window: the requester's CPU time (this process and its waited-for workers, os.times) and the
appliance process's (utime + stime from /proc/PID/stat), to split the cost per enrollment
between the two sides.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from firsttrust.agent.state import StateDir
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.requester.library import Target, enroll_many
from firsttrust.requester.truststore import TrustStore

from . import appliances
from .measure import machine_busy_seconds, process_cpu

ROOT = Path(__file__).resolve().parents[1]
# enroll_many's own default: how many enrollments the requester keeps in flight.
CONCURRENCY = 32
HOST_READY_TIMEOUT = 60.0


@dataclass
class BatchResult:
    count: int
    wall: float
    requester_cpu: float
    appliances_cpu: float
    provision_wall: float
    failures: list[str] = field(default_factory=list)
    not_enrolled: int = 0
    others_cpu: float = 0.0  # CPU seconds other processes used during the timed window

    @property
    def throughput(self) -> float:
        return self.count / self.wall


def run_batch(count: int, concurrency: int = CONCURRENCY, profile_dir: Path | None = None, workers: int = 1,
              worker_kind: str = "process", warmup: int = 0) -> BatchResult:
    """Provision `count` (+ `warmup`) appliances, serve them in bench.appliance_host, enroll them
    all with enroll_many over `workers` workers. With `warmup`, that many are enrolled first,
    untimed (the host's first connection imports the enrollment module), as step 4a warms up
    the shape it is compared with. With `profile_dir`, both sides of the timed window run
    under cProfile (requester.prof, appliances.prof there; with workers, only the parent's side
    of the requester is profiled); the profiler's own cost then lowers the throughput. The
    profilers count the event loop's thread only (time.thread_time): with the process's CPU
    time, whatever the executor threads (the durable writes) burn lands on the function the
    loop was in at the moment, e.g. a hash that released the GIL."""
    secrets = [EnrollmentSecrets.generate() for _ in range(warmup + count)]
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        appliances.provision_many(root, secrets, workers=os.cpu_count() or 2)
        provision_wall = time.perf_counter() - started
        argv = [sys.executable, "-m", "bench.appliance_host", str(root), str(warmup + count)]
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
            argv.append(str(profile_dir.resolve() / "appliances.prof"))
        host = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            ports = _wait_ready(host)
            result = asyncio.run(_enroll_all(root, secrets, ports, host.pid, concurrency,
                                             profile_dir / "requester.prof" if profile_dir else None,
                                             workers, worker_kind, warmup))
        finally:
            host.stdin.close()
            try:
                host.wait(30)
            except subprocess.TimeoutExpired:
                host.kill()
                host.wait()
        result.provision_wall = provision_wall
        result.not_enrolled = sum(1 for i in range(warmup + count) if not _enrolled(appliances.state_dir(root, i)))
        return result


def _enrolled(directory: Path) -> bool:
    """What the appliance itself recorded: state.json says enrolled."""
    state = StateDir(directory).load()
    return state is not None and state.phase == "enrolled"


def _wait_ready(host: subprocess.Popen) -> list[int]:
    ready, _, _ = select.select([host.stdout], [], [], HOST_READY_TIMEOUT)
    if not ready:
        raise RuntimeError(f"appliance host did not listen within {HOST_READY_TIMEOUT:.0f} s")
    line = host.stdout.readline()
    if not line:
        raise RuntimeError(f"appliance host exited with {host.wait()} before listening")
    return json.loads(line)["ports"]


def _requester_cpu() -> float:
    """CPU of this process and of its children already waited for: enroll_many's worker
    processes are, by the time it returns (the appliance host is not: it is still running)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


async def _enroll_all(root: Path, secrets: list[EnrollmentSecrets], ports: list[int], host_pid: int,
                      concurrency: int, profile: Path | None, workers: int, worker_kind: str,
                      warmup: int) -> BatchResult:
    store = TrustStore(root / "requester")
    store.identity()
    targets = [Target(f"appliance-{i:04d}", f"127.0.0.1:{port}", pair)
               for i, (port, pair) in enumerate(zip(ports, secrets))]
    if warmup:
        warmed = await enroll_many(targets[:warmup], concurrency=concurrency, store=store, workers=workers,
                                   worker_kind=worker_kind)
        targets = targets[warmup:]
        if not all(o.ok for o in warmed):
            raise RuntimeError(f"batch warm-up: {sum(not o.ok for o in warmed)} of {warmup} enrollments failed")
    busy, host_cpu, cpu = machine_busy_seconds(), process_cpu(host_pid), _requester_cpu()
    profiler = cProfile.Profile(time.thread_time) if profile else None
    wall = time.perf_counter()
    if profiler:
        profiler.enable()
    outcomes = await enroll_many(targets, concurrency=concurrency, store=store, workers=workers,
                                 worker_kind=worker_kind)
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, _requester_cpu() - cpu
    if profiler:
        profiler.dump_stats(profile)
    host_cpu = process_cpu(host_pid) - host_cpu
    others = max(0.0, machine_busy_seconds() - busy - cpu - host_cpu)
    errors = Counter(f"{type(o.error).__name__}: {o.error}" for o in outcomes if not o.ok)
    failures = [f"{n} x {text}" for text, n in errors.most_common()]
    return BatchResult(len(targets), wall, cpu, host_cpu, 0.0, failures, others_cpu=others)
