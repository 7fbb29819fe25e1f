"""Boot the appliance OVA's own disk in QEMU: one `VM` object per virtual machine, one qemu process per boot.

    image = build_image(variant="test")                       # the test OVA, its disk extracted
    with VM("smoke", image, iso=iso, ssh_key=key) as vm:       # powers on
        vm.wait_for(r"Reached target .*multi-user\\.target", timeout=300)
        print(vm.ssh("firsttrust-agent status").stdout)
        vm.shutdown()                                          # ACPI power button, then kill

What boots is what the OVA carries: packaging/ova/build.sh builds the test variant of the OVA
(cached under build/ova/<key>/), its VMDK is checked against the OVA's manifest and extracted to
build/vm/ova-<key>/disk.raw, and QEMU boots that disk with EFI firmware (Debian's OVMF) through
its own boot loader: no kernel from outside, no command line from outside (the test variant's
boot entry has the serial console and the journal on it). Hardware as close to the descriptor
as OVMF allows: the NIC is a vmxnet3; the disk is on NVMe, because OVMF 2022.11 has no PVSCSI
driver to load a boot loader from; the OVF ENV CD-ROM is a SCSI CD-ROM on a pvscsi controller,
because under OVMF on the "pc" machine the guest finds no device on the PIIX IDE channels. `boot_from="pvscsi"` puts
the disk on VMware's paravirtual SCSI as the descriptor declares, and lets OVMF load the boot
loader from a copy of the ESP on NVMe: the kernel then finds its root on pvscsi.

What a test can rely on:

* The cached image stays pristine: each VM writes to its own qcow2 overlay in build/vm/<name>/.
  `reboot()` power-cycles the same VM (same overlay, same ports), `reset()` is the reset button.
* Everything the guest prints on its serial console (firmware, kernel, systemd's status lines, the
  journal: the test variant's boot entry forwards it) is appended to build/vm/<name>/serial.log, which is kept for
  debugging; `wait_for()` searches it, from the current boot on, with ANSI colours removed.
* Host ports: `vm.port(22)`, `vm.port(8790)`, `vm.port(8791)` are 127.0.0.1 ports forwarded to the
  guest (user-mode networking; nothing but loopback is involved).
* Times: `vm.power_on_at` (time.monotonic() at power-on), and `vm.events`, (label, seconds since
  power-on) for every wait that succeeded; both are also in build/vm/<name>/events.log.
* No qemu outlives its test: the context manager kills it, an atexit hook kills any left over,
  and the kernel kills it (PR_SET_PDEATHSIG) if the Python process dies without running either.

Acceleration: TCG by default. This machine's /dev/kvm boots only PVM-enabled guest kernels (a
stock Debian kernel hangs under it), so KVM is used only with FIRSTTRUST_VM_ACCEL=kvm, or with
FIRSTTRUST_VM_ACCEL=auto, which tries KVM and falls back to TCG if the kernel prints nothing on
the serial console within KVM_PROBE_SECONDS.

Stdlib only.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
VM_ROOT = BUILD / "vm"

AGENT_PORT = 8790  # SRP enrollment listener (agent/server.py)
API_PORT = 8791  # post-enrollment API (mutual TLS)
GUEST_PORTS = (22, AGENT_PORT, API_PORT)

# Debian's cloud kernel has no AHCI driver (CONFIG_SATA_AHCI is not set), so the CD-ROM must sit on
# the PIIX IDE controller of the "pc" machine (ata_piix); on q35 it would be an AHCI device the
# guest cannot see. OVMF boots on "pc" as well.
MACHINE = "pc"
# Debian's ovmf: the 4 MiB flash layout, without Secure Boot (the boot loader is not signed).
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BOOT_DEVICES = ("nvme", "pvscsi")
MEMORY_MB = 1024
CPUS = 2
# Under TCG a debootstrapped Debian reaches multi-user in about 45 s on an idle 2-core host;
# timeouts in the tests are several times that, since other test sessions may share the CPUs.
KVM_PROBE_SECONDS = 20.0
POWERDOWN_SECONDS = 90.0
POLL_SECONDS = 0.1

# systemd's status lines are coloured; the kernel's console lines may carry \r.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FW_CFG_TEST_KEYS = "opt/org.firsttrust.test/authorized_keys"  # read by test-ssh-access.service


class VMError(Exception):
    """The VM did not do what was waited for. The message ends with the console's last lines."""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)


