"""The lab's vCenter: govmomi's vCenter simulator as a component with a lifecycle.

    binary = build_vcsim()                      # once per source: cached under build/vcsim/<key>/
    with Vcsim.start() as vc:                   # a free loopback port, its own credentials
        vc.url, vc.thumbprint_sha1, vc.credentials_env()
    # stopped here: SIGTERM to its process group, SIGKILL after STOP_TIMEOUT, reaped

The simulator is the program in lab/go/vcsim/ (package main, one file per model; main.go says
what each models), built with Debian's Go (golang-go) against Debian's govmomi source
(golang-github-vmware-govmomi-dev, 0.24.2), offline, with GO111MODULE=off. The build is keyed by
the SHA-256 of every .go file there (names and contents), the govmomi package version and
`go version`, so a changed file or an upgraded package builds again and an unchanged one never does.

    with Vcsim.start(stock=True) as vc: ...     # every model off: stock vcsim 0.24
    vc.lab.guestinfo_get("vm-42", "guestinfo.ovfEnv")   # the lab's control endpoints (LabControl)

Every simulator gets a fresh ECDSA certificate (so a thumbprint is worth checking), a random
user and password, and a random bearer token for the lab's control endpoints, passed in its
environment, never its argv (it unsets the password and token once read). It leads its own process group
and exits when the pipe on its stdin closes, so even a lab killed with SIGKILL leaves no
simulator behind; a lab that exits normally stops it at interpreter exit at the latest.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from firsttrust.identity import create_identity

from . import procs
from .errors import LabError

GO_DIR = Path(__file__).resolve().parent / "go" / "vcsim"
MAIN_GO = GO_DIR / "main.go"
GOVMOMI_PACKAGE = "golang-github-vmware-govmomi-dev"
GOCODE = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their source
CACHE_ENV = "FIRSTTRUST_VCSIM_CACHE"
USER_ENV = "FIRSTTRUST_VCSIM_USER"
PASSWORD_ENV = "FIRSTTRUST_VCSIM_PASSWORD"
LAB_TOKEN_ENV = "FIRSTTRUST_VCSIM_LAB_TOKEN"
# The lab's guest side of guest operations listens here, in the simulator's private working directory.
GUEST_OPS_SOCKET = "guest-ops.sock"

# Measured: the build takes 20-45 s on an idle machine, several minutes on a loaded CI runner;
# starting takes 0.2 s. Both limits are generous so a slow machine is not a failure.
BUILD_TIMEOUT = 900.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = procs.STOP_TIMEOUT


class VcsimError(LabError):
    """The simulator could not be built or started."""

    code = "vcsim"


def default_cache_dir() -> Path:
    """$FIRSTTRUST_VCSIM_CACHE, else build/vcsim in the source tree (the repository's build/)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return MAIN_GO.parents[3] / "build" / "vcsim"


def _command_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise VcsimError(f"{argv[0]} is needed to build the simulator "
                         f"(apt-get install golang-go {GOVMOMI_PACKAGE}): {exc}") from None


def go_sources() -> list[Path]:
    """Every .go file of the simulator program: MAIN_GO, then the others of its directory in name order."""
    return [MAIN_GO, *sorted(path for path in GO_DIR.glob("*.go") if path.name != MAIN_GO.name)]


def build_key() -> str:
    """What the cached binary depends on: every .go file of the program (names and contents), the
    govmomi source package, the Go toolchain."""
    govmomi = _command_output(["dpkg-query", "-W", "-f=${Version}", GOVMOMI_PACKAGE])
    go = _command_output(["go", "version"])
    digest = hashlib.sha256()
    parts = [part for path in go_sources() for part in (path.name.encode(), path.read_bytes())]
    for part in (*parts, govmomi.encode(), go.encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:16]


def build_vcsim(cache_dir: Path | None = None) -> Path:
    """The simulator binary for the current sources, built if the cache does not hold it.

    Concurrent callers (the lab and a test run) serialize on a lock file: one builds, the others
    find its result. The binary appears under its final name only once complete (rename).

    Raises:
        VcsimError: Go or the govmomi source is missing, or the build failed (its output says why).
    """
    cache_dir = cache_dir or default_cache_dir()
    key = build_key()
    binary = cache_dir / key / "vcsim"
    if binary.exists():
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        binary.parent.mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(dir=binary.parent, prefix=".build-"))
        try:
            source = workdir / "src"
            source.mkdir()
            for path in go_sources():
                shutil.copy(path, source / path.name)
            env = dict(os.environ, GO111MODULE="off", GOFLAGS="", CGO_ENABLED="0",
                       GOPATH=f"{workdir / 'gopath'}:{GOCODE}", GOCACHE=str(cache_dir / "gocache"))
            try:
                result = subprocess.run(["go", "build", "-o", str(workdir / "vcsim"), "."], cwd=source,
                                        env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
            except (OSError, subprocess.SubprocessError) as exc:
                raise VcsimError(f"cannot run go build: {exc}") from None
            if result.returncode != 0:
                raise VcsimError(f"go build failed: {(result.stderr or result.stdout).strip()[-2000:]}")
            os.replace(workdir / "vcsim", binary)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return binary


WORKDIR_PREFIX = "firsttrust-vcsim-"


def sweep_stale_workdirs() -> list[Path]:
    """Remove the working directories (certificate, log) of simulators whose lab died without
    cleaning up (SIGKILL): each is named after its lab's PID. Returns what was removed."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        owner = path.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not procs.alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _thumbprints(der: bytes) -> tuple[str, str]:
    sha1 = hashlib.sha1(der).hexdigest().upper()
    sha256 = hashlib.sha256(der).hexdigest().upper()
    return (":".join(sha1[i:i + 2] for i in range(0, 40, 2)),
            ":".join(sha256[i:i + 2] for i in range(0, 64, 2)))


@dataclass
class Vcsim:
    """One running simulator. Use `Vcsim.start()` as a context manager, or call `stop()`."""

    url: str
    user: str
    password: str = field(repr=False)
    thumbprint_sha1: str
    thumbprint_sha256: str
    ca_file: Path
    process: subprocess.Popen = field(repr=False)
    workdir: Path = field(repr=False)
    lab_token: str = field(default="", repr=False)
    stock: bool = False

    @classmethod
    def start(cls, binary: Path | None = None, host: str = "127.0.0.1", *, stock: bool = False,
              guestinfo_set_private: bool = False, guest_ops: bool = False) -> "Vcsim":
        """Build if needed, then start a simulator on a free port of `host` and wait until it listens.

        Args:
            stock: every model off (`-stock`): the simulator behaves as stock vcsim 0.24.
            guestinfo_set_private: a guestinfo value the guest sets is visible to the guest only,
                not in the VM's config.extraConfig (`-guestinfo-set-private`).
            guest_ops: the simulator asks the lab's guest side (lab.guestops.GuestOpsServer, to be
                started by the caller on `guest_ops_socket`) to serve guest operations
                (`-guest-ops-socket`); without it every guest operation is unavailable.

        Raises:
            VcsimError: it did not start, or did not report its URL within START_TIMEOUT.
        """
        binary = binary or build_vcsim()
        sweep_stale_workdirs()
        workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        identity = create_identity("vcsim", dns_names=["localhost"], ip_addresses=[host])
        (workdir / "cert.pem").write_bytes(identity.cert_pem)
        key_path = workdir / "key.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(identity.key_pem)
        user, password, token = "firsttrust-lab", secrets.token_urlsafe(24), secrets.token_urlsafe(32)
        env = dict(os.environ, **{USER_ENV: user, PASSWORD_ENV: password, LAB_TOKEN_ENV: token})
        switches = (["-stock"] if stock else []) + (["-guestinfo-set-private"] if guestinfo_set_private else [])
        if guest_ops:
            switches += ["-guest-ops-socket", str(workdir / GUEST_OPS_SOCKET)]
        try:
            with open(workdir / "vcsim.log", "wb") as log:
                process = subprocess.Popen(
                    [str(binary), "-listen", f"{host}:0", "-cert", str(workdir / "cert.pem"), "-key", str(key_path),
                     *switches],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, cwd=workdir,
                    start_new_session=True)
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise VcsimError(f"cannot start {binary}: {exc}") from None
        url = _read_ready_line(process, workdir)
        key_path.unlink()  # loaded: the simulator needs it no more, and nobody else ever
        sha1, sha256 = _thumbprints(identity.cert_der)
        server = cls(url=url, user=user, password=password, thumbprint_sha1=sha1, thumbprint_sha256=sha256,
                     ca_file=workdir / "cert.pem", process=process, workdir=workdir, lab_token=token, stock=stock)
        atexit.register(server.stop)
        return server

    @property
    def guest_ops_socket(self) -> Path:
        """Where the lab's guest side of guest operations is to listen (Vcsim.start(guest_ops=True))."""
        return self.workdir / GUEST_OPS_SOCKET

    @property
    def lab(self) -> "LabControl":
        """The client of the simulator's own control endpoints (the lab's guest channel, the
        datastore switch, the request count)."""
        return LabControl(self.url, self.ca_file, self.lab_token)

    def credentials_env(self) -> dict[str, str]:
        """The environment `firsttrust deploy` reads the vCenter credentials from."""
        return {"FIRSTTRUST_VSPHERE_USER": self.user, "FIRSTTRUST_VSPHERE_PASSWORD": self.password}

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int | None:
        """Stop the simulator and its group; idempotent. Returns its exit status."""
        if self.process.returncode is None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            status = procs.stop_child(self.process, STOP_TIMEOUT)
        else:
            status = self.process.returncode
        with contextlib.suppress(OSError):
            self.process.stdout.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)
        return status

    def __enter__(self) -> "Vcsim":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _read_ready_line(process: subprocess.Popen, workdir: Path) -> str:
    """The URL from the simulator's first stdout line; stops it if that does not come in time."""
    import selectors
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    try:
        url = json.loads(line)["url"]
        if not url.startswith("https://"):
            raise ValueError(url)
        return url
    except (ValueError, RecursionError, KeyError, TypeError):
        procs.stop_child(process, STOP_TIMEOUT)
        log = (workdir / "vcsim.log").read_text(errors="replace").strip()[-1000:]
        shutil.rmtree(workdir, ignore_errors=True)
        raise VcsimError(f"the simulator did not start: {log or 'no ready line'}") from None


