"""`firsttrust-agent serve` on listeners handed over the way firsttrust-enroll.socket and
firsttrust-api.socket hand them over.

systemd-socket-activate (Debian: systemd) binds both ports, waits for the first connection, then
execs serve in its own process with LISTEN_PID, LISTEN_FDS=2 and LISTEN_FDNAMES=enroll:api, as
systemd does for the socket units. The sandboxed variant adds what firsttrust-agent.service adds
around the process: a network namespace of its own (PrivateNetwork=yes) and a socket(2) filter
that allows AF_UNIX only (RestrictAddressFamilies=AF_UNIX), so the unit's claim that the passed
sockets keep working there is tested, not only argued.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_fixture import identity_files, provisioned

from firsttrust.requester.enroll import enroll
from firsttrust.requester.session import PinnedSession

ROOT = Path(__file__).resolve().parents[2]
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")

pytestmark = pytest.mark.skipif(SOCKET_ACTIVATE is None,
                                reason="systemd-socket-activate not installed (Debian package systemd)")

# What PrivateNetwork=yes and RestrictAddressFamilies=AF_UNIX do to the process, then exec argv[1:]
# in the same process (LISTEN_PID stays right). The filter is systemd's: socket(2) with a family
# other than AF_UNIX fails with EAFNOSUPPORT; everything else, accept(2) included, is allowed.
SANDBOX = r"""
import ctypes, os, platform, socket, struct, sys

AUDIT_ARCH_AND_SOCKET_NR = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
CLONE_NEWNET, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 0x40000000, 38, 22, 2
LD_ABS_W, JEQ_K, RET_K = 0x20, 0x15, 0x06
RET_ALLOW, RET_ERRNO, EAFNOSUPPORT = 0x7FFF0000, 0x00050000, 97

libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(CLONE_NEWNET) != 0:
    sys.exit("sandbox: unshare(CLONE_NEWNET): " + os.strerror(ctypes.get_errno()))
arch, socket_nr = AUDIT_ARCH_AND_SOCKET_NR[platform.machine()]
program = [  # struct seccomp_data: nr at 0, arch at 4, the low half of args[0] at 16
    (LD_ABS_W, 0, 0, 4), (JEQ_K, 0, 5, arch),
    (LD_ABS_W, 0, 0, 0), (JEQ_K, 0, 3, socket_nr),
    (LD_ABS_W, 0, 0, 16), (JEQ_K, 1, 0, socket.AF_UNIX),
    (RET_K, 0, 0, RET_ERRNO | EAFNOSUPPORT),
    (RET_K, 0, 0, RET_ALLOW),
]
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

prog = Prog(len(program), ctypes.cast(code, ctypes.c_void_p))
ulong = ctypes.c_ulong
if libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0 or \
        libc.prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), ulong(0), ulong(0)) != 0:
    sys.exit("sandbox: seccomp: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""

PROBE = """
import errno, socket, sys
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
except OSError as exc:
    sys.exit(0 if exc.errno == errno.EAFNOSUPPORT else 3)
sys.exit(4)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sandbox_prefix() -> list[str]:
    """The SANDBOX launcher, after checking that it works here and that it bites."""
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"no seccomp filter for {platform.machine()} in this test")
    prefix = [sys.executable, "-c", SANDBOX]
    probe = subprocess.run(prefix + [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    if "unshare" in probe.stderr or "seccomp" in probe.stderr:
        pytest.skip(f"cannot sandbox here: {probe.stderr.strip()}")
    assert probe.returncode == 0, f"the sandbox lets socket(AF_INET) through ({probe.returncode}): {probe.stderr}"
    return prefix


class SocketActivated:
    """systemd-socket-activate holding two loopback ports for `firsttrust-agent serve`."""

    def __init__(self, state_dir: Path, prefix: list[str]) -> None:
        self.enroll_port, self.api_port = free_port(), free_port()
        self.log = state_dir.parent / "socket-activate.log"
        self.handle = open(self.log, "wb")
        argv = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{self.enroll_port}", "-l", f"127.0.0.1:{self.api_port}",
                "--fdname=enroll:api", *prefix, sys.executable, "-m", "firsttrust.agent.cli", "serve",
                "--state-dir", str(state_dir)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT)

    def listening(self, timeout: float = 20.0) -> None:
        """Both ports are bound (by systemd-socket-activate: serve starts on the first connection)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if f"127.0.0.1:{self.enroll_port} as 3" in text and f"127.0.0.1:{self.api_port} as 4" in text:
                return
            assert self.proc.poll() is None, f"systemd-socket-activate exited: {text}"
            time.sleep(0.05)
        raise AssertionError(f"systemd-socket-activate did not listen: {self.log.read_text()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()
        return self.log.read_text(errors="replace")


@pytest.mark.parametrize("sandboxed", [False, True], ids=["plain", "like-the-unit"])
async def test_serve_on_passed_sockets_enrolls_and_answers_the_api(tmp_path, requester_identity, sandboxed):
    prefix = sandbox_prefix() if sandboxed else []
    app = provisioned(tmp_path)
    files = identity_files(tmp_path, requester_identity)
    served = SocketActivated(app.store.path, prefix)
    try:
        served.listening()
        # The first connection makes systemd-socket-activate exec serve; it waits in the backlog.
        result = await enroll("127.0.0.1", served.enroll_port, app.secrets, files, name="socket-activated")
        appliance = app.store.load_identity()
        assert result.appliance_pin == appliance.pin
        # The port the agent tells the requester is the one of the socket it was handed.
        assert result.api_port == served.api_port
        if sandboxed:  # serve really ran in its own network namespace, under a seccomp filter
            assert os.readlink(f"/proc/{served.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            assert "Seccomp:\t2" in Path(f"/proc/{served.proc.pid}/status").read_text()
        async with PinnedSession("127.0.0.1", served.api_port, result.appliance_certificate, files.key_path,
                                 files.cert_path) as api:
            identity = await api.get("/v1/identity")
            health = await api.get("/v1/health")
        assert identity["pin"] == appliance.pin and identity["certificate"] == appliance.cert_pem.decode("ascii")
        assert health == {"status": "ok", "phase": "enrolled"}
        assert served.proc.poll() is None
    finally:
        log = served.stop()
    # serve, not systemd-socket-activate, got the SIGTERM: it exec'd in the same process, and
    # a clean stop exits 0.
    assert served.proc.returncode == 0, log
    assert "Execing" in log and "event=enrolled" in log, log
    assert f"listening: enrollment 127.0.0.1:{served.enroll_port}, API port {served.api_port}" in log, log
    assert app.secrets.sec_a not in log and app.secrets.sec_b not in log
