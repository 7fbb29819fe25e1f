"""The emulated open-vm-tools (lab/vmware_emulator.py): argv, output and exit codes of the real
tools, the VM file, the argv log, failure modes. The launchers run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firsttrust.lab.vmware_emulator import (
    ENV_VAR,
    GUESTMSG_MAX_IN_SIZE,
    bin_dir,
    create_vm,
    link_interpreter,
    read_vm,
    set_mode,
)

def not_in_vm(tool: str) -> tuple[int, bytes, bytes]:
    """What Debian 12's open-vm-tools does outside a VM (test_guestinfo.py compares with the real
    tools): vmtoolsd exits 1 silently; vmware-rpctool names itself (its argv[0]) and exits 255."""
    if tool == "vmtoolsd":
        return 1, b"", b""
    return 255, b"", (f"Error: {bin_dir() / tool} must be run inside a virtual machine on a VMware "
                      "hypervisor product.\n").encode()


def tool_path(tmp_path: Path, *dirs: Path) -> str:
    """PATH holding only `dirs` and a `python3` for the launchers' shebang.

    The `python3` is this interpreter: it starts several times faster than a pyenv shim, and no
    real open-vm-tools on the test machine can shadow the emulator.
    """
    python_dir = tmp_path / "python"
    if not python_dir.exists():
        python_dir.mkdir()
        link_interpreter(python_dir)
    return os.pathsep.join([*map(str, dirs), str(python_dir)])


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "vm.json"
    create_vm(path, {"guestinfo.hello": "world", "plain": "no prefix given"})
    monkeypatch.setenv(ENV_VAR, str(path))
    monkeypatch.setenv("PATH", tool_path(tmp_path, bin_dir()))
    return path


def run(*argv: str, timeout: float = 10) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)


def rpc(tool: str, command: str) -> subprocess.CompletedProcess[bytes]:
    return run(tool, "--cmd", command) if tool == "vmtoolsd" else run(tool, command)


BOTH = pytest.mark.parametrize("tool", ["vmtoolsd", "vmware-rpctool"])


# --- info-get / info-set ---------------------------------------------------------------------


@BOTH
def test_info_get_prints_value_and_newline(vm: Path, tool: str) -> None:
    result = rpc(tool, "info-get guestinfo.hello")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"world\n", b"")


@BOTH
def test_info_get_missing_key(vm: Path, tool: str) -> None:
    result = rpc(tool, "info-get guestinfo.absent")
    assert (result.returncode, result.stdout, result.stderr) == (1, b"", b"No value found\n")


def test_create_vm_adds_the_guestinfo_prefix(vm: Path) -> None:
    assert read_vm(vm)["guestinfo"]["guestinfo.plain"] == "no prefix given"
    assert rpc("vmtoolsd", "info-get guestinfo.plain").stdout == b"no prefix given\n"


@BOTH
@pytest.mark.parametrize("value", [" two  words é ✓", "line one\nline two\n", ""])
def test_info_set_stores_everything_after_the_key(vm: Path, tool: str, value: str) -> None:
    result = rpc(tool, f"info-set guestinfo.new {value}")
    # Both tools print the (empty) reply of a successful info-set, followed by "\n".
    assert (result.returncode, result.stdout, result.stderr) == (0, b"\n", b"")
    assert read_vm(vm)["guestinfo"]["guestinfo.new"] == value
    assert rpc(tool, "info-get guestinfo.new").stdout == value.encode() + b"\n"


def test_non_utf8_value_comes_out_byte_exact(vm: Path) -> None:
    create_vm(vm, {"raw": b"\xff\xfeok\x80"})
    assert rpc("vmtoolsd", "info-get guestinfo.raw").stdout == b"\xff\xfeok\x80\n"


def test_cmd_with_equals_sign(vm: Path) -> None:
    assert run("vmtoolsd", "--cmd=info-get guestinfo.hello").stdout == b"world\n"


@pytest.mark.parametrize(
    "command, reply",
    [
        ("no-such-rpc", b"Unknown command\n"),
        ("info-set guestinfo.onlykey", b"Two and exactly two arguments expected\n"),
        ("info-set notguestinfo.key value", b"Invalid key\n"),
        ("info-set guestinfo.big " + "x" * GUESTMSG_MAX_IN_SIZE, b"Message too large\n"),
    ],
)
def test_refused_rpcs(vm: Path, command: str, reply: bytes) -> None:
    result = rpc("vmware-rpctool", command)
    assert (result.returncode, result.stdout, result.stderr) == (1, b"", reply)
    assert set(read_vm(vm)["guestinfo"]) == {"guestinfo.hello", "guestinfo.plain"}


# --- --cmdfile --------------------------------------------------------------------------------


def test_cmdfile_keeps_the_value_out_of_argv(vm: Path, tmp_path: Path) -> None:
    command_file = tmp_path / "command"
    command_file.write_bytes("info-set guestinfo.secret s3cret value\nline 2".encode())
    result = run("vmtoolsd", "--cmdfile", str(command_file))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"\n", b"")
    state = read_vm(vm)
    assert state["guestinfo"]["guestinfo.secret"] == "s3cret value\nline 2"
    assert state["argv_log"][-1][1:] == ["--cmdfile", str(command_file)]
    assert "s3cret" not in json.dumps(state["argv_log"])


def test_cmdfile_info_get(vm: Path, tmp_path: Path) -> None:
    command_file = tmp_path / "command"
    command_file.write_text("info-get guestinfo.hello")
    assert run("vmtoolsd", "--cmdfile", str(command_file)).stdout == b"world\n"


def test_cmdfile_command_ends_at_nul(vm: Path, tmp_path: Path) -> None:
    # The tools hand the command to the RPC layer as a C string.
    command_file = tmp_path / "command"
    command_file.write_bytes(b"info-set guestinfo.k before\0after")
    assert run("vmtoolsd", "--cmdfile", str(command_file)).returncode == 0
    assert read_vm(vm)["guestinfo"]["guestinfo.k"] == "before"


def test_cmdfile_unreadable(vm: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = run("vmtoolsd", "--cmdfile", str(missing))
    assert result.returncode == 1
    assert result.stderr == f"Unable to read command from file {missing}.\n".encode()


def test_old_vmtoolsd_rejects_cmdfile(vm: Path, tmp_path: Path) -> None:
    set_mode(vm, "no-cmdfile")
    command_file = tmp_path / "command"
    command_file.write_text("info-set guestinfo.k v")
    result = run("vmtoolsd", "--cmdfile", str(command_file))
    assert result.returncode == 1
    assert result.stderr == b"Command line parsing failed: Unknown option --cmdfile\n"
    assert "guestinfo.k" not in read_vm(vm)["guestinfo"]
    assert rpc("vmtoolsd", "info-get guestinfo.hello").stdout == b"world\n"


# --- argv handling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, returncode, stderr",
    [
        (["--cmd"], 1, b"Command line parsing failed: Missing argument for --cmd\n"),
        (["--bogus", "--cmd", "info-get guestinfo.hello"], 1,
         b"Command line parsing failed: Unknown option --bogus\n"),
        ([], 1, b"vmtoolsd (firsttrust emulator): only --cmd and --cmdfile are emulated\n"),
    ],
)
def test_vmtoolsd_bad_argv(vm: Path, argv: list[str], returncode: int, stderr: bytes) -> None:
    result = run("vmtoolsd", *argv)
    assert (result.returncode, result.stdout, result.stderr) == (returncode, b"", stderr)


def test_vmtoolsd_skips_its_own_options(vm: Path) -> None:
    result = run("vmtoolsd", "-n", "vmsvc", "--log", "--cmd", "info-get guestinfo.hello")
    assert (result.returncode, result.stdout) == (0, b"world\n")


def test_rpctool_usage(vm: Path) -> None:
    no_argument = run("vmware-rpctool")
    assert no_argument.returncode == 1
    assert no_argument.stderr.startswith(b"rpctool syntax:")
    assert run("vmware-rpctool", "--help").returncode == 0


def test_rpctool_ignores_extra_arguments(vm: Path) -> None:
    result = run("vmware-rpctool", "info-get guestinfo.hello", "ignored")
    assert (result.returncode, result.stdout) == (0, b"world\n")


def test_every_invocation_is_logged_in_order(vm: Path) -> None:
    rpc("vmtoolsd", "info-get guestinfo.hello")
    rpc("vmware-rpctool", "info-get guestinfo.absent")
    run("vmtoolsd", "--bogus")
    log = read_vm(vm)["argv_log"]
    assert [Path(argv[0]).name for argv in log] == ["vmtoolsd", "vmware-rpctool", "vmtoolsd"]
    assert [argv[1:] for argv in log] == [
        ["--cmd", "info-get guestinfo.hello"],
        ["info-get guestinfo.absent"],
        ["--bogus"],
    ]


def test_concurrent_invocations_lose_no_update(vm: Path) -> None:
    count = 8
    procs = [
        subprocess.Popen(["vmware-rpctool", f"info-set guestinfo.k{i} v{i}"]) for i in range(count)
    ]
    assert [proc.wait(timeout=20) for proc in procs] == [0] * count
    state = read_vm(vm)
    assert {f"guestinfo.k{i}": f"v{i}" for i in range(count)}.items() <= state["guestinfo"].items()
    assert len(state["argv_log"]) == count


# --- outside a VM -------------------------------------------------------------------------------


@pytest.fixture(params=["env-unset", "file-missing", "mode-no-vm"])
def no_vm(request: pytest.FixtureRequest, vm: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "env-unset":
        monkeypatch.delenv(ENV_VAR)
    elif request.param == "file-missing":
        vm.unlink()
    else:
        set_mode(vm, "no-vm")
    return request.param


@BOTH
def test_not_in_a_vm(no_vm: str, tool: str) -> None:
    result = rpc(tool, "info-get guestinfo.hello")
    assert (result.returncode, result.stdout, result.stderr) == not_in_vm(tool)


@BOTH
@pytest.mark.parametrize("args", [[], ["-h"], ["--version"], ["--cmd"]])
def test_not_in_a_vm_whatever_the_arguments(no_vm: str, tool: str, args: list[str]) -> None:
    result = run(tool, *args)
    assert (result.returncode, result.stdout, result.stderr) == not_in_vm(tool)


def test_not_in_a_vm_cmdfile(no_vm: str, tmp_path: Path) -> None:
    command_file = tmp_path / "command"
    command_file.write_text("info-get guestinfo.hello")
    result = run("vmtoolsd", "--cmdfile", str(command_file))
    assert (result.returncode, result.stdout, result.stderr) == not_in_vm("vmtoolsd")


def test_no_vm_mode_still_logs_argv(vm: Path) -> None:
    set_mode(vm, "no-vm")
    rpc("vmware-rpctool", "info-get guestinfo.hello")
    assert read_vm(vm)["argv_log"] == [[str(bin_dir() / "vmware-rpctool"), "info-get guestinfo.hello"]]


# --- failure injection ------------------------------------------------------------------------


@BOTH
def test_permission_denied_once(vm: Path, tool: str) -> None:
    set_mode(vm, "permission-denied-once")
    first = rpc(tool, "info-get guestinfo.hello")
    assert (first.returncode, first.stdout, first.stderr) == (1, b"", b"Permission denied\n")
    assert read_vm(vm)["mode"] is None
    assert rpc(tool, "info-get guestinfo.hello").stdout == b"world\n"


def test_permission_denied_does_not_set(vm: Path) -> None:
    set_mode(vm, "permission-denied")
    for _ in range(2):
        assert rpc("vmware-rpctool", "info-set guestinfo.k v").stderr == b"Permission denied\n"
    assert "guestinfo.k" not in read_vm(vm)["guestinfo"]


def test_hang(vm: Path) -> None:
    set_mode(vm, "hang")
    with pytest.raises(subprocess.TimeoutExpired):
        run("vmtoolsd", "--cmd", "info-get guestinfo.hello", timeout=0.3)
    assert read_vm(vm)["mode"] == "hang"


def test_hang_once(vm: Path) -> None:
    set_mode(vm, "hang-once")
    with pytest.raises(subprocess.TimeoutExpired):
        run("vmware-rpctool", "info-get guestinfo.hello", timeout=0.5)
    assert read_vm(vm)["mode"] is None
    assert rpc("vmware-rpctool", "info-get guestinfo.hello").stdout == b"world\n"


# --- the Python API ---------------------------------------------------------------------------


def test_bin_dir_holds_executable_launchers() -> None:
    for name in ("vmtoolsd", "vmware-rpctool"):
        launcher = bin_dir() / name
        assert os.access(launcher, os.X_OK)
        assert launcher.read_text().startswith("#!/usr/bin/env python3\n")


def test_launcher_works_through_a_symlink(vm: Path, tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "vmware-rpctool").symlink_to(bin_dir() / "vmware-rpctool")
    monkeypatch.setenv("PATH", tool_path(tmp_path, elsewhere))
    assert rpc("vmware-rpctool", "info-get guestinfo.hello").stdout == b"world\n"


def test_vm_file_is_private_and_replaced_atomically(vm: Path) -> None:
    assert vm.stat().st_mode & 0o777 == 0o600
    rpc("vmtoolsd", "info-set guestinfo.k v")
    assert sorted(p.name for p in vm.parent.iterdir() if p.name.startswith(vm.name)) == [
        "vm.json",
        "vm.json.lock",
    ]


def test_create_vm_rejects_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown emulator mode"):
        create_vm(tmp_path / "vm.json", {}, mode="sometimes")
    assert not (tmp_path / "vm.json").exists()


def test_read_vm_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_vm(tmp_path / "absent.json")


def test_corrupt_vm_file_is_an_emulator_error(vm: Path) -> None:
    vm.write_text('{"guestinfo": ["not", "a", "map"]}')
    result = rpc("vmtoolsd", "info-get guestinfo.hello")
    assert result.returncode == 70
    assert b"firsttrust emulator" in result.stderr
