"""The kill -9 fault-injection harness: one appliance and one requester as processes, strace's
syscall fault injection as the killer, the issue-9 invariants as checks.

Everything goes through the command lines (`firsttrust-agent provision|serve|status`,
`firsttrust enroll|call`), the files they own and a TLS client for the API, so the harness does not depend on
how the product is built inside.

One kill point by hand (the agent killed at its 3rd rename after start-up; any syscall and N work
the same):

    firsttrust-agent serve --state-dir D --config agent.toml \\
        --listen 127.0.0.1:8790 --api-listen 127.0.0.1:8791 &          # wait for "listening:"
    strace -f -o kill.trace -e trace=rename,renameat,renameat2 \\
        -e inject=rename,renameat,renameat2:signal=KILL:when=3 -p $!  # wait for "attached"
    FIRSTTRUST_HOME=H firsttrust enroll 127.0.0.1:8790 --secrets F --name app --ssh-key k.pub
    # then: start `firsttrust-agent serve` again (no strace), `firsttrust-agent status --json
    # --state-dir D`, the same `firsttrust enroll` again, `firsttrust call app GET /v1/identity`.

The agent is attached once it is READY, so its start-up writes are not kill points of the
enrollment; the repair sweep (fault_cases.repair_case) runs it under strace from its start instead,
to kill it inside the repair of an enrollment that a crash cut short. The requester is run under strace from its start:

    FIRSTTRUST_HOME=H strace -f -qq -o kill.trace -e trace=fsync,fdatasync \\
        -e inject=fsync,fdatasync:signal=KILL:when=2 \\
        firsttrust enroll 127.0.0.1:8790 --secrets F --name app --ssh-key k.pub

kill.trace ends with the call that was killed (`rename(...) = ?`, `+++ killed by SIGKILL +++`).

Two facts about strace 6.1 (Debian 12) that shape the matrix:
- `--seccomp-bpf` silently disables `-e inject` (the syscalls are traced, the signal never comes),
  so the harness traces with plain ptrace (slower start-up for the requester, same kill points).
- `when=N` counts per thread: the kill fires in the first thread to make its Nth such call. The
  agent does all its durable writes in one worker thread (asyncio.to_thread's pool) and its
  network sends in the event-loop thread, so N walks each of those sequences in order; the
  worker thread's 1-byte event-loop wake-ups (also sendto) are passed over, as they send nothing
  to the peer. Each kill point's report names the exact call that was killed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from firsttrust import deployment as keys
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.ovfenv import serialize_ovf_env
from firsttrust.requester.deployspec import secrets_to_json

BIN = Path(sys.executable).parent
AGENT = str(BIN / "firsttrust-agent")
REQUESTER = str(BIN / "firsttrust")

# A "syscall" of the matrix is the family that does that job on any architecture; strace
# counts (when=N) each name of the family on its own, but only one of them is ever used.
SYSCALLS = {
    "rename": "rename,renameat,renameat2",
    "fsync": "fsync,fdatasync",
    "unlink": "unlink,unlinkat",
    "sendto": "sendto,sendmsg",
    "connect": "connect",
}

READY_LINE = b"listening: enrollment"
APP = "app"
MAX_N = 60  # a sweep that never completes unkilled is a bug of the harness or a hang


def strace_prefix(syscall: str, n: int, trace: Path, attach: int | None = None) -> list[str]:
    """strace that SIGKILLs the Nth call of `syscall`: the prefix of a command, or (attach=PID)
    the whole command to attach to a running process and all its threads."""
    names = SYSCALLS[syscall]
    size = "12" if syscall in ("sendto", "connect") else "96"  # a send's first bytes say what it was
    argv = ["strace", "-f", "-y", "-o", str(trace), "-s", size, "-e", f"trace={names}",
            "-e", f"inject={names}:signal=KILL:when={n}"]
    return argv + ["-p", str(attach)] if attach else argv + ["-qq"]


def killed_call(trace: Path) -> str:
    """The call strace killed, from its trace: the line that never returned (`... = ?`)."""
    try:
        lines = trace.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "?"
    for line in reversed(lines):
        if line.rstrip().endswith("= ?"):
            call = line.split(None, 1)[1] if " " in line.strip() else line
            return call.rsplit(" = ?", 1)[0][:200]
    return "?"


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago: all bound at once, so the
    kernel cannot hand the same ephemeral port out twice (a world's two listeners once got the
    same port and its agent failed with "Address already in use")."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a process we started with start_new_session=True."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class Account:
    name: str
    home: Path

    @property
    def authorized_keys(self) -> Path:
        return self.home / ".ssh" / "authorized_keys"

    def reset(self) -> None:
        shutil.rmtree(self.home / ".ssh", ignore_errors=True)


@dataclass
class Run:
    rc: int | None
    stdout: str
    stderr: str
    killed: bool
    call: str = ""  # the call strace killed

    def brief(self) -> str:
        if self.killed:
            return f"killed at {self.call}"
        last = self.stderr.strip().splitlines()[-1:] or [""]
        return f"rc={self.rc}" + (f" ({last[0][:160]})" if self.rc else "")


class Agent:
    """`firsttrust-agent serve` as a process (optionally under strace), in its own session."""

    def __init__(self, world: "World", inject: tuple[str, int] | None = None):
        """inject=(syscall, N): run under strace from the start, killed at its Nth `syscall`
        (the start-up's own writes included: the repair sweep's kill points)."""
        self.world = world
        world.agent_starts += 1
        self.log = world.root / f"agent-{world.agent_starts}.log"
        self.handle = open(self.log, "wb")
        argv = [AGENT, "serve", "--state-dir", str(world.state), "--config", str(world.config),
                "--listen", f"127.0.0.1:{world.enroll_port}", "--api-listen", f"127.0.0.1:{world.api_port}"]
        self.trace = world.root / f"agent-{world.agent_starts}.trace"
        if inject:
            argv = strace_prefix(*inject, self.trace) + argv
        self.proc = subprocess.Popen(argv, stdout=self.handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=world.env(), start_new_session=True)
        world.processes.append(self.proc)

    def attach(self, syscall: str, n: int, timeout: float = 10.0) -> None:
        """Put the running (READY) agent under strace's injection: its Nth `syscall` from now on
        gets SIGKILL. Attaching after READY leaves the start-up's own writes out of the count."""
        messages = self.world.root / f"agent-{self.world.agent_starts}.strace-stderr"
        with open(messages, "wb") as handle:
            tracer = subprocess.Popen(strace_prefix(syscall, n, self.trace, attach=self.proc.pid), stdout=handle,
                                      stderr=handle, stdin=subprocess.DEVNULL, start_new_session=True)
        self.world.processes.append(tracer)
        deadline = time.monotonic() + timeout
        while b"attached" not in messages.read_bytes():
            if tracer.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"strace could not attach to the agent: {messages.read_text()[-500:]}")
            time.sleep(0.01)

    def wait_ready(self, timeout: float = 20.0) -> bool:
        """True once the agent logged that it listens; False if it died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.log.read_bytes():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        raise AssertionError(f"agent did not start listening within {timeout}s: {self.log.read_text()[-2000:]}")

    def wait_dead(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    @property
    def killed(self) -> bool:
        return self.proc.poll() == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        kill_group(self.proc)
        self.handle.close()


class Template:
    """One `firsttrust-agent provision --source file:ovf-env.xml` per session; each case starts
    from a copy of its state directory (a provisioned appliance is a directory; copying it saves
    a second of start-up per case)."""

    def __init__(self, root: Path):
        root.mkdir(parents=True)
        self.secrets = EnrollmentSecrets.generate()
        self.state = root / "state"
        ovf = root / "ovf-env.xml"
        ovf.write_bytes(serialize_ovf_env({keys.SEC_A: self.secrets.sec_a, keys.SEC_B: self.secrets.sec_b}))
        config = root / "agent.toml"
        config.write_text('account = "root"\n')
        out = subprocess.run([AGENT, "provision", "--source", f"file:{ovf}", "--state-dir", str(self.state),
                              "--no-set-password", "--config", str(config)], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert self.secrets.sec_a not in out.stdout + out.stderr and self.secrets.sec_b not in out.stdout + out.stderr
        ovf.unlink()  # the deployment medium is gone once the appliance has read it
        self.pin = out.stdout.split()[1]  # "armed: sha256:..."


class World:
    """One freshly provisioned appliance, its secrets file, a requester home, two fixed ports."""

    def __init__(self, root: Path, account: Account, ssh_pub: Path, deadline_flag: bool,
                 template: "Template"):
        self.root = root
        root.mkdir(parents=True)
        self.account = account
        account.reset()
        self.ssh_pub = ssh_pub
        self.ssh_key_body = ssh_pub.read_text().split()[1]
        self.deadline_flag = deadline_flag
        self.state = root / "state"
        self.home = root / "requester"
        self.config = root / "agent.toml"
        self.config.write_text(f'account = "{account.name}"\n')
        self.secrets = template.secrets
        self.secrets_file = root / "secrets.json"
        fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets_to_json(self.secrets))
        os.close(fd)
        shutil.copytree(template.state, self.state, symlinks=True)  # keeps modes; owner is root anyway
        self.pin = template.pin
        self.enroll_port, self.api_port = free_ports(2)
        self.agent_starts = 0
        self.requester_runs = 0
        self.processes: list[subprocess.Popen] = []
        self.transcript: list[str] = []  # every stderr/log text, searched for secrets

    def short(self, text: str) -> str:
        """Paths in messages: relative to the case directory, the account's home as ~account."""
        return str(text).replace(str(self.account.home), f"~{self.account.name}").replace(f"{self.root}/", "")

    def env(self, home: Path | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS")}
        env["FIRSTTRUST_HOME"] = str(home or self.home)
        return env

    def cli(self, argv: list[str], home: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        out = subprocess.run(argv, capture_output=True, text=True, env=self.env(home), timeout=timeout,
                             stdin=subprocess.DEVNULL)
        self.transcript += [out.stdout, out.stderr]
        return out

    def enroll_argv(self) -> list[str]:
        argv = [REQUESTER, "enroll", f"127.0.0.1:{self.enroll_port}", "--secrets", str(self.secrets_file),
                "--name", APP, "--ssh-key", str(self.ssh_pub)]
        return argv + (["--deadline", "5"] if self.deadline_flag else [])

    def enroll(self, inject: tuple[str, int] | None = None, timeout: float = 60) -> Run:
        """The bring-up script's one command; killed by strace if `inject` says so."""
        self.requester_runs += 1
        argv = self.enroll_argv()
        trace = self.root / f"requester-{self.requester_runs}.trace"
        if inject:
            argv = strace_prefix(*inject, trace) + argv
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, env=self.env(), start_new_session=True)
        self.processes.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, err = proc.communicate()
            err += f"\n[harness: enroll did not finish within {timeout}s]"
        self.transcript += [out, err]
        killed = proc.returncode == -signal.SIGKILL
        return Run(proc.returncode, out, err, killed, killed_call(trace) if killed else "")

    def close(self) -> None:
        for proc in self.processes:
            kill_group(proc)
        for log in self.root.glob("agent-*.log"):
            self.transcript.append(log.read_text(errors="replace"))


# --- observations and invariants --------------------------------------------------------------------


@dataclass
class Observation:
    label: str
    phase: str
    failures: int | None
    authorized: list
    ssh_has_key: bool
    sec_b: bool
    violations: list[str] = field(default_factory=list)


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def _tmp_leftovers(*dirs: Path) -> list[str]:
    found = []
    for directory in dirs:
        if directory.is_dir():
            found += [str(p) for p in directory.rglob("*.tmp")]
    return found


class Checker:
    """Observes a world at each step of a case and checks the invariants; remembers the history
    the failure-count invariant (I4) needs."""

    def __init__(self, world: World):
        self.world = world
        self.history: list[Observation] = []

    def observe(self, label: str, *, agent_running: bool, after_rerun: bool = False,
                check_tmp: bool = False) -> Observation:
        """Look at everything that can grant access, and check the invariants. The phase comes
        from `firsttrust-agent status --json` after the re-run (the operator's view); at the
        intermediate points from state.json, which is all `status` reads (and 0.5 s cheaper)."""
        w = self.world
        violations = []
        if after_rerun:
            status = w.cli([AGENT, "status", "--json", "--state-dir", str(w.state), "--config", str(w.config)])
            try:
                report = json.loads(status.stdout)
            except ValueError:
                report = {}
                violations.append(f"status --json is not JSON (rc={status.returncode}): "
                                  f"{status.stderr.strip()[:200]}")
        else:
            report = _read_json(w.state / "state.json") or {"phase": "unprovisioned"}
        phase = report.get("phase", "?")
        failures = report.get("failures")
        authorized = (_read_json(w.state / "authorized.json") or {}).get("keys", [])
        try:
            ssh_has_key = w.ssh_key_body in w.account.authorized_keys.read_text()
        except FileNotFoundError:
            ssh_has_key = False
        sec_b = (w.state / "sec-b").exists()
        obs = Observation(label, phase, failures, authorized, ssh_has_key, sec_b, violations)
        enrolled = phase == "enrolled"

        # I1: nothing accepts a key unless status says enrolled
        if not enrolled:
            if authorized:
                violations.append(f"I1: phase {phase} but authorized.json holds {len(authorized)} key(s) "
                                  f"(source {', '.join(sorted({str(e.get('source')) for e in authorized}))})")
            if ssh_has_key:
                violations.append(f"I1: phase {phase} but the account's authorized_keys holds the requester's "
                                  "SSH key")
            if agent_running and self._api_accepts_requester():
                violations.append(f"I1: phase {phase} but the API accepts the requester's key (mTLS GET "
                                  "/v1/identity answered 200)")
        # I3: no SEC-B once enrolled and (re)started
        if enrolled and sec_b and not label.startswith("after-kill"):
            violations.append("I3: enrolled, agent started since, and sec-b is still on disk")
        if sec_b and stat.S_IMODE((w.state / "sec-b").stat().st_mode) != 0o600:
            violations.append("secrets: sec-b is not mode 0600")
        # I4: the failure count never under-counts
        violations += self._check_failures(obs)
        # I2: the re-run ends pinned to the appliance's real key, and the pinned API answers
        if after_rerun:
            record = _read_json(w.home / "appliances" / f"{APP}.json")
            pinned = record.get("pin") if record else None
            if pinned != w.pin:
                violations.append(f"I2: requester pin is {pinned or 'missing'}, appliance is {w.pin[:23]}…")
            if not enrolled:
                violations.append(f"I2: after the re-run the appliance is {phase}, not enrolled")
            call = w.cli([REQUESTER, "call", APP, "GET", "/v1/identity"]) if pinned else None
            if call and call.returncode != 0:
                violations.append(f"I2: `firsttrust call {APP} GET /v1/identity` exit {call.returncode}: "
                                  f"{call.stderr.strip()[:120]}")
        if check_tmp:
            dirs = [w.state, w.account.home / ".ssh"] + ([w.home] if after_rerun else [])
            leftovers = _tmp_leftovers(*dirs)
            if leftovers:
                violations.append("tmp: leftover temp file(s) " + ", ".join(w.short(p) for p in leftovers))
        obs.violations = [f"{v} [{label}]" for v in violations]
        self.history.append(obs)
        return obs

    def _api_accepts_requester(self) -> bool:
        """Does the API accept the requester's own key? A TLS client with the requester's
        identity (from its home) asks GET /v1/identity; the appliance's certificate is not checked
        here, only whether the appliance lets this key in. False if the requester has no key yet."""
        w = self.world
        key, cert = w.home / "identity.key", w.home / "identity.crt"
        if not (key.exists() and cert.exists()):
            return False
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(cert, key)
        connection = http.client.HTTPSConnection("127.0.0.1", w.api_port, context=context, timeout=5)
        try:
            connection.request("GET", "/v1/identity")
            return connection.getresponse().status == 200
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _check_failures(self, obs: Observation) -> list[str]:
        if obs.failures is None:
            return []
        out = []
        if obs.failures < 0:
            out.append(f"I4: failures is {obs.failures}")
        if obs.phase == "enrolled" and obs.failures != 0:
            out.append(f"I4: enrolled (all proofs were right) but failures is {obs.failures}")
        before = [o for o in self.history if o.failures is not None]
        if before and obs.failures < before[-1].failures:
            committed = obs.phase == "enrolled" and before[-1].phase != "enrolled"
            if not committed:
                out.append(f"I4: failures went {before[-1].failures} -> {obs.failures} without a commit "
                           f"({before[-1].label} -> {obs.label})")
        return out

    def secret_violations(self) -> list[str]:
        """No secret in any file except sec-b, in the agent's log or in the requester's output."""
        w = self.world
        secrets = (w.secrets.sec_a, w.secrets.sec_b)
        out = []
        for base in (w.state, w.home, w.account.home):
            if not base.is_dir():
                continue
            for path in base.rglob("*"):
                if path.is_file() and path.name != "sec-b":
                    data = path.read_bytes()
                    if any(s.encode() in data for s in secrets):
                        out.append(f"secrets: a secret is in {path}")
        if (w.state / "sec-b").exists() and w.secrets.sec_a.encode() in (w.state / "sec-b").read_bytes():
            out.append("secrets: SEC-A is in sec-b")
        if any(s in text for text in w.transcript for s in secrets):
            out.append("secrets: a secret is in the agent's log or a command's output")
        return out