# --- building what the VM boots -----------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """The disk of a built OVA, extracted: disk.raw (GPT: ESP + root) and esp.raw (a GPT disk
    holding a copy of the ESP alone, for boot_from="pvscsi"), with the OVA's build-info.json."""

    path: Path
    ova: Path
    info: dict = field(compare=False)

    @property
    def disk(self) -> Path:
        return self.path / "disk.raw"

    @property
    def esp(self) -> Path:
        return self.path / "esp.raw"


def extract_ova(ova: Path) -> Image:
    """The OVA's VMDK, checked against its manifest, as raw disks in build/vm/ova-<key>/ (cached).

    Raises:
        VMError: the OVA lacks a member, or the VMDK's SHA256 is not the manifest's.
    """
    import hashlib
    import tarfile

    info = json.loads((ova.parent / "build-info.json").read_text())
    target = VM_ROOT / f"ova-{info['key']}"
    if (target / "complete").exists():
        return Image(target, ova, info)
    shutil.rmtree(target, ignore_errors=True)
    work = target.with_name(target.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    vmdk_name = info["vmdk"]
    with tarfile.open(ova) as tar:
        names = tar.getnames()
        manifest_name = next((n for n in names if n.endswith(".mf")), None)
        if vmdk_name not in names or manifest_name is None:
            raise VMError(f"{ova}: no {vmdk_name} or no manifest (members {names})")
        manifest = tar.extractfile(manifest_name).read().decode()
        digest = hashlib.sha256()
        with tar.extractfile(vmdk_name) as source, open(work / vmdk_name, "wb") as out:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    if f"SHA256({vmdk_name})= {digest.hexdigest()}" not in manifest.splitlines():
        raise VMError(f"{ova}: {vmdk_name} does not match the manifest")
    _run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(work / vmdk_name), str(work / "disk.raw")])
    (work / vmdk_name).unlink()
    # The ESP alone on a disk of its own, same partition bytes, so that OVMF (no PVSCSI driver)
    # can load the boot loader while the kernel finds the root file system on pvscsi.
    start, sectors = info["esp_start_sector"], info["esp_sectors"]
    esp = work / "esp.raw"
    size = (start + sectors + 2048) * 512
    with open(esp, "wb") as handle:
        handle.truncate(size)
    _run(["sgdisk", "--clear", "-n", f"1:{start}:{start + sectors - 1}", "-t", "1:ef00", "-c", "1:ESP", str(esp)])
    _run(["dd", f"if={work / 'disk.raw'}", f"of={esp}", "bs=512", f"skip={start}", f"seek={start}",
          f"count={sectors}", "conv=notrunc,sparse", "status=none"])
    (work / "complete").touch()
    work.rename(target)
    # Each is a 2 GiB sparse disk: keep the two newest (a session uses the test and the release
    # variant; VMs of the session still boot from the first).
    extracted = sorted((p for p in VM_ROOT.glob("ova-*") if not p.name.endswith(".tmp")),
                       key=lambda p: p.stat().st_mtime, reverse=True)
    for old in extracted[2:]:
        shutil.rmtree(old, ignore_errors=True)
    return Image(target, ova, info)


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise VMError(f"{result.args[0]} printed nothing\n{result.stderr}")
    return lines[-1]