class LabControlError(LabError):
    """A lab control endpoint refused or failed. One line, never the token or a value."""

    code = "lab_control"


# A control request is served in microseconds; this bounds a wedged simulator.
CONTROL_TIMEOUT = 10.0


class LabControl:
    """The lab's own endpoints of one simulator (lab/go/vcsim/control.go), not vCenter's: what the
    guest's tools and the lab's hosts do (guestinfo, the IP VMware Tools reports), the datastore
    switch and the request count. Stdlib HTTPS to the simulator, its certificate verified with
    the simulator's CA file; the bearer token only ever in the Authorization header.

        vc.lab.guestinfo_get("vm-42", "guestinfo.ovfEnv")     # the guest's view, or None
        vc.lab.guestinfo_set("vm-42", "guestinfo.x", "v")     # what `vmware-rpctool info-set` does
        vc.lab.report_guest_ip("vm-42", "127.0.0.5")          # VMware Tools' guest.ipAddress
        vc.lab.set_datastore("LocalDS_0", accessible=False)    # or maintenance=True
        vc.lab.requests()   # {"sessions": {key: {"user", "methods"}}, "unauthenticated": {...}}
    """

    PREFIX = "/firsttrust-lab/"

    def __init__(self, url: str, ca_file: Path, token: str, timeout: float = CONTROL_TIMEOUT) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 443
        self.ca_file, self._token, self.timeout = Path(ca_file), token, timeout

    def __repr__(self) -> str:
        return f"LabControl(https://{self.host}:{self.port}{self.PREFIX})"

    def guestinfo_get(self, vm_moid: str, key: str) -> str | None:
        """The guest's view of guestinfo `key` of the VM (None: no value)."""
        value = self._call("POST", "guestinfo/get", {"vm": vm_moid, "key": key}).get("value")
        if value is not None and not isinstance(value, str):
            raise LabControlError("the lab's guestinfo/get answered a value that is not a string")
        return value

    def guestinfo_set(self, vm_moid: str, key: str, value: str) -> None:
        """What the guest's `vmware-rpctool "info-set KEY VALUE"` does ("" deletes)."""
        self._call("POST", "guestinfo/set", {"vm": vm_moid, "key": key, "value": value})

    def report_guest_ip(self, vm_moid: str, ip: str) -> None:
        """What VMware Tools reports once the guest is up: guest.ipAddress, guest.net[0], tools running."""
        self._call("POST", "guest/tools", {"vm": vm_moid, "ip": ip})

    def set_datastore(self, name: str, accessible: bool = True, maintenance: bool = False) -> None:
        """Mark a datastore (in)accessible and in maintenance or not (summary.accessible,
        summary.maintenanceMode); refused by a -stock simulator."""
        self._call("POST", "datastore", {"name": name, "accessible": accessible,
                                         "maintenanceMode": "inMaintenance" if maintenance else "normal"})

    def requests(self) -> dict:
        """The API requests served so far, by session key and method; refused by a -stock simulator."""
        answer = self._call("GET", "requests", None)
        if not isinstance(answer.get("sessions"), dict) or not isinstance(answer.get("unauthenticated"), dict):
            raise LabControlError("the lab's request count is malformed")
        return answer

    def _call(self, method: str, path: str, body: dict | None) -> dict:
        import http.client
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca_file))
        connection = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=self.timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        try:
            connection.request(method, self.PREFIX + path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read(4 * 1024 * 1024 + 1)
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            raise LabControlError(f"the lab's {path} endpoint does not answer ({type(exc).__name__})") from None
        finally:
            connection.close()
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise LabControlError(f"the lab's {path} endpoint answered HTTP {status} without a JSON object")
        if status != 200:
            error = answer.get("error") if isinstance(answer.get("error"), str) else ""
            raise LabControlError(f"the lab's {path} endpoint refused (HTTP {status}): {error[:200]}")
        return answer
