"""The agent's guestinfo client (agent/sources/guestinfo.py), driven against the emulated
open-vm-tools in lab/bin, and against small shell stand-ins where a test needs a tool to misbehave
in a way the emulator does not."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest

from firsttrust.agent.errors import GuestInfoError, GuestInfoValueError, HypervisorUnavailable
from firsttrust.agent.sources.guestinfo import MAX_MESSAGE_BYTES, MAX_REPLY_BYTES, GuestInfo, guestinfo_key
from firsttrust.lab.vmware_emulator import ENV_VAR, bin_dir, create_vm, link_interpreter, read_vm, set_mode

SECRET = "s3cret-Value with spaces\nand a second line"


def tool_dir(tmp_path: Path, *tools: str) -> str:
    """PATH with only the named emulator tools, plus a `python3` for their shebang.

    The `python3` is this interpreter (fast to start, unlike a pyenv shim), and nothing else is
    on PATH, so real open-vm-tools on the test machine cannot answer instead of the emulator.
    """
    directory = Path(tempfile.mkdtemp(prefix="tools-", dir=tmp_path))
    link_interpreter(directory)
    for tool in tools:
        (directory / tool).symlink_to(bin_dir() / tool)
    return str(directory)


def fake_tool(directory: Path, name: str, body: str) -> Path:
    """A shell script standing in for a tool; the real emulator stays reachable as $EMULATOR.

    The system directories go at the end of PATH for the script's own commands (cat, stat).
    """
    script = directory / name
    script.write_text(
        f'#!/bin/sh\nPATH="$PATH:/usr/bin:/bin"\nEMULATOR={bin_dir() / name}\n{body}\n'
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "vm.json"
    create_vm(path, {"guestinfo.hello": "world"})
    monkeypatch.setenv(ENV_VAR, str(path))
    monkeypatch.setenv("PATH", tool_dir(tmp_path, "vmtoolsd", "vmware-rpctool"))
    return path


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    return directory


@pytest.fixture
def guestinfo(secrets_dir: Path) -> GuestInfo:
    return GuestInfo(timeout=5, attempts=3, backoff=0.01, tmp_dir=secrets_dir)


def argv_log(vm: Path) -> list[list[str]]:
    return read_vm(vm)["argv_log"]


def tools_used(vm: Path) -> list[str]:
    return [Path(argv[0]).name for argv in argv_log(vm)]


# --- get -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["hello", "guestinfo.hello"])
def test_get(vm: Path, guestinfo: GuestInfo, key: str) -> None:
    assert guestinfo.get(key) == "world"
    assert argv_log(vm)[-1][1:] == ["--cmd", "info-get guestinfo.hello"]


def test_get_missing_key(vm: Path, guestinfo: GuestInfo) -> None:
    assert guestinfo.get("absent") is None


def test_get_strips_exactly_one_newline(vm: Path, guestinfo: GuestInfo) -> None:
    create_vm(vm, {"k": "value\n\n", "empty": ""})
    assert guestinfo.get("k") == "value\n\n"
    assert guestinfo.get("empty") == ""


def test_get_non_utf8_value(vm: Path, guestinfo: GuestInfo) -> None:
    create_vm(vm, {"k": b"abc\xff\xfe"})
    with pytest.raises(GuestInfoValueError, match="guestinfo.k is not valid UTF-8") as caught:
        guestinfo.get("k")
    assert "abc" not in str(caught.value)


def test_get_value_too_large(vm: Path, guestinfo: GuestInfo) -> None:
    create_vm(vm, {"k": "x" * MAX_REPLY_BYTES})  # plus the tool's newline: one byte too many
    with pytest.raises(GuestInfoValueError, match="value too large"):
        guestinfo.get("k")


@pytest.mark.parametrize("value, said", [(b"abc\xff\xfe", "not valid UTF-8"), ("x" * MAX_REPLY_BYTES, "value too large")])
def test_a_bad_value_in_guestinfo_is_bad_input_exit_2_as_in_an_ovf_document(vm: Path, capsys, tmp_path, value, said):
    """Not a failing channel (exit 1): the same value in an OVF file or on the ISO is exit 2."""
    from firsttrust.agent.cli import main

    create_vm(vm, {"guestinfo.firsttrust.sec-a": value})
    code = main(["provision", "--state-dir", str(tmp_path / "s"), "--no-set-password", "--source", "vmware"])
    err = capsys.readouterr().err
    assert code == 2 and said in err and err.count("\n") == 1


def test_get_falls_back_to_rpctool(vm: Path, guestinfo: GuestInfo, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", tool_dir(tmp_path, "vmware-rpctool"))
    assert guestinfo.get("hello") == "world"
    assert guestinfo.get("absent") is None
    assert argv_log(vm)[-1][1:] == ["info-get guestinfo.absent"]
    assert tools_used(vm) == ["vmware-rpctool", "vmware-rpctool"]


def test_get_prefers_vmtoolsd(vm: Path, guestinfo: GuestInfo) -> None:
    guestinfo.get("hello")
    assert tools_used(vm) == ["vmtoolsd"]


# --- set -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [SECRET, "", "trailing newline\n", " unicode é ✓ 🔑 "]
)
def test_set_round_trips(vm: Path, guestinfo: GuestInfo, value: str) -> None:
    guestinfo.set("firsttrust.k", value)
    assert read_vm(vm)["guestinfo"]["guestinfo.firsttrust.k"] == value
    assert guestinfo.get("guestinfo.firsttrust.k") == value


def test_set_never_puts_the_value_in_argv(vm: Path, guestinfo: GuestInfo) -> None:
    guestinfo.set("firsttrust.sec_a", SECRET)
    log = argv_log(vm)
    assert [argv[1] for argv in log] == ["--cmdfile"]
    for fragment in [SECRET, *SECRET.splitlines(), "s3cret"]:
        assert fragment not in json.dumps(log)


def test_set_command_file_is_private_and_removed(
    vm: Path, guestinfo: GuestInfo, tmp_path: Path, secrets_dir: Path, monkeypatch
) -> None:
    # A vmtoolsd stand-in that records the modes of the command file and its directory.
    path = tool_dir(tmp_path, "vmware-rpctool")
    fake_tool(
        Path(path),
        "vmtoolsd",
        f'stat -c %a "$2" "$(dirname "$2")" > {tmp_path}/modes\nexec "$EMULATOR" "$@"',
    )
    monkeypatch.setenv("PATH", path)
    guestinfo.set("k", SECRET)
    assert (tmp_path / "modes").read_text().split() == ["600", "700"]
    assert Path(argv_log(vm)[-1][2]).parent.parent == secrets_dir
    assert list(secrets_dir.iterdir()) == []


def test_set_removes_command_file_on_failure(vm: Path, guestinfo: GuestInfo, secrets_dir) -> None:
    set_mode(vm, "no-vm")
    with pytest.raises(HypervisorUnavailable):
        guestinfo.set("k", SECRET)
    assert list(secrets_dir.iterdir()) == []


def test_set_without_vmtoolsd_refuses_a_value(
    vm: Path, guestinfo: GuestInfo, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("PATH", tool_dir(tmp_path, "vmware-rpctool"))
    with pytest.raises(GuestInfoError) as caught:
        guestinfo.set("k", SECRET)
    assert str(caught.value) == (
        "cannot set guestinfo without vmtoolsd: vmware-rpctool would put the value in argv"
    )
    assert argv_log(vm) == []


def test_set_without_vmtoolsd_scrubs_with_empty_value(
    vm: Path, guestinfo: GuestInfo, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("PATH", tool_dir(tmp_path, "vmware-rpctool"))
    guestinfo.set("hello", "")
    assert read_vm(vm)["guestinfo"]["guestinfo.hello"] == ""
    assert argv_log(vm)[-1][1:] == ["info-set guestinfo.hello "]


def test_set_with_vmtoolsd_too_old_for_cmdfile(vm: Path, guestinfo: GuestInfo) -> None:
    set_mode(vm, "no-cmdfile")
    with pytest.raises(GuestInfoError, match="does not support --cmdfile"):
        guestinfo.set("k", SECRET)
    assert "guestinfo.k" not in read_vm(vm)["guestinfo"]
    assert "s3cret" not in json.dumps(argv_log(vm))


@pytest.mark.parametrize(
    "value, message",
    [
        ("x" * MAX_MESSAGE_BYTES, "too large"),
        ("a\0b", "NUL"),
        ("lone \udcff surrogate", "not encodable as UTF-8"),
        (b"bytes", "must be a str"),
    ],
)
def test_set_refuses_bad_values_before_running_anything(
    vm: Path, guestinfo: GuestInfo, value, message: str
) -> None:
    with pytest.raises(GuestInfoError, match=message):
        guestinfo.set("k", value)
    assert argv_log(vm) == []


def test_set_error_never_quotes_the_value(
    vm: Path, guestinfo: GuestInfo, tmp_path: Path, monkeypatch
) -> None:
    # A vmtoolsd that echoes its command (and so the value) in its error message.
    path = tool_dir(tmp_path)
    fake_tool(Path(path), "vmtoolsd", 'cat "$2" >&2\nexit 1')
    monkeypatch.setenv("PATH", path)
    with pytest.raises(GuestInfoError, match="withheld") as caught:
        guestinfo.set("k", SECRET)
    for fragment in SECRET.splitlines():
        assert fragment not in str(caught.value)


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["", "guestinfo.", "a b", "a;b", "a\nb", "ä", "k=v", "x" * 300, 5, None]
)
def test_bad_keys_are_refused_before_running_anything(
    vm: Path, guestinfo: GuestInfo, key
) -> None:
    with pytest.raises(GuestInfoError):
        guestinfo.get(key)
    with pytest.raises(GuestInfoError):
        guestinfo.set(key, "v")
    assert argv_log(vm) == []


@pytest.mark.parametrize(
    "key, expected",
    [("a", "guestinfo.a"), ("guestinfo.a", "guestinfo.a"), ("ovfEnv", "guestinfo.ovfEnv"),
     ("firsttrust.sec_a-1", "guestinfo.firsttrust.sec_a-1")],
)
def test_guestinfo_key(key: str, expected: str) -> None:
    assert guestinfo_key(key) == expected


# --- no hypervisor ---------------------------------------------------------------------------


@pytest.mark.parametrize("tools", [("vmtoolsd", "vmware-rpctool"), ("vmware-rpctool",)])
def test_not_in_a_vm(vm: Path, guestinfo: GuestInfo, tmp_path, monkeypatch, tools) -> None:
    monkeypatch.setenv("PATH", tool_dir(tmp_path, *tools))
    set_mode(vm, "no-vm")
    with pytest.raises(HypervisorUnavailable):
        guestinfo.get("hello")
    with pytest.raises(HypervisorUnavailable):
        guestinfo.set("hello", "")
    assert guestinfo.available() is False


def test_env_unset_is_not_in_a_vm(vm: Path, guestinfo: GuestInfo, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(HypervisorUnavailable):
        guestinfo.get("hello")


def test_no_tools_installed(guestinfo: GuestInfo, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", tool_dir(tmp_path))
    with pytest.raises(HypervisorUnavailable, match="neither vmtoolsd nor vmware-rpctool"):
        guestinfo.get("hello")
    with pytest.raises(HypervisorUnavailable):
        guestinfo.set("hello", SECRET)
    assert guestinfo.available() is False


def test_rpctool_exit_255_is_not_in_a_vm(guestinfo: GuestInfo, tmp_path, monkeypatch) -> None:
    path = tool_dir(tmp_path)
    fake_tool(Path(path), "vmware-rpctool", "exit 255")
    monkeypatch.setenv("PATH", path)
    with pytest.raises(HypervisorUnavailable):
        guestinfo.get("hello")


def test_available_in_a_vm(vm: Path, guestinfo: GuestInfo) -> None:
    assert guestinfo.available() is True


# --- injected tools ----------------------------------------------------------------------------


def test_tool_paths_can_be_injected(vm: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", tool_dir(tmp_path))  # only python3: nothing found by name
    guestinfo = GuestInfo(vmtoolsd=str(bin_dir() / "vmtoolsd"), rpctool="absent")
    assert guestinfo.get("hello") == "world"


def test_lookup_can_be_injected(vm: Path) -> None:
    seen: list[str] = []

    def which(name: str) -> str | None:
        seen.append(name)
        return None

    with pytest.raises(HypervisorUnavailable):
        GuestInfo(which=which).get("hello")
    assert seen == ["vmtoolsd", "vmware-rpctool"]


# --- transient failures ------------------------------------------------------------------------


@pytest.mark.parametrize("tools", [("vmtoolsd",), ("vmware-rpctool",)])
def test_permission_denied_once_is_retried(
    vm: Path, guestinfo: GuestInfo, tmp_path, monkeypatch, tools
) -> None:
    monkeypatch.setenv("PATH", tool_dir(tmp_path, *tools))
    set_mode(vm, "permission-denied-once")
    assert guestinfo.get("hello") == "world"
    assert len(argv_log(vm)) == 2


def test_set_permission_denied_once_is_retried(vm: Path, guestinfo: GuestInfo) -> None:
    set_mode(vm, "permission-denied-once")
    guestinfo.set("k", SECRET)
    assert read_vm(vm)["guestinfo"]["guestinfo.k"] == SECRET
    assert len(argv_log(vm)) == 2


def test_permission_denied_on_every_attempt(vm: Path, secrets_dir: Path) -> None:
    set_mode(vm, "permission-denied")
    guestinfo = GuestInfo(attempts=4, backoff=0.01, tmp_dir=secrets_dir)
    with pytest.raises(GuestInfoError, match="Permission denied.*4 attempts"):
        guestinfo.get("hello")
    assert len(argv_log(vm)) == 4


def test_backoff_doubles(vm: Path) -> None:
    set_mode(vm, "permission-denied")
    pauses: list[float] = []
    with pytest.raises(GuestInfoError):
        GuestInfo(attempts=4, backoff=0.05, sleep=pauses.append).get("hello")
    assert pauses == [0.05, 0.1, 0.2]


def test_hang_times_out_quickly_and_kills_the_tool(
    vm: Path, tmp_path: Path, secrets_dir: Path, monkeypatch
) -> None:
    # A vmtoolsd stand-in that records its pid, then becomes the (hanging) emulator.
    path = tool_dir(tmp_path)
    fake_tool(Path(path), "vmtoolsd", f'echo $$ >> {tmp_path}/pids\nexec "$EMULATOR" "$@"')
    monkeypatch.setenv("PATH", path)
    set_mode(vm, "hang")
    guestinfo = GuestInfo(timeout=0.3, attempts=2, backoff=0.01, tmp_dir=secrets_dir)
    started = time.monotonic()
    with pytest.raises(GuestInfoError, match=r"no answer within 0.3 s \(2 attempts\)"):
        guestinfo.get("hello")
    assert time.monotonic() - started < 3
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_hang_once_is_retried(vm: Path, secrets_dir: Path) -> None:
    set_mode(vm, "hang-once")
    # The retry is a fresh emulator process: give it time to start on a loaded machine.
    guestinfo = GuestInfo(timeout=1.5, attempts=2, backoff=0.01, tmp_dir=secrets_dir)
    guestinfo.set("k", SECRET)
    assert read_vm(vm)["guestinfo"]["guestinfo.k"] == SECRET


# --- other failures ------------------------------------------------------------------------------


def test_unexpected_failure_is_one_line(guestinfo: GuestInfo, tmp_path: Path, monkeypatch) -> None:
    path = tool_dir(tmp_path)
    fake_tool(Path(path), "vmtoolsd", "echo 'boom' >&2\necho 'second line' >&2\nexit 3")
    monkeypatch.setenv("PATH", path)
    with pytest.raises(GuestInfoError) as caught:
        guestinfo.get("hello")
    assert str(caught.value) == "reading guestinfo.hello failed (exit 3): 'boom'"


def test_tools_run_in_a_utf8_c_locale(guestinfo: GuestInfo, tmp_path: Path, monkeypatch) -> None:
    # English messages from vmtoolsd, and no charset conversion of values by glib's g_print.
    path = tool_dir(tmp_path)
    fake_tool(Path(path), "vmtoolsd", 'echo "$LC_ALL"')
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("LC_ALL", "de_DE.ISO-8859-1")
    assert guestinfo.get("hello") == "C.UTF-8"


def test_tool_killed_by_a_signal(guestinfo: GuestInfo, tmp_path: Path, monkeypatch) -> None:
    path = tool_dir(tmp_path)
    fake_tool(Path(path), "vmtoolsd", "kill -SEGV $$")
    monkeypatch.setenv("PATH", path)
    with pytest.raises(GuestInfoError, match="killed by signal 11"):
        guestinfo.get("hello")


def test_tool_that_cannot_be_executed(guestinfo: GuestInfo, tmp_path: Path) -> None:
    not_a_program = tmp_path / "vmtoolsd"
    not_a_program.write_bytes(b"\x7fELF garbage")
    not_a_program.chmod(stat.S_IRWXU)
    with pytest.raises(GuestInfoError, match="cannot run vmtoolsd"):
        GuestInfo(vmtoolsd=str(not_a_program)).get("hello")


def test_constructor_rejects_nonsense() -> None:
    for kwargs in ({"timeout": 0}, {"attempts": 0}, {"backoff": -1}):
        with pytest.raises(ValueError):
            GuestInfo(**kwargs)


# --- the real open-vm-tools, outside VMware ----------------------------------------------------
# `make test` installs Debian's open-vm-tools (Makefile DEB_PACKAGES). Outside a VMware VM,
# open-vm-tools 12.2 refuses before reading its arguments: vmtoolsd exits 1 silently,
# vmware-rpctool exits 255 with "Error: ARGV0 must be run inside a virtual machine on a VMware
# hypervisor product."

REAL_VMTOOLSD, REAL_RPCTOOL = Path("/usr/bin/vmtoolsd"), Path("/usr/bin/vmware-rpctool")


def _inside_vmware() -> bool:
    try:
        return "vmware" in Path("/sys/class/dmi/id/sys_vendor").read_text().lower()
    except OSError:
        return False


real_tools = pytest.mark.skipif(
    not (REAL_VMTOOLSD.exists() and REAL_RPCTOOL.exists()) or _inside_vmware(),
    reason="needs Debian's open-vm-tools (make test installs it) on a machine that is not a VMware VM")


@real_tools
def test_real_open_vm_tools_outside_vmware_is_no_hypervisor(tmp_path, secrets_dir, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    absent = str(tmp_path / "absent")
    only_vmtoolsd = GuestInfo(vmtoolsd=str(REAL_VMTOOLSD), rpctool=absent, attempts=1, tmp_dir=secrets_dir)
    only_rpctool = GuestInfo(vmtoolsd=absent, rpctool=str(REAL_RPCTOOL), attempts=1, tmp_dir=secrets_dir)
    for guestinfo in (only_vmtoolsd, only_rpctool):
        with pytest.raises(HypervisorUnavailable, match="not a VMware VM"):
            guestinfo.get("firsttrust.sec-a")
        assert guestinfo.available() is False
    with pytest.raises(HypervisorUnavailable, match="not a VMware VM"):
        only_vmtoolsd.set("guestinfo.firsttrust.sec-a", "")  # the --cmdfile path
    assert list(secrets_dir.iterdir()) == []  # its command file is gone too


NO_HYPERVISOR_ARGVS = {
    "vmtoolsd": [["--cmd", "info-get guestinfo.x"], ["--cmd=info-set guestinfo.x y"], ["--cmdfile", "{file}"],
                 ["--cmdfile", "/nonexistent"], ["--version"], ["--bogus"], []],
    "vmware-rpctool": [["info-get guestinfo.x"], ["info-set guestinfo.x y"], ["-h"], []],
}


@real_tools
@pytest.mark.parametrize("tool", sorted(NO_HYPERVISOR_ARGVS))
def test_emulator_without_a_hypervisor_prints_exactly_what_the_real_tool_prints(tool, tmp_path, monkeypatch):
    """Byte for byte: exit status, stdout, stderr. The real tool is started with the emulator's
    path as its argv[0] (vmware-rpctool prints argv[0]), so even that line is identical."""
    import subprocess

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("PATH", tool_dir(tmp_path, tool))
    emulator = str(Path(os.environ["PATH"]) / tool)
    command_file = tmp_path / "command"
    command_file.write_text("info-get guestinfo.x")
    compared = 0
    for args in NO_HYPERVISOR_ARGVS[tool]:
        args = [arg.format(file=command_file) for arg in args]
        real = subprocess.run([emulator, *args], executable=str(REAL_VMTOOLSD if tool == "vmtoolsd" else REAL_RPCTOOL),
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
        emulated = subprocess.run([emulator, *args], capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
        assert (emulated.returncode, emulated.stdout, emulated.stderr) == \
            (real.returncode, real.stdout, real.stderr), args
        assert real.returncode == (1 if tool == "vmtoolsd" else 255)
        compared += 1
    assert compared == len(NO_HYPERVISOR_ARGVS[tool])
