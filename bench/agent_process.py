"""The agent as a process: `firsttrust-agent serve` (as its launcher runs it: `python3 -I`, main()) over a
provisioned state dir, as systemd starts it (Type=notify), on two ephemeral ports of 127.0.0.1.

  cold_start  from spawning the process to receiving READY=1 on a NOTIFY_SOCKET made here
              (an AF_UNIX datagram socket, as systemd's), i.e. interpreter start, imports,
              reading the state, binding both listeners. Median over runs, after one unmeasured
              run that warms the page cache (a booting appliance has a cold one: worse).
  idle_rss    VmRSS of that process (/proc/PID/status) about a second after READY=1, with
              both listeners up and nothing connected.
  enrolled    the same, about a second after this process enrolled it and made one call on
              its pinned API (the API, started at the enrollment, is serving).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.requester.library import enroll_appliance, open_session
from firsttrust.requester.truststore import TrustStore

from . import appliances

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 30.0
# How long the idle agent runs before its RSS is read: past start-up's transient allocations.
IDLE_SETTLE = 1.0


@dataclass(frozen=True)
class AgentStart:
    ready_seconds: float
    rss_mb: float | None = None
    rss_anon_mb: float | None = None  # private memory: heap, Python objects
    rss_file_mb: float | None = None  # mapped files: libpython, libcrypto, extension modules


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ServeCommand:
    """`firsttrust-agent serve` on two free loopback ports, notifying READY=1 to `notify_path`."""

    argv: list[str]
    env: dict[str, str]
    notify_path: Path
    enroll_port: int
    api_port: int


# What /usr/bin/firsttrust-agent runs (packaging/deb/build.sh `launcher`): `python3 -I`, main()
# imported and called; not `-m`, whose runpy and importlib.util no appliance loads (~6 ms).
LAUNCHER = ("-I", "-c", "import sys; from firsttrust.agent.cli import main; sys.exit(main())")


def serve_command(state_dir: Path, workdir: Path, python: str = sys.executable) -> ServeCommand:
    notify_path = workdir / "notify.sock"
    notify_path.unlink(missing_ok=True)
    enroll_port, api_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_"))}
    env["NOTIFY_SOCKET"] = str(notify_path)
    argv = [python, *LAUNCHER, "serve", "--state-dir", str(state_dir),
            "--listen", f"127.0.0.1:{enroll_port}", "--api-listen", f"127.0.0.1:{api_port}"]
    return ServeCommand(argv, env, notify_path, enroll_port, api_port)


def _listening(port: int) -> bool:
    """Whether something LISTENs on 127.0.0.1:port (/proc/net/tcp, state 0A), without connecting:
    a connection would start an enrollment or a TLS handshake in the agent."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return True
    return False


def _rss_mb(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of `pid` in MB (/proc/PID/status, kB)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            values[name] = int(rest.split()[0]) / 1024
    return values


def start_agent(state_dir: Path, workdir: Path, measure_rss: bool = False, python: str = sys.executable,
                before_rss: Callable[[ServeCommand], None] | None = None) -> AgentStart:
    """Spawn `serve` with `python`, wait for READY=1 (and, for RSS, for both ports to listen,
    run `before_rss`, then settle), stop it with SIGTERM."""
    command = serve_command(state_dir, workdir, python)
    notify_path, enroll_port, api_port = command.notify_path, command.enroll_port, command.api_port
    argv, env = command.argv, command.env
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, open(workdir / "serve.log", "ab") as log:
        notify.bind(str(notify_path))
        notify.settimeout(READY_TIMEOUT)
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    message = notify.recv(4096).decode("utf-8", "replace")
                except TimeoutError:
                    raise RuntimeError(f"no READY=1 within {READY_TIMEOUT} s; see {workdir / 'serve.log'}") from None
                if "READY=1" in message.split("\n"):
                    ready = time.perf_counter() - started
                    break
            if not measure_rss:
                return AgentStart(ready)
            if not (_listening(enroll_port) and _listening(api_port)):
                raise RuntimeError("READY=1 was sent but the agent does not listen on both ports")
            if before_rss is not None:
                before_rss(command)
            time.sleep(IDLE_SETTLE)
            rss = _rss_mb(proc.pid)
            return AgentStart(ready, rss["VmRSS"], rss["RssAnon"], rss["RssFile"])
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, as systemd stops a service; SIGKILL if it has not exited within `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _enroll_then_call_api(secrets: EnrollmentSecrets, home: Path) -> Callable[[ServeCommand], None]:
    """Enroll the agent from this process, then make one call on its pinned API: the agent is
    then enrolled, its API serving, as after a bring-up."""
    def run(command: ServeCommand) -> None:
        async def go() -> None:
            store = TrustStore(home)
            await enroll_appliance(f"127.0.0.1:{command.enroll_port}", secrets, name="bench-agent", store=store,
                                   deadline=30)
            async with open_session("bench-agent", store=store) as api:
                await api.get("/v1/health")
        asyncio.run(go())
    return run


# What any asyncio service on this interpreter pays before its first line runs: the interpreter and
# the standard-library modules the agent cannot start without (its event loop, TLS, logging, its
# command line, state.json, paths).
STDLIB_IMPORTS = "import asyncio, ssl, logging, argparse, json, pathlib"


def stdlib_start(runs: int, python: str = sys.executable) -> float:
    """Median seconds from spawning `python -I -c STDLIB_IMPORTS` to its exit, over `runs` (after
    one unmeasured run): the floor under `cold start`, measured the same way in the same run."""
    times = []
    for index in range(runs + 1):
        started = time.perf_counter()
        subprocess.run([python, "-I", "-c", STDLIB_IMPORTS], check=True, cwd=tempfile.gettempdir())
        if index:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_agent(cold_runs: int, python: str = sys.executable, enrolled: bool = False
                  ) -> tuple[float, AgentStart, AgentStart | None]:
    """(median seconds from spawn to READY=1 over `cold_runs`, the idle-RSS start, and with
    `enrolled` the RSS after one enrollment and one API call)."""
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        workdir = Path(tmp)
        directory = appliances.provision_one(workdir, 0, EnrollmentSecrets.generate())
        start_agent(directory, workdir, python=python)  # warm the page cache; not measured
        idle = start_agent(directory, workdir, measure_rss=True, python=python)
        ready = [start_agent(directory, workdir, python=python).ready_seconds for _ in range(cold_runs)]
        after = None
        if enrolled:
            secrets = EnrollmentSecrets.generate()
            directory = appliances.provision_one(workdir, 1, secrets)
            after = start_agent(directory, workdir, measure_rss=True, python=python,
                                before_rss=_enroll_then_call_api(secrets, workdir / "requester"))
    return statistics.median(ready), idle, after