def build_deb(*, units_dir: Path | None = None) -> Path:
    """packaging/deb/build.sh: the agent's .deb (seconds)."""
    cmd = [str(REPO / "packaging/deb/build.sh")]
    if units_dir is not None:
        cmd += ["--units-dir", str(units_dir)]
    try:
        return Path(_last_line(_run(cmd)))
    except subprocess.CalledProcessError as exc:
        raise VMError(f"packaging/deb/build.sh failed:\n{exc.stderr}") from None


def build_image(*, variant: str = "test", deb: Path | None = None, units_dir: Path | None = None,
                timeout: float = 1800) -> Image:
    """packaging/ova/build.sh: the appliance OVA (image and OVA cached by their inputs; minutes
    when cold), its disk extracted (extract_ova)."""
    import sys

    cmd = [str(REPO / "packaging/ova/build.sh"), "--variant", variant, "--python", sys.executable]
    if deb is not None:
        cmd += ["--deb", str(deb)]
    if units_dir is not None:
        cmd += ["--units-dir", str(units_dir)]
    try:
        ova = Path(_last_line(_run(cmd, timeout=timeout)))
    except subprocess.CalledProcessError as exc:
        raise VMError(f"packaging/ova/build.sh failed:\n{exc.stderr[-4000:]}") from None
    return extract_ova(ova)


