"""The lab's vCenter: govmomi's vCenter simulator as a component with a lifecycle.

    binary = build_vcsim()                      # once per source: cached under build/vcsim/<key>/
    with Vcsim.start() as vc:                   # a free loopback port, its own credentials
        vc.url, vc.thumbprint_sha1, vc.credentials_env()
    # stopped here: SIGTERM to its process group, SIGKILL after STOP_TIMEOUT, reaped

The simulator is lab/go/vcsim/main.go, built with Debian's Go (golang-go) against Debian's
govmomi source (golang-github-vmware-govmomi-dev, 0.24.2), offline, with GO111MODULE=off. The
build is keyed by the SHA-256 of main.go, the govmomi package version and `go version`, so a
changed main or an upgraded package builds again and an unchanged one never does.

Every simulator gets a fresh ECDSA certificate (so a thumbprint is worth checking) and a random
user and password, passed in its environment, never its argv. It leads its own process group
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

MAIN_GO = Path(__file__).resolve().parent / "go" / "vcsim" / "main.go"
GOVMOMI_PACKAGE = "golang-github-vmware-govmomi-dev"
GOCODE = "/usr/share/gocode"  # where Debian's golang-*-dev packages put their source
CACHE_ENV = "FIRSTTRUST_VCSIM_CACHE"
USER_ENV = "FIRSTTRUST_VCSIM_USER"
PASSWORD_ENV = "FIRSTTRUST_VCSIM_PASSWORD"

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


def build_key() -> str:
    """What the cached binary depends on: main.go, the govmomi source package, the Go toolchain."""
    govmomi = _command_output(["dpkg-query", "-W", "-f=${Version}", GOVMOMI_PACKAGE])
    go = _command_output(["go", "version"])
    digest = hashlib.sha256()
    sources = [p.read_bytes() for p in sorted(MAIN_GO.parent.glob("*.go"))]
    for part in (*sources, govmomi.encode(), go.encode()):
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
            for source in sorted(MAIN_GO.parent.glob("*.go")):
                shutil.copy(source, workdir / source.name)
            env = dict(os.environ, GO111MODULE="off", GOFLAGS="", CGO_ENABLED="0",
                       GOPATH=f"{workdir / 'gopath'}:{GOCODE}", GOCACHE=str(cache_dir / "gocache"))
            try:
                result = subprocess.run(["go", "build", "-o", str(workdir / "vcsim"), "."], cwd=workdir,
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

    @classmethod
    def start(cls, binary: Path | None = None, host: str = "127.0.0.1") -> "Vcsim":
        """Build if needed, then start a simulator on a free port of `host` and wait until it listens.

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
        user, password = "firsttrust-lab", secrets.token_urlsafe(24)
        env = dict(os.environ, **{USER_ENV: user, PASSWORD_ENV: password})
        try:
            with open(workdir / "vcsim.log", "wb") as log:
                process = subprocess.Popen(
                    [str(binary), "-listen", f"{host}:0", "-cert", str(workdir / "cert.pem"), "-key", str(key_path)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, cwd=workdir,
                    start_new_session=True)
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise VcsimError(f"cannot start {binary}: {exc}") from None
        url = _read_ready_line(process, workdir)
        key_path.unlink()  # loaded: the simulator needs it no more, and nobody else ever
        sha1, sha256 = _thumbprints(identity.cert_der)
        server = cls(url=url, user=user, password=password, thumbprint_sha1=sha1, thumbprint_sha256=sha256,
                     ca_file=workdir / "cert.pem", process=process, workdir=workdir)
        atexit.register(server.stop)
        return server

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
    except (ValueError, KeyError, TypeError):
        procs.stop_child(process, STOP_TIMEOUT)
        log = (workdir / "vcsim.log").read_text(errors="replace").strip()[-1000:]
        shutil.rmtree(workdir, ignore_errors=True)
        raise VcsimError(f"the simulator did not start: {log or 'no ready line'}") from None
