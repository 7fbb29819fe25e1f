"""The lab's hosts: `Manager` runs appliances as agent processes on loopback.

    manager = Manager(root)                                   # build/lab by default
    app = manager.boot("app-01", socket, "vm-42")             # a VM of the lab's vcsim (lab.datacenter):
                                                              # first boot, serve on 127.0.0.N:8790/8791
    app = manager.deploy("app-01", properties)                # a VM of a JSON file: guestinfo.ovfEnv,
                                                              # first boot, serve on free 127.0.0.1 ports
    manager.read_guestinfo("app-01", APPLIANCE_CERT_GUESTINFO)  # injected-certificate mode: what the guest published
    manager.guest_command("app-01", ["firsttrust-agent", "show-identity"])  # guest-command mode: guest operations
    manager.destroy_all()

The lab's data center (lab.datacenter, `firsttrust-lab demo` and `up`) deploys through the vSphere
API into govmomi's simulator, and `boot` is what a host does once a VM is powered on: the guest's
tools read and write that VM's guestinfo as its guest sees it, through the simulator's own lab
endpoints (lab/vsphere_channel.py: extraConfig, and the OVF environment built at power-on), and the
appliance listens on an address of its own, 127.0.0.2, 127.0.0.3, ..., at the standard ports
(8790 enrollment, 8791 API), which the data center then reports as the guest's IP.
`deploy` is the file-based lab that needs no simulator: the VM is a JSON file, and the agent
listens on two free ports of 127.0.0.1. The tests use it where the simulator cannot serve
(failure injection in the guest channel, agents that misbehave).

One appliance is one directory, <root>/<name>/:

    vm.json       the guest channel (lab.vmware_emulator): a channel file naming the simulator's
                  VM (booted VMs), or the emulated VM itself with its guestinfo (deployed VMs),
                  seen by "vCenter" and by the guest (through lab/bin/vmtoolsd)
    agent.toml    the guest's /etc/firsttrust/agent.toml: its state dir and public certificate
    state/        the agent's state directory
    agent.log     what first boot and `serve` wrote (the agent never logs a secret)

`deploy` does what vCenter and the appliance's first boot do, in that order: write the
deployment properties into the VM (as the OVF environment in guestinfo.ovfEnv, the "VMware
Tools" transport, or as guestinfo.* extraConfig keys); run `firsttrust-agent provision` in the
guest; start `firsttrust-agent serve` on two free loopback ports and wait until it listens on both.

Every guest process runs with the VM's environment: FIRSTTRUST_VMWARE_EMULATOR names its VM file
and lab/bin comes first on PATH, so the agent's unchanged guestinfo client talks to that VM.

Each `serve` leads its own session and process group. Stopping one sends SIGTERM to the group,
SIGKILL after `stop_timeout`, and waits. The running agents are recorded in <root>/lab.json
(lab.registry) as soon as they start, so `firsttrust-lab down` can stop what another invocation
left behind, and a manager that does not run `detached` also stops its agents when the
interpreter exits.

One module, over 450 lines, because `Manager` is one object with one lifecycle per appliance
(deploy or boot, first boot, serve, stop, its record in lab.json) and the helpers here (free
loopback hosts and ports, host keys) serve only it; the guest channel, guest operations, the
registry and process control already have their own modules.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from firsttrust.agent.sources.deploy import OVFENV_GUESTINFO_KEY
from firsttrust.deployment import DEFAULT_API_PORT, DEFAULT_ENROLL_PORT, guestinfo_key
from firsttrust.requester.deployspec import render

from . import procs
from .errors import LabError
from .registry import Registry
from .vmware_emulator import ENV_VAR, create_vm, guest_tools_path, read_vm
from .vsphere_channel import ChannelError, is_channel, request, write_channel_file

LISTEN_HOST = "127.0.0.1"
# The booted appliances' own addresses: 127.0.0.2 and up, as many as `up` may start and more.
# 127.0.0.1 is the host's (the requester's, the simulator's); all of 127.0.0.0/8 is loopback on
# Linux without configuration.
APPLIANCE_NETWORK = "127.0.0."
APPLIANCE_HOSTS = range(2, 255)
ROOT_ENV = "FIRSTTRUST_LAB_ROOT"
DEFAULT_ROOT = Path("build") / "lab"
# First boot reads guestinfo (about 15 tool runs), makes a key and an SRP verifier: well under a
# second. A minute only bounds a wedged run.
PROVISION_TIMEOUT = 60.0
# From exec to listening on both ports: ~0.3 s; 20 s covers a cold cache on a loaded machine.
READY_TIMEOUT = 20.0
GUEST_COMMAND_TIMEOUT = 30.0
# A free port picked here can be taken by someone else before the agent binds it: retry with
# new ports that many times.
BIND_ATTEMPTS = 3
# How many lines of an agent's log an error message quotes.
LOG_TAIL_LINES = 4
# Deployed in parallel at most; each first boot is a handful of short processes.
MAX_PARALLEL_DEPLOYS = 8

# An appliance name becomes a directory and a trust store record: the trust store's rule.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The file that marks a directory as one the lab made, and may therefore remove.
MARKER = ".firsttrust-lab"
# Inherited from a lab that runs under systemd, these would make an agent notify or take over
# sockets that are not its own.
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                      "LISTEN_FDNAMES")
TRANSPORTS = ("ovfenv", "guestinfo")


def default_root() -> Path:
    """$FIRSTTRUST_LAB_ROOT, else build/lab under the current directory."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def default_agent_command() -> list[str]:
    """`firsttrust-agent` beside this interpreter (the venv's console script), else `python -m firsttrust.agent.cli`."""
    script = Path(sys.executable).with_name("firsttrust-agent")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "firsttrust.agent.cli"]


