"""`firsttrust-agent serve` as a process: systemd notify/watchdog, kill -9 at every enrollment
step followed by a restart, and the commands as a user types them."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_fixture import identity_files, provisioned

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.errors import FirsttrustError
from firsttrust.requester.enroll import enroll

ROOT = Path(__file__).resolve().parents[2]
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4 bringup@host"  # a real key: the agent parses it before the commit

# The real `serve`, its EnrollmentGate given the documented `checkpoint` hook (agent/gate.py):
# a SIGKILL at one step.
KILLER = """
import functools, os, signal, sys
import firsttrust.agent.service as service
target = sys.argv[1]
def checkpoint(step):
    if step == target:
        os.kill(os.getpid(), signal.SIGKILL)
service.EnrollmentGate = functools.partial(service.EnrollmentGate, checkpoint=checkpoint)
from firsttrust.agent.cli import main
sys.exit(main(sys.argv[2:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(self, state_dir: Path, env=None, kill_at: str | None = None, ports: tuple[int, int] | None = None):
        self.enroll_port, self.api_port = ports or (free_port(), free_port())
        args = ["serve", "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{self.enroll_port}",
                "--api-listen", f"127.0.0.1:{self.api_port}"]
        argv = [sys.executable, "-c", KILLER, kill_at or "-"] + args
        self.log = state_dir.parent / f"serve-{time.monotonic_ns()}.log"
        self.handle = open(self.log, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self.handle,
                                     stderr=subprocess.STDOUT)

    async def ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited early: {self.log.read_text()}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.api_port)
                w.close()
                _, w = await asyncio.open_connection("127.0.0.1", self.enroll_port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError("serve did not start listening")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()
        return self.log.read_text()


STEPS = ["charged", "verified", "tls", "prepared", "committed", "applied", "enrolled-sent"]


@pytest.mark.parametrize("step", STEPS)
async def test_kill_at_each_enrollment_step_then_restart_is_consistent(tmp_path, requester_identity, step):
    app = provisioned(tmp_path)
    files = identity_files(tmp_path, requester_identity)
    serve = Serve(app.store.path, kill_at=step)
    await serve.ready()
    try:
        await enroll("127.0.0.1", serve.enroll_port, app.secrets, files, name="winner", total_timeout=10)
        completed = True
    except FirsttrustError:
        completed = False
    serve.proc.wait(10)
    assert serve.proc.returncode == -signal.SIGKILL
    log = serve.stop()

    state = app.store.load()
    authorized = [entry["pin"] for entry in app.store.authorized()]
    if state.phase == "enrolled":
        # committed: the secrets are spent; a restart rolls the grant forward (key authorized, SEC-B gone)
        assert state.srp_verifier is None
        again = Serve(app.store.path)
        await again.ready()
        log += again.stop()
        assert [entry["pin"] for entry in app.store.authorized()] == [requester_identity.pin]
        assert not app.store.sec_b_path.exists()
    else:
        # not committed: nothing authorized, still enrollable with the same secrets; a new attempt completes
        assert state.phase == "provisioned" and state.srp_verifier is not None and authorized == []
        again = Serve(app.store.path)
        await again.ready()
        try:
            result = await enroll("127.0.0.1", again.enroll_port, app.secrets, files, name="winner")
            assert result.appliance_pin == app.store.load_identity().pin
        finally:
            log += again.stop()
        assert app.store.load().phase == "enrolled"
        assert [entry["pin"] for entry in app.store.authorized()] == [requester_identity.pin]
    assert not completed or step == "enrolled-sent"
    # no secret leaked: SEC-A nowhere, SEC-B at most in its own 0600 file, nothing in logs
    for path in app.store.path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert app.secrets.sec_a.encode() not in data
            if path.name != "sec-b":
                assert app.secrets.sec_b.encode() not in data
    assert app.secrets.sec_a not in log and app.secrets.sec_b not in log
    assert not list(app.store.path.glob(".*.tmp"))


async def test_ready_status_and_watchdog_reach_the_notify_socket(tmp_path):
    app = provisioned(tmp_path)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    serve = Serve(app.store.path, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
    messages = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 2:
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                if serve.proc.poll() is not None:
                    break
    finally:
        serve.stop()
        sock.close()
    joined = "\n".join(messages)
    assert "READY=1" in joined and "STATUS=waiting for enrollment" in joined, joined
    assert sum("WATCHDOG=1" in m for m in messages) >= 2, joined


async def test_serve_refuses_to_start_unprovisioned(tmp_path):
    out = subprocess.run([sys.executable, "-m", "firsttrust.agent.cli", "serve", "--state-dir", str(tmp_path / "none"),
                          "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 1 and "provision" in out.stderr and out.stderr.count("\n") == 1


async def test_as_a_user_types_it_serve_then_enroll_then_call(tmp_path):
    """`firsttrust-agent serve --state-dir D --listen ...` then `firsttrust enroll ...`."""
    secrets_file = tmp_path / "secrets.json"
    secrets = EnrollmentSecrets.generate()
    secrets_file.write_text(json.dumps({"sec_a": secrets.sec_a, "sec_b": secrets.sec_b}))
    secrets_file.chmod(0o600)
    app = provisioned(tmp_path, secrets)
    serve = Serve(app.store.path)
    await serve.ready()
    env = {**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")}
    try:
        out = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", "enroll", f"127.0.0.1:{serve.enroll_port}",
                              "--secrets", str(secrets_file), "--name", "app-01"],
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"enrolled app-01: {app.store.load_identity().pin}"
        again = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", "enroll", f"127.0.0.1:{serve.enroll_port}",
                                "--secrets", str(secrets_file), "--name", "app-01"],
                               capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
        # The same command again: the name is pinned to this address already, nothing is sent.
        assert again.returncode == 0 and again.stdout.strip() == f"already-pinned app-01: {app.store.load_identity().pin}"
    finally:
        log = serve.stop()
    record = json.loads((tmp_path / "home" / "appliances" / "app-01.json").read_text())
    assert record["pin"] == app.store.load_identity().pin
    assert secrets.sec_a not in log + out.stderr + out.stdout


async def test_a_stop_writes_the_last_intervals_door_counts(tmp_path):
    """The door summaries are written once a minute: a stop (or the watchdog's restart) within
    the minute lost the flood's evidence."""
    app = provisioned(tmp_path)
    serve = Serve(app.store.path)
    try:
        await serve.ready()
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", serve.enroll_port)
            writer.write(b"\xff\xff\xff\xff")  # a first frame over the cap: refused, counted
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
    finally:
        log = serve.stop()
    assert "event=door-summary" in log and "garbage" in log, log
