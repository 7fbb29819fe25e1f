"""Issue #25 finding 1, as the issue measured it: the agent as a process under `ulimit -n 1024`
(systemd's default soft limit), enrolled, and 1,100 idle TCP connections to its API port (no
ClientHello; each reopened when the agent closes it) from 20 other addresses. A pinned
`firsttrust call NAME GET /v1/health` must answer within 2 s all along, the agent must stay
within its descriptors, and its log must grow by less than 100 lines.

The real constants run here (API_PREAUTH_TIMEOUT 5 s, the caps derived from 1024). The flood
lasts FLOOD_SECONDS (12 s by default: two deadlines and more; FIRSTTRUST_API_FLOOD_SECONDS=30
runs the issue's 30 s). The flood is a process of its own at the lowest CPU priority, as
bench/flood.py runs it: on a real network the attacker's CPU is not the appliance's, while here
all share two cores. The pinned call is timed twice: through the library in this process (the
bound: 2 s), and as `firsttrust call` (its interpreter's start-up measured unflooded is added).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_fixture import provisioned
from test_serve import KILLER, Serve, free_port

from firsttrust.credentials import EnrollmentSecrets

ROOT = Path(__file__).resolve().parents[2]
IDLE = 1100
SOURCES = 20
FLOOD_SECONDS = float(os.environ.get("FIRSTTRUST_API_FLOOD_SECONDS", "12"))
SOFT_LIMIT = 1024
CALL_BOUND = 2.0


class LimitedServe(Serve):
    """`firsttrust-agent serve` started by a shell under `ulimit -n 1024`."""

    def __init__(self, state_dir: Path):
        self.enroll_port, self.api_port = free_port(), free_port()
        args = ["serve", "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{self.enroll_port}",
                "--api-listen", f"127.0.0.1:{self.api_port}"]
        self.log = state_dir.parent / f"serve-{time.monotonic_ns()}.log"
        self.handle = open(self.log, "wb")
        command = " ".join(["ulimit -n", str(SOFT_LIMIT), "&& exec", sys.executable, "-c", _quote(KILLER), "-"]
                           + [_quote(a) for a in args])
        self.proc = subprocess.Popen(["sh", "-c", command], cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT)

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def soft_limit(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open files limit")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


FLOOD = r"""
import asyncio, json, os, resource, signal, socket, sys
port, count, sources = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
counts = {"opened": 0, "closed_by_agent": 0, "failed": 0}

async def idle(index, stop):
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((f"127.0.0.{2 + index % sources}", 0))
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
            counts["opened"] += 1
            stopped = asyncio.ensure_future(stop.wait())
            closed = asyncio.ensure_future(loop.sock_recv(sock, 1))  # b"" once the agent closes it
            await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            closed.cancel()
            if closed.done() and not closed.cancelled():
                counts["closed_by_agent"] += 1
        except (OSError, asyncio.TimeoutError):
            counts["failed"] += 1
        finally:
            sock.close()
        await asyncio.sleep(0.05)

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(idle(i, stop)) for i in range(count)]
    while counts["opened"] < count:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(counts), flush=True)

asyncio.run(main())
"""


def cli(env: dict, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", *args], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=timeout)
    return out, time.monotonic() - started


async def pinned_call(home: Path) -> float:
    """GET /v1/health through the requester library's pinned session, timed from the request."""
    from firsttrust.requester.library import open_session
    from firsttrust.requester.truststore import TrustStore

    started = time.monotonic()
    async with open_session("app", store=TrustStore(home)) as api:
        assert (await api.get("/v1/health"))["status"] == "ok"
    return time.monotonic() - started


@pytest.mark.slow
async def test_1100_idle_connections_to_the_api_leave_the_pinned_call_answering(tmp_path):
    secrets = EnrollmentSecrets.generate()
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_text(json.dumps({"sec_a": secrets.sec_a, "sec_b": secrets.sec_b}))
    secrets_file.chmod(0o600)
    app = provisioned(tmp_path, secrets)
    serve = LimitedServe(app.store.path)
    env = {**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")}
    flood = None
    try:
        await serve.ready()
        assert serve.soft_limit() == SOFT_LIMIT
        out, _ = cli(env, "enroll", f"127.0.0.1:{serve.enroll_port}", "--secrets", str(secrets_file), "--name", "app")
        assert out.returncode == 0, out.stderr
        # The CLI's own start-up, measured unflooded: what the bound on the call adds to.
        out, quiet = cli(env, "call", "app", "GET", "/v1/health")
        assert out.returncode == 0 and json.loads(out.stdout)["status"] == "ok", out.stderr
        lines_before = serve.log.read_text().count("\n")

        flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(serve.api_port), str(IDLE), str(SOURCES)],
                                 stdout=subprocess.PIPE, preexec_fn=lambda: os.nice(19))
        started, peak = time.monotonic(), 0
        assert (await asyncio.wait_for(asyncio.to_thread(flood.stdout.readline), 60)).strip() == b"ready"
        library_calls, cli_calls = [], []
        while time.monotonic() - started < FLOOD_SECONDS:
            peak = max(peak, serve.descriptors())
            library_calls.append(await pinned_call(tmp_path / "home"))
            out, took = await asyncio.to_thread(cli, env, "call", "app", "GET", "/v1/health")
            assert out.returncode == 0 and json.loads(out.stdout)["status"] == "ok", out.stderr
            cli_calls.append(took)
            peak = max(peak, serve.descriptors())
            await asyncio.sleep(0.5)
        lines_during = serve.log.read_text().count("\n") - lines_before
        flood.terminate()
        counts = json.loads(flood.communicate(timeout=60)[0].decode().strip().splitlines()[-1])
        print(f"\napi flood: {counts}, agent descriptors peak {peak} (limit {SOFT_LIMIT}), pinned call through "
              f"the library {min(library_calls):.2f}-{max(library_calls):.2f} s, as `firsttrust call` "
              f"{min(cli_calls):.2f}-{max(cli_calls):.2f} s flooded ({quiet:.2f} s quiet), "
              f"{lines_during} log lines in {time.monotonic() - started:.0f} s")
        assert counts["opened"] >= IDLE and counts["closed_by_agent"] > 0, counts
        assert peak < SOFT_LIMIT
        assert max(library_calls) < CALL_BOUND, library_calls
        # The CLI: within 2 s of the request, on top of what its interpreter takes to start here.
        assert max(cli_calls) < CALL_BOUND + quiet, (cli_calls, quiet)
        assert lines_during < 100, serve.log.read_text()[-3000:]
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        log = serve.stop()
    assert "Too many open files" not in log and "Traceback" not in log, log[-3000:]