def make_ovf_iso(document: bytes | str | os.PathLike[str], out: Path) -> Path:
    """packaging/ovfenv/make-iso.sh: an "OVF ENV" CD-ROM holding `document` as ovf-env.xml.

    Args:
        document: the ovf-env.xml contents (bytes), or the path of a file holding them.
        out: where the ISO goes (mode 0600: it holds secrets).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(document, bytes):
        source = out.with_suffix(".xml")
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(document)
    else:
        source = Path(document)
    try:
        _run([str(REPO / "packaging/ovfenv/make-iso.sh"), str(source), str(out)])
    except subprocess.CalledProcessError as exc:
        raise VMError(f"make-iso.sh failed:\n{exc.stderr}") from None
    return out


def ensure_ssh_key(path: Path = VM_ROOT / "test_ed25519") -> Path:
    """A key pair for logging in to test images as root (the private key file's path)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "firsttrust-vm-tests", "-f", str(path)])
    return path


# --- no process left behind -------------------------------------------------------------------------

_running: "weakref.WeakSet[VM]" = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for vm in list(_running):
        vm.kill()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # The signal comes when the *thread* that started qemu exits: start VMs from the main thread.
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


# --- the VM ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SerialMatch:
    match: re.Match
    seconds: float  # since power-on, as observed by the poll loop (resolution POLL_SECONDS)

    def __getitem__(self, group):  # vm.wait_for(...)[1]
        return self.match[group]


class VM:
    """One appliance VM under QEMU. See the module docstring.

    Args:
        name: names the work directory build/vm/<name>/ (emptied when the VM is created).
        image: a built Image.
        iso: an OVF ENV ISO to attach as the CD-ROM (/dev/sr0 in the guest), or None.
        ssh_key: private key whose .pub is offered to test images as root's authorized_keys
            (through QEMU's fw_cfg; release images ignore it).
        boot_from: "nvme" (default) or "pvscsi" (see the module docstring).
        accel: "tcg", "kvm" or "auto"; default $FIRSTTRUST_VM_ACCEL or "tcg".
        memory_mb, cpus: the VM's size.
        start: power on at once (default) or wait for start().
    """

    def __init__(self, name: str, image: Image, *, iso: Path | None = None, ssh_key: Path | None = None,
                 boot_from: str = "nvme", accel: str | None = None,
                 memory_mb: int = MEMORY_MB, cpus: int = CPUS, start: bool = True) -> None:
        self.name = name
        self.image = image
        self.iso = Path(iso) if iso else None
        self.ssh_key = Path(ssh_key) if ssh_key else None
        self.accel = accel or os.environ.get("FIRSTTRUST_VM_ACCEL", "tcg")
        if self.accel not in ("tcg", "kvm", "auto"):
            raise ValueError(f"accel must be tcg, kvm or auto, not {self.accel!r}")
        if boot_from not in BOOT_DEVICES:
            raise ValueError(f"boot_from must be one of {BOOT_DEVICES}, not {boot_from!r}")
        self.boot_from = boot_from
        self.memory_mb, self.cpus = memory_mb, cpus

        self.dir = VM_ROOT / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.serial_log = self.dir / "serial.log"
        self.overlay = self.dir / "overlay.qcow2"
        self.known_hosts = self.dir / "known_hosts"
        self.efi_vars = self.dir / "OVMF_VARS.fd"  # the VM's NVRAM, kept across its reboots
        shutil.copyfile(OVMF_VARS, self.efi_vars)
        # QMP on an abstract UNIX socket: no file to leak if we are killed, and no sun_path
        # length limit (108 bytes) to hit with a deep build/vm/<name>/.
        self._qmp_name = f"firsttrust-vm-{os.getpid()}-{id(self):x}"
        self.ports: dict[int, int] = {}
        self.proc: subprocess.Popen | None = None
        self.power_on_at: float | None = None
        self.power_on_wall: float | None = None
        self.events: list[tuple[str, float]] = []
        self.boots = 0
        self._text = ""  # the current boot's console output, ANSI removed
        self._read_pos = 0  # how far serial.log has been read into _text
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk.resolve()), "-F", "raw",
              str(self.overlay)])
        if start:
            self.start()

    # -- power ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Power on (again). Ports are chosen at the first power-on and kept across reboots."""
        if self.running:
            raise VMError(f"{self.name} is already running")
        if self.accel == "auto":
            self.accel = "kvm" if _kvm_usable() and self._probe_kvm() else "tcg"
        for attempt in range(3):
            if not self.ports or attempt:
                self.ports = {guest: _free_port() for guest in GUEST_PORTS}
            if self._power_on(self.accel):
                return
        raise VMError(f"qemu did not start: {self._qemu_stderr()}")

    def _qemu_command(self, accel: str) -> list[str]:
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.ports.items())
        cmd = [
            "qemu-system-x86_64", "-name", f"firsttrust-{self.name}",
            "-machine", f"{MACHINE},accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-rtc", "base=utc",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.efi_vars}",
            "-drive", f"file={self.overlay},format=qcow2,if=none,id=disk0,discard=unmap",
            "-netdev", f"user,id=net0,{forwards}", "-device", "vmxnet3,netdev=net0",
            "-chardev", f"file,id=serial0,path={self.serial_log},append=on", "-serial", "chardev:serial0",
            "-qmp", f"unix:{self._qmp_name},abstract=on,server=on,wait=off",
        ]
        # The CD-ROM is a SCSI CD-ROM on the pvscsi controller: under OVMF on the "pc" machine the
        # guest's ata_piix finds no device on the PIIX IDE channels (measured: the ports probe,
        # nothing attaches), so the IDE CD-ROM the descriptor declares for VMware cannot be used
        # here. The agent looks for the "OVF ENV" volume on any CD-ROM (/dev/sr*), which this is.
        cmd += ["-device", "pvscsi,id=pvscsi0"]
        if self.boot_from == "nvme":
            cmd += ["-device", "nvme,drive=disk0,serial=firsttrust-disk0,bootindex=0"]
        else:
            cmd += ["-device", "scsi-hd,drive=disk0,bus=pvscsi0.0,scsi-id=0",
                    "-drive", f"file={self.image.esp},format=raw,if=none,id=esp,snapshot=on",
                    "-device", "nvme,drive=esp,serial=firsttrust-esp,bootindex=0"]
        if self.iso is not None:
            cmd += ["-drive", f"file={self.iso},format=raw,if=none,id=cd0,media=cdrom,readonly=on",
                    "-device", "scsi-cd,drive=cd0,bus=pvscsi0.0,scsi-id=1"]
        if self.ssh_key is not None:
            cmd += ["-fw_cfg", f"name={FW_CFG_TEST_KEYS},file={self.ssh_key}.pub"]
        return cmd

    def _power_on(self, accel: str) -> bool:
        self.serial_log.touch()
        self._read_pos = self.serial_log.stat().st_size  # the console of this boot starts here
        self._text = ""
        stderr = open(self.dir / "qemu.stderr", "ab")
        self.proc = subprocess.Popen(self._qemu_command(accel), stdin=subprocess.DEVNULL, stdout=stderr,
                                     stderr=stderr, preexec_fn=_die_with_parent, start_new_session=True)
        stderr.close()
        _running.add(self)
        self.power_on_at, self.power_on_wall = time.monotonic(), time.time()
        self.boots += 1
        self._event(f"power-on #{self.boots} ({accel}, ports {self.ports})", 0.0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # QMP answers once qemu has set everything up
            if self.proc.poll() is not None:
                return False  # e.g. a forwarded port was taken in the meantime
            try:
                self.qmp("query-status")
                return True
            except (OSError, ValueError):
                time.sleep(0.05)
        return self.proc.poll() is None

    def _probe_kvm(self) -> bool:
        """Does a stock kernel get anywhere under this host's KVM? (Here: no; see module docstring.)"""
        self.ports = {guest: _free_port() for guest in GUEST_PORTS}
        if not self._power_on("kvm"):
            return False
        try:
            self.wait_for(r"Linux version", timeout=KVM_PROBE_SECONDS, label="kvm probe")
            ok = True
        except VMError:
            ok = False
        self.kill()
        if not ok:
            self._event("KVM probe failed: falling back to TCG", self.uptime())
        return ok

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def uptime(self) -> float:
        return time.monotonic() - self.power_on_at if self.power_on_at else 0.0

    def qmp(self, command: str, **arguments) -> dict:
        """Send one QMP command (e.g. "system_powerdown") and return its reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect("\0" + self._qmp_name)
            stream = sock.makefile("rwb")

            def call(name: str, args: dict | None = None) -> dict:
                message = {"execute": name} | ({"arguments": args} if args else {})
                stream.write(json.dumps(message).encode() + b"\n")
                stream.flush()
                while True:
                    reply = json.loads(stream.readline())
                    if "return" in reply or "error" in reply:
                        return reply

            json.loads(stream.readline())  # greeting
            call("qmp_capabilities")
            return call(command, arguments or None)

    def shutdown(self, timeout: float = POWERDOWN_SECONDS) -> bool:
        """Press the ACPI power button and wait for the guest to power off; kill it after `timeout`.

        Returns:
            True if the guest powered off by itself, False if it had to be killed.
        """
        if not self.running:
            return True
        started = time.monotonic()
        try:
            self.qmp("system_powerdown")
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=timeout)
            self._event(f"powered off after {time.monotonic() - started:.1f} s", self.uptime())
            graceful = True
        except subprocess.TimeoutExpired:
            self._event(f"no power-off within {timeout:.0f} s: killed", self.uptime())
            graceful = False
        self.kill()
        return graceful

    def reboot(self, timeout: float = POWERDOWN_SECONDS) -> bool:
        """Power-cycle: shutdown() then start() with the same disk and ports. Returns shutdown()'s result."""
        graceful = self.shutdown(timeout)
        self.start()
        return graceful

    def reset(self) -> None:
        """The reset button (no shutdown in the guest): QMP system_reset. Starts a new boot for
        wait_for(), console() and the power-on time; serial.log goes on."""
        self.console()  # what the old boot printed stays behind
        self.qmp("system_reset")
        self._event("reset", self.uptime())
        self._text = ""
        self.power_on_at, self.power_on_wall = time.monotonic(), time.time()
        self.boots += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _running.discard(self)

    def __enter__(self) -> "VM":
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill()

    def __del__(self) -> None:  # an unreferenced VM is no longer in _running for the atexit hook
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    # -- the serial console ---------------------------------------------------------------------

    def console(self) -> str:
        """The current boot's console output so far, without ANSI colour codes."""
        with open(self.serial_log, "rb") as log:
            log.seek(self._read_pos)
            data = log.read()
        # Only whole lines: a status line may be half-written.
        cut = data.rfind(b"\n") + 1
        if cut:
            self._read_pos += cut
            self._text += _ANSI.sub("", data[:cut].decode("utf-8", "replace").replace("\r", ""))
        return self._text

    def wait_for(self, pattern: str, timeout: float, *, after: int = 0, label: str | None = None) -> SerialMatch:
        """Wait until `pattern` (a regex, MULTILINE) matches the current boot's console output.

        Args:
            after: search only from this offset in console() (e.g. a previous match's end()).
            label: names the event in vm.events (default: the pattern).

        Raises:
            VMError: timeout, or qemu exited first. The message ends with the console's tail.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.console(), after)
            if match:
                result = SerialMatch(match, self.uptime())
                self._event(label or pattern, result.seconds)
                return result
            if not self.running:
                raise VMError(f"{self.name}: qemu exited ({self._exit_status()}) before /{pattern}/ "
                              f"appeared\n{self.tail()}")
            if time.monotonic() > deadline:
                raise VMError(f"{self.name}: /{pattern}/ did not appear within {timeout:.0f} s\n{self.tail()}")
            time.sleep(POLL_SECONDS)

    def wait_for_any(self, patterns: dict[str, str], timeout: float, *, after: int = 0) -> tuple[str, SerialMatch]:
        """Wait for the first of several patterns, e.g. {"ok": "Finished X", "failed": "Failed .*X"}.

        Returns:
            (the key of the pattern that matched first in the console output, its match).
        """
        combined = "|".join(f"(?P<{key}>{pattern})" for key, pattern in patterns.items())
        found = self.wait_for(combined, timeout, after=after, label=" | ".join(patterns))
        key = next(k for k in patterns if found.match.group(k) is not None)
        return key, found

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def _exit_status(self) -> str:
        code = self.proc.poll() if self.proc else None
        return f"exit status {code}; {self._qemu_stderr()}"

    def _qemu_stderr(self) -> str:
        try:
            return (self.dir / "qemu.stderr").read_text(errors="replace").strip()[-2000:] or "no stderr"
        except OSError:
            return "no stderr"

    def _event(self, label: str, seconds: float) -> None:
        self.events.append((label, seconds))
        with open(self.dir / "events.log", "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} boot {self.boots} +{seconds:7.1f}s  {label}\n")

    # -- ssh (test images) ------------------------------------------------------------------------

    def ssh_command(self, user: str = "root") -> list[str]:
        if self.ssh_key is None:
            raise VMError("this VM has no ssh_key")
        return ["ssh", "-F", "/dev/null", "-i", str(self.ssh_key), "-p", str(self.port(22)),
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self.known_hosts}", f"{user}@127.0.0.1"]

    def ssh(self, command: str, *, check: bool = True, timeout: float = 120,
            user: str = "root") -> subprocess.CompletedProcess:
        """Run `command` in the guest as root (test images only; see ssh_key)."""
        result = subprocess.run(self.ssh_command(user) + ["--", command], text=True, capture_output=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise VMError(f"{self.name}: `{command}` exited {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def wait_for_ssh(self, timeout: float = 300) -> float:
        """Wait until root can log in; returns seconds since power-on."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.ssh("true", check=False, timeout=30).returncode == 0:
                    self._event("ssh login", self.uptime())
                    return self.uptime()
            except subprocess.TimeoutExpired:
                pass
            if not self.running:
                raise VMError(f"{self.name}: qemu exited while waiting for ssh\n{self.tail()}")
            if time.monotonic() > deadline:
                raise VMError(f"{self.name}: no ssh login within {timeout:.0f} s\n{self.tail()}")
            time.sleep(2)

    def port(self, guest_port: int) -> int:
        """The 127.0.0.1 port on this host forwarded to `guest_port` (22, 8790 or 8791)."""
        return self.ports[guest_port]