def _make_host_keys(directory: Path) -> str:
    """An SSH host key of the lab appliance's own, as an installed sshd would have one under
    /etc/ssh (the private half 0600); returns the glob the agent's ssh_host_keys takes."""
    directory.mkdir(mode=0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fd = os.open(directory / "ssh_host_ed25519_key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    (directory / "ssh_host_ed25519_key.pub").write_bytes(public + b" root@lab-appliance\n")
    return str(directory / "ssh_host_*_key.pub")


def prepare_lab_directory(path: Path) -> None:
    """Create `path` (0700) for the lab, removing an older one only if the lab made it."""
    if path.is_symlink() or (path.exists() and not (path / MARKER).is_file()):
        raise LabError(f"{path} exists and was not made by the lab; remove it or choose another --root")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700, parents=True)
    (path / MARKER).write_text("made by firsttrust-lab, which removes it when it needs the name again\n")


@dataclass(frozen=True)
class Appliance:
    """One deployed appliance: where its VM and state live, its two ports, its agent's PID."""

    name: str
    directory: Path
    enroll_port: int
    api_port: int
    pid: int
    detached: bool = False
    host: str = LISTEN_HOST

    vm_path = property(lambda self: self.directory / "vm.json")
    config_path = property(lambda self: self.directory / "agent.toml")
    state_dir = property(lambda self: self.directory / "state")
    log_path = property(lambda self: self.directory / "agent.log")
    enroll_address = property(lambda self: f"{self.host}:{self.enroll_port}")
    api_address = property(lambda self: f"{self.host}:{self.api_port}")

    def to_record(self) -> dict:
        return {"directory": str(self.directory), "host": self.host, "enroll_port": self.enroll_port,
                "api_port": self.api_port, "pid": self.pid, "detached": self.detached}

    @classmethod
    def from_record(cls, name: str, record: dict) -> "Appliance":
        try:
            return cls(name=name, directory=Path(record["directory"]), enroll_port=int(record["enroll_port"]),
                       api_port=int(record["api_port"]), pid=int(record["pid"]),
                       detached=bool(record.get("detached", False)), host=str(record.get("host", LISTEN_HOST)))
        except (KeyError, TypeError, ValueError):
            raise LabError(f"the lab registry's entry for {name!r} is malformed") from None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the agent's log, as one line (for one-line error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "no log"
        tail = [line.strip()[:200] for line in text.splitlines() if line.strip() and not line.startswith("---")]
        return " | ".join(tail[-lines:]) or "empty log"


class UnknownAppliance(LabError):
    code = "unknown_appliance"


class _AgentExited(LabError):
    code = "agent_exited"


_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def _free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago and not yet handed out here."""
    sockets, ports = [], []
    try:
        with _ports_lock:
            while len(ports) < count:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((LISTEN_HOST, 0))
                port = sock.getsockname()[1]
                if port not in _ports_handed_out:
                    ports.append(port)
            _ports_handed_out.update(ports)
    finally:
        for sock in sockets:
            sock.close()
    return ports


_hosts_handed_out: set[str] = set()


# The port on each appliance address that a lab process binds (never listens on) while it starts
# an agent there: the one below the enrollment port, which no appliance uses.
CLAIM_PORT = DEFAULT_ENROLL_PORT - 1


class _HostClaim:
    """An appliance address this process holds from choosing it until its agent listens there.

    Another lab process (the mutation gate runs two test processes at once, and another user may
    run a lab of their own) scans the same addresses in the same order; a bind probe alone lets
    both pick one address in the window before either agent listens, then both pick the next,
    and so on. The claim is a socket bound to the address's CLAIM_PORT without SO_REUSEADDR: the
    kernel lets one socket of any process of any user hold it, and frees it when the socket is
    closed or its process dies. A claimed address is skipped, and once the agent listens the
    listening socket itself makes the address unbindable.
    """

    def __init__(self, host: str, sock: socket.socket) -> None:
        self.host = host
        self._sock: socket.socket | None = sock

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _try_claim(host: str) -> _HostClaim | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, CLAIM_PORT))
    except OSError:
        sock.close()
        return None
    return _HostClaim(host, sock)


def _free_host() -> _HostClaim:
    """An appliance address (APPLIANCE_NETWORK) on which both standard ports were free a moment
    ago, that no appliance of this process holds and that no other lab process is starting an
    agent on; claimed until the caller releases it.

    Raises:
        LabError: none left.
    """
    with _ports_lock:
        for last in APPLIANCE_HOSTS:
            host = f"{APPLIANCE_NETWORK}{last}"
            if host in _hosts_handed_out:
                continue
            claim = _try_claim(host)
            if claim is None:
                continue
            if _bindable(host, (DEFAULT_ENROLL_PORT, DEFAULT_API_PORT)):
                _hosts_handed_out.add(host)
                return claim
            claim.release()
    raise LabError(f"no free appliance address left in {APPLIANCE_NETWORK}{APPLIANCE_HOSTS[0]}-{APPLIANCE_HOSTS[-1]}")


def _release_host(host: str) -> None:
    with _ports_lock:
        _hosts_handed_out.discard(host)


def _bindable(host: str, ports: Sequence[int]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            # As the agent's listener (asyncio sets it): connections of an earlier appliance in
            # TIME_WAIT on this address do not make it busy.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


class Manager:
    """A small vCenter for one lab root.

    Args:
        root: the lab root (created 0700); default `default_root()`. Resolved to an absolute path.
        detached: the agents outlive this process (`firsttrust-lab up`); otherwise they are
            stopped by `destroy`/`destroy_all` or, as a safety net, when the interpreter exits.
        stop_timeout: seconds between SIGTERM and SIGKILL.
        ready_timeout: seconds an agent has to listen on both ports.
        agent_command: argv prefix that runs `firsttrust-agent` (tests substitute one).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, detached: bool = False,
                 stop_timeout: float = procs.STOP_TIMEOUT, ready_timeout: float = READY_TIMEOUT,
                 agent_command: Sequence[str] | None = None) -> None:
        self.root = Path(root if root is not None else default_root()).resolve()
        self.registry = Registry(self.root)
        self.detached = detached
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self.agent_command = list(agent_command or default_agent_command())
        self._children: dict[str, subprocess.Popen] = {}
        self._commands: dict[str, list[str]] = {}  # per appliance, when deploy() was given one
        self._children_lock = threading.Lock()
        if not detached:
            _managers.add(self)

    # -- what vCenter offers ---------------------------------------------------------------------

    def deploy(self, name: str, properties: Mapping[str, str] | None, *, transport: str = "ovfenv",
               agent_command: Sequence[str] | None = None) -> Appliance:
        """Deploy and power on an appliance; return once its agent listens on both ports.

        Args:
            name: the VM's name (letters, digits, '.', '_', '-'); also its directory.
            properties: the deployment properties (firsttrust.* keys, requester.deployspec), or
                None for a VM without any.
            transport: "ovfenv" (the OVF environment in guestinfo.ovfEnv, as vCenter's VMware
                Tools transport delivers vApp properties) or "guestinfo" (guestinfo.* extraConfig).
            agent_command: this appliance's agent command, instead of the manager's.
        Raises:
            LabError: a bad name, a name already running, first boot failed (the message quotes
                the agent's log), or the agent died or did not listen in time. No process is left.
        """
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise LabError("an appliance name is 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
        if transport not in TRANSPORTS:
            raise LabError(f"unknown transport {transport!r}; expected one of {', '.join(TRANSPORTS)}")
        command = self._new_guest(name, agent_command)
        draft = Appliance(name, self.root / name, 0, 0, 0, self.detached)
        create_vm(draft.vm_path, _guestinfo_of(properties, transport))
        self._write_guest_config(draft)
        self._first_boot(draft, command)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            enroll_port, api_port = _free_ports(2)
            appliance = dataclasses.replace(draft, enroll_port=enroll_port, api_port=api_port)
            try:
                return self._start(appliance, command)
            except _AgentExited as exc:
                if "cannot listen" not in str(exc) or attempt == BIND_ATTEMPTS:
                    raise LabError(str(exc)) from None
        raise AssertionError("unreachable")

    def boot(self, name: str, channel_socket: Path, vm: str, *,
             agent_command: Sequence[str] | None = None) -> Appliance:
        """First boot and start of a VM that lives in the lab's vCenter (lab.datacenter).

        The guest's tools answer from the VM's extraConfig through the vSphere API; the agent
        listens on an address of its own (127.0.0.2, 127.0.0.3, ...) at the standard ports, as
        an appliance on a network does. Reporting that address as the guest's IP is the caller's.

        Args:
            name: the VM's name (as in `deploy`).
            channel_socket: the lab's guest channel server (lab.vsphere_channel.ChannelServer).
            vm: the VM's managed object ID in the simulator (e.g. "vm-42").
            agent_command: this appliance's agent command, instead of the manager's.
        Raises:
            LabError: as `deploy`; also no free appliance address.
        """
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise LabError("an appliance name is 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
        command = self._new_guest(name, agent_command)
        draft = Appliance(name, self.root / name, DEFAULT_ENROLL_PORT, DEFAULT_API_PORT, 0, self.detached)
        write_channel_file(draft.vm_path, socket_path=channel_socket, vm=vm)
        self._write_guest_config(draft)
        self._first_boot(draft, command)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            claim = _free_host()
            host = claim.host
            try:
                return self._start(dataclasses.replace(draft, host=host), command)
            except _AgentExited as exc:
                # An address someone else took meanwhile stays handed out: it is not free.
                if "cannot listen" not in str(exc) or attempt == BIND_ATTEMPTS:
                    _release_host(host)
                    raise LabError(str(exc)) from None
            except BaseException:
                _release_host(host)
                raise
            finally:
                claim.release()
        raise AssertionError("unreachable")

    def deploy_many(self, plan: Mapping[str, Mapping[str, str] | None], **kwargs) -> list[Appliance]:
        """Deploy several appliances in parallel, in `plan`'s order.

        Raises:
            LabError: the first failure, after the deployments of this call that succeeded have
                been destroyed (a failed `deploy` leaves no process of its own).
        """
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_DEPLOYS, len(plan)))) as pool:
            futures = {name: pool.submit(self.deploy, name, properties, **kwargs) for name, properties in plan.items()}
        errors = [future.exception() for future in futures.values() if future.exception() is not None]
        if errors:
            for name, future in futures.items():
                if future.exception() is None:
                    self.destroy(name)
            raise errors[0]
        return [future.result() for future in futures.values()]

    def read_guestinfo(self, name: str, key: str) -> str | None:
        """A guestinfo value of the VM as the host sees it (e.g. APPLIANCE_CERT_GUESTINFO), or None.

        For a booted VM of the data center that is the guest's view, read by the lab's channel
        server from the simulator (a guest-only variable, else the VM's extraConfig value; an
        empty value is none).

        Raises:
            LabError: the channel or the simulator's lab endpoint failed.
        """
        path = self.appliance(name).vm_path
        document = json.loads(path.read_text())
        if not is_channel(document):
            return read_vm(path)["guestinfo"].get(key)
        try:
            ok, reply = request(document, f"info-get {key}")
        except ChannelError as exc:
            raise LabError(f"{name}: {exc}") from None
        return reply if ok else None

    def guest_command(self, name: str, argv: Sequence[str], stdin: bytes | None = None, *,
                      timeout: float = GUEST_COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        """Run a program inside the guest, as vSphere guest operations do; capture its output.

        `firsttrust-agent SUBCOMMAND ...` runs the guest's agent with the guest's configuration
        (its /etc/firsttrust/agent.toml: here `--config <dir>/agent.toml`).

        Returns:
            the finished process (returncode, stdout and stderr as bytes); a non-zero exit is
            the caller's to judge, as with guest operations.
        Raises:
            LabError: the program cannot be started or does not finish within `timeout`.
        """
        appliance = self.appliance(name)
        argv = self.guest_argv(name, argv)
        try:
            return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, cwd=appliance.directory,
                                  env=self._guest_env(appliance, argv))
        except subprocess.TimeoutExpired:
            raise LabError(f"{name}: guest command {Path(argv[0]).name} did not finish within {timeout:g} s") from None
        except OSError as exc:  # the program, or the VM's directory (the child's chdir) is missing
            what = exc.filename if exc.filename is not None else argv[0]
            raise LabError(f"{name}: cannot run guest command {Path(argv[0]).name}: {what}: {exc.strerror}") from None

    def guest_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """argv as the guest runs it: `firsttrust-agent SUBCOMMAND ...` is the guest's agent with
        the guest's configuration (its /etc/firsttrust/agent.toml: `--config <dir>/agent.toml`)."""
        appliance = self.appliance(name)
        argv = list(argv)
        if argv and argv[0] == "firsttrust-agent":
            head, rest = argv[1:2], argv[2:]
            config = ["--config", str(appliance.config_path)] if head and not head[0].startswith("-") else []
            argv = [*self.agent_command, *head, *config, *rest]
        return argv

    def guest_env(self, name: str) -> dict[str, str]:
        """The environment of a program in the guest (its VM file, the guest's tools on PATH)."""
        appliance = self.appliance(name)
        return self._guest_env(appliance, [])

    def restart(self, name: str) -> Appliance:
        """Restart the appliance's agent service (in a real guest: `systemctl restart`), same ports."""
        appliance = self.appliance(name)
        self._stop(appliance)
        return self._start(appliance, self._commands.get(name, self.agent_command))

    def destroy(self, name: str) -> str:
        """Power off and forget an appliance (its directory stays, for its log).

        Returns:
            "stopped", "not running", "unknown", or "not ours" (the recorded PID now belongs to
            another program: left alone, entry dropped).
        Raises:
            LabError: the agent survived SIGKILL.
        """
        try:
            appliance = self.appliance(name)
        except UnknownAppliance:
            with self._children_lock:
                proc = self._children.pop(name, None)
            if proc is not None:
                procs.stop_child(proc, self.stop_timeout)
                return "stopped"
            return "unknown"
        outcome = self._stop(appliance)
        with self.registry.editing() as data:
            data["appliances"].pop(name, None)
        if appliance.host != LISTEN_HOST:
            _release_host(appliance.host)
        return outcome

    def destroy_all(self) -> dict[str, str]:
        """Destroy every appliance of this lab root: this manager's and those recorded by others.

        Returns:
            name -> what `destroy` returned.
        Raises:
            LabError: an agent survived SIGKILL (the others are stopped all the same).
        """
        with self._children_lock:
            names = set(self._children)
        names |= set(self.registry.load()["appliances"])
        if not names:
            return {}
        with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            futures = {name: pool.submit(self.destroy, name) for name in sorted(names)}
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
        if errors:
            raise errors[0]
        return {name: future.result() for name, future in futures.items()}

    def detach(self) -> None:
        """Leave the running agents running after this process exits (`demo --keep`)."""
        self.detached = True
        with self.registry.editing() as data:
            for record in data["appliances"].values():
                record["detached"] = True

    # -- the lab's own view ------------------------------------------------------------------------

    def ensure_root(self) -> None:
        """Create the lab root, 0700: it holds the appliances' keys and (for `up`) secrets files."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def appliance(self, name: str) -> Appliance:
        """The recorded appliance `name`.

        Raises:
            UnknownAppliance: no such appliance in this lab root.
            RegistryError: the lab registry is unreadable.
        """
        record = self.registry.load()["appliances"].get(name)
        if record is None:
            raise UnknownAppliance(f"no appliance named {name!r} in {self.root}")
        return Appliance.from_record(name, record)

    def appliances(self) -> list[Appliance]:
        return [Appliance.from_record(name, record)
                for name, record in sorted(self.registry.load()["appliances"].items())]

    def running(self) -> list[Appliance]:
        """Recorded appliances whose agent runs (and really is that appliance's agent)."""
        return [a for a in self.appliances() if procs.alive(a.pid) and procs.is_lab_agent(a.pid, a.config_path)]

    # -- the processes -----------------------------------------------------------------------------

    def _new_guest(self, name: str, agent_command: Sequence[str] | None) -> list[str]:
        """Check that `name` is free to (re)use, make its directory; return its agent command."""
        existing = self.registry.load()["appliances"].get(name)
        if existing is not None:
            recorded = Appliance.from_record(name, existing)
            if procs.alive(recorded.pid) and procs.is_lab_agent(recorded.pid, recorded.config_path):
                raise LabError(f"appliance {name} is already running in {self.root}")
        command = list(agent_command or self.agent_command)
        if agent_command:
            self._commands[name] = command
        self.ensure_root()
        prepare_lab_directory(self.root / name)
        return command

    def _write_guest_config(self, appliance: Appliance) -> None:
        directory = appliance.directory
        host_keys = _make_host_keys(directory / "ssh")
        appliance.config_path.write_text(f"state_dir = {json.dumps(str(appliance.state_dir))}\n"
                                         f"public_certificate = {json.dumps(str(directory / 'appliance.crt'))}\n"
                                         f"ssh_host_keys = {json.dumps(host_keys)}\n")

    def _guest_env(self, appliance: Appliance, argv: Sequence[str]) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in _SYSTEMD_VARIABLES}
        env[ENV_VAR] = str(appliance.vm_path)
        env["PATH"] = guest_tools_path(env.get("PATH", os.defpath))
        return env

    def _first_boot(self, appliance: Appliance, command: list[str]) -> None:
        argv = [*command, "provision", "--config", str(appliance.config_path), "--state-dir",
                str(appliance.state_dir), "--no-set-password"]
        with open(appliance.log_path, "ab") as log:
            log.write(b"--- first boot: firsttrust-agent provision\n")
            log.flush()
            try:
                result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=appliance.directory, env=self._guest_env(appliance, argv),
                                        timeout=PROVISION_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise LabError(f"{appliance.name}: first boot did not finish within {PROVISION_TIMEOUT:g} s") from None
        if result.returncode != 0:
            raise LabError(f"{appliance.name}: first boot failed (provision exit {result.returncode}): "
                           f"{appliance.log_tail()}")

    def _start(self, appliance: Appliance, command: list[str]) -> Appliance:
        argv = [*command, "serve", "--config", str(appliance.config_path), "--state-dir", str(appliance.state_dir),
                "--listen", appliance.enroll_address, "--api-listen", appliance.api_address]
        with open(appliance.log_path, "ab") as log:
            log.write(f"--- firsttrust-agent serve on {appliance.enroll_address} and "
                      f"{appliance.api_address}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=appliance.directory, env=self._guest_env(appliance, argv),
                                    start_new_session=True)
        started = dataclasses.replace(appliance, pid=proc.pid, detached=self.detached)
        with self._children_lock:
            self._children[appliance.name] = proc
        with self.registry.editing() as data:
            data["appliances"][appliance.name] = started.to_record()
        try:
            self._wait_ready(started, proc)
        except BaseException:
            self._stop(started)
            with self.registry.editing() as data:
                data["appliances"].pop(appliance.name, None)
            raise
        return started

    def _wait_ready(self, appliance: Appliance, proc: subprocess.Popen) -> None:
        wanted = {appliance.enroll_port, appliance.api_port}
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise _AgentExited(f"{appliance.name}: the agent exited (status {code}) before listening: "
                                   f"{appliance.log_tail()}")
            if wanted <= procs.listening_ports(proc.pid):
                return
            if time.monotonic() > deadline:
                raise LabError(f"{appliance.name}: the agent did not listen on {appliance.enroll_address} and "
                               f"{appliance.api_address} within {self.ready_timeout:g} s: {appliance.log_tail()}")
            time.sleep(0.02)

    def _stop(self, appliance: Appliance) -> str:
        with self._children_lock:
            proc = self._children.pop(appliance.name, None)
        if proc is not None and proc.pid == appliance.pid:
            procs.stop_child(proc, self.stop_timeout)
            return "stopped"
        if proc is not None:  # an earlier incarnation (restart); the recorded PID is current
            procs.stop_child(proc, self.stop_timeout)
        if not procs.alive(appliance.pid):
            return "not running"
        if not procs.is_lab_agent(appliance.pid, appliance.config_path):
            return "not ours"
        if not procs.stop_recorded(appliance.pid, self.stop_timeout):
            raise LabError(f"{appliance.name}: agent PID {appliance.pid} survived SIGKILL")
        return "stopped"

    def _stop_own_children(self) -> None:
        with self._children_lock:
            names = list(self._children)
        for name in names:
            try:
                self.destroy(name)
            except Exception:  # at exit: stop the rest all the same
                with self._children_lock:
                    proc = self._children.pop(name, None)
                if proc is not None:
                    procs.stop_child(proc, self.stop_timeout)


def _guestinfo_of(properties: Mapping[str, str] | None, transport: str) -> dict[str, str]:
    if not properties:
        return {}
    if transport == "ovfenv":
        return {OVFENV_GUESTINFO_KEY: render(dict(properties), "ovf-env").decode("utf-8")}
    return {guestinfo_key(key): value for key, value in properties.items()}


# The safety net: agents of managers that are not detached do not outlive the interpreter, even
# when the code that deployed them never reached its cleanup (strong references: a manager
# dropped without destroy_all must still be found here).
_managers: set[Manager] = set()


@atexit.register
def _stop_undetached_agents() -> None:
    for manager in list(_managers):
        if not manager.detached:
            manager._stop_own_children()
