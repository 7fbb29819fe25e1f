"""The lab's guest channel on vcsim (lab/vsphere_channel.py): the emulated tools, run as real
subprocesses, read and write the simulator VM's guestinfo as its guest sees it (the simulator's
lab endpoints: extraConfig, and the OVF environment the simulator builds at power-on); and the
lab's per-appliance loopback addresses (lab/manager.py)."""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from firsttrust.agent.sources.deploy import OVFENV_GUESTINFO_KEY
from firsttrust.agent.sources.ovfenv import parse_ovf_env
from firsttrust.lab import manager as lab_manager
from firsttrust.lab import vsphere_channel
from firsttrust.lab.vmware_emulator import EMULATOR_ERROR_EXIT, ENV_VAR, answer_rpc, bin_dir, link_interpreter
from firsttrust.lab.vsphere_channel import SOCKET_NAME, ChannelServer, write_channel_file
from firsttrust.requester.deployplan import current_values

from vcsim_fixture import vcenter_session, vcsim  # noqa: F401 - the fixture


@pytest.fixture
def channel(vcsim, tmp_path):  # noqa: F811
    """A fresh clone of the template, a channel server for it, and a way to run the tools in it."""
    vc = vcenter_session(vcsim)
    template = vc.find_vm("DC0_H0_VM0")
    vm = vc.clone(template, f"channel-{tmp_path.name}",
                  [("guestinfo.firsttrust.sec-a", "planted-a")])
    server = ChannelServer(vcsim.lab, tmp_path / SOCKET_NAME, answer_rpc).start()
    vm_file = tmp_path / "vm.json"
    write_channel_file(vm_file, socket_path=server.path, vm=vc.moid(vm))
    python_dir = tmp_path / "python"
    python_dir.mkdir()
    link_interpreter(python_dir)
    env = dict(os.environ, **{ENV_VAR: str(vm_file)}, PATH=f"{bin_dir()}:{python_dir}:/usr/bin:/bin")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60)

    yield SimpleNamespace(vc=vc, vm=vm, server=server, run=run, vm_file=vm_file, tmp=tmp_path)
    server.stop()
    vc.close()


def test_info_get_answers_from_the_vms_extra_config_and_no_value_for_what_is_unset(channel):
    for tool in (["vmware-rpctool"], ["vmtoolsd", "--cmd"]):
        got = channel.run(*tool, "info-get guestinfo.firsttrust.sec-a")
        assert (got.returncode, got.stdout) == (0, "planted-a\n")
        missing = channel.run(*tool, "info-get guestinfo.firsttrust.nothing")
        assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "No value found\n")
    # Only guestinfo.*: the VM's other settings are not the guest's to read.
    assert channel.run("vmware-rpctool", "info-get govcsim").stderr == "No value found\n"


def test_info_set_is_visible_through_the_api_and_an_empty_value_reads_as_unset(channel):
    command = channel.tmp / "command"
    command.write_text("info-set guestinfo.firsttrust.appliance-cert published")
    assert channel.run("vmtoolsd", "--cmdfile", str(command)).returncode == 0
    assert current_values(channel.vc.extra_config(channel.vm))["guestinfo.firsttrust.appliance-cert"] == "published"

    # The agent's scrub: "" over the secret removes the key (the lab's vCenter follows the API
    # reference: "Keys with empty values will be removed"), and the guest reads it as unset.
    assert channel.run("vmware-rpctool", "info-set guestinfo.firsttrust.sec-a ").returncode == 0
    assert not [key for key, _ in channel.vc.extra_config(channel.vm) if key == "guestinfo.firsttrust.sec-a"]
    assert channel.run("vmware-rpctool", "info-get guestinfo.firsttrust.sec-a").stderr == "No value found\n"


def test_the_emulators_own_rules_hold_on_this_channel_too(channel):
    bad_key = channel.run("vmware-rpctool", "info-set notguestinfo.x 1")
    assert (bad_key.returncode, bad_key.stderr) == (1, "Invalid key\n")
    assert not [k for k, _ in channel.vc.extra_config(channel.vm) if k == "notguestinfo.x"]


def test_a_stopped_channel_fails_in_one_line_as_a_broken_emulator_not_as_a_vmx_answer(channel):
    channel.server.stop()
    got = channel.run("vmware-rpctool", "info-get guestinfo.firsttrust.sec-a")
    assert got.returncode == EMULATOR_ERROR_EXIT
    assert got.stderr.count("\n") == 1 and "guest channel" in got.stderr and "Traceback" not in got.stderr


def test_the_channel_file_holds_no_credential(channel, vcsim):  # noqa: F811
    text = channel.vm_file.read_text()
    assert vcsim.password not in text and vcsim.user not in text
    assert sorted(json.loads(text)["vsphere"]) == ["socket", "vm"]
    assert (channel.server.path.stat().st_mode & 0o777) == 0o600


def test_the_server_refuses_a_malformed_request_and_names_a_failed_api_call(channel):
    assert "malformed" in channel.server.answer(b"not json\n")["error"]
    assert "malformed" in channel.server.answer(b'{"vm": 1, "command": "info-get guestinfo.x"}\n')["error"]
    answer = channel.server.answer(b'{"vm": "vm-999999", "command": "info-get guestinfo.x"}\n')
    assert answer["error"].startswith("the lab's vCenter: ") and "\n" not in answer["error"]
    assert "vm-999999" in answer["error"]


def test_info_get_ovf_env_is_the_environment_the_simulator_built_at_power_on(channel):
    assert vsphere_channel.OVFENV_GUESTINFO_KEY == OVFENV_GUESTINFO_KEY
    vim, vm = channel.vc.vim, channel.vm
    assert channel.run("vmware-rpctool", "info-get guestinfo.ovfEnv").stderr == "No value found\n"
    properties = [vim.vApp.PropertySpec(operation="add", info=vim.vApp.PropertyInfo(
        key=0, id="firsttrust.enroll-window", type="string", value="10m")), vim.vApp.PropertySpec(
        operation="add", info=vim.vApp.PropertyInfo(key=1, id="firsttrust.sec-b", type="password", value="pw"))]
    channel.vc.wait_task(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(vAppConfig=vim.vApp.VmConfigSpec(
        property=properties, ovfEnvironmentTransport=["com.vmware.guestInfo"]))), "adding vApp properties")
    assert channel.run("vmware-rpctool", "info-get guestinfo.ovfEnv").stderr == "No value found\n"  # not yet
    channel.vc.power_on(vm)
    got = channel.run("vmware-rpctool", "info-get guestinfo.ovfEnv")
    assert got.returncode == 0
    environment = parse_ovf_env(got.stdout.removesuffix("\n").encode())
    assert environment.properties == {"firsttrust.enroll-window": "10m", "firsttrust.sec-b": "pw"}
    assert environment.vcenter_id == channel.vc.moid(vm)


def _free_host() -> str:
    claim = lab_manager._free_host()
    claim.release()  # the process-wide hand-out is what these tests look at
    return claim.host


def test_each_booted_appliance_gets_a_loopback_address_of_its_own_with_both_standard_ports_free():
    taken = _free_host()
    try:
        # Someone else listens on the next candidate's enrollment port: it is skipped.
        following = f"{lab_manager.APPLIANCE_NETWORK}{int(taken.rsplit('.', 1)[1]) + 1}"
        with socket.socket() as squatter:
            # SO_REUSEADDR as any listener sets it: earlier tests' connections to that port may
            # still be in TIME_WAIT. Already listened on by someone else: the same situation.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                squatter.bind((following, lab_manager.DEFAULT_ENROLL_PORT))
                squatter.listen()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
            second = _free_host()
        try:
            assert taken != "127.0.0.1" and taken.startswith("127.0.0.")
            assert second not in (taken, following)
        finally:
            lab_manager._release_host(second)
    finally:
        lab_manager._release_host(taken)
    assert _free_host() == taken  # released: handed out again
    lab_manager._release_host(taken)


def test_an_address_another_lab_process_is_starting_an_agent_on_is_not_handed_out():
    # Two lab processes (the mutation gate runs two test processes at once) scan the same
    # addresses in the same order; before either agent listens, a bind probe finds the address
    # free in both. The claim another process holds is what keeps them apart.
    candidate = _free_host()
    lab_manager._release_host(candidate)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom firsttrust.lab import manager\nclaim = manager._free_host()\n"
         "print(claim.host, flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = holder.stdout.readline().strip()
        assert held == candidate  # the other process got the first free address
        mine = lab_manager._free_host()
        try:
            assert mine.host != held
        finally:
            mine.release()
            lab_manager._release_host(mine.host)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    again = lab_manager._free_host()  # the other process is gone: its claim with it
    again.release()
    lab_manager._release_host(again.host)
    assert again.host == held



def test_an_address_a_lab_process_of_another_user_is_starting_an_agent_on_is_not_handed_out():
    # Another user's lab scans the same addresses; its claim is a socket bound to the address's
    # claim port, which the kernel gives to one socket whatever the user. (A claim file in a
    # per-user directory, as before, could not see it.)
    if os.geteuid() != 0:
        pytest.skip("running a process as another user needs root")
    candidate = _free_host()
    lab_manager._release_host(candidate)
    holder = subprocess.Popen(
        ["/usr/bin/python3", "-c", "import socket, sys\nclaim = socket.socket()\n"
         "claim.bind((sys.argv[1], int(sys.argv[2])))\nprint(claim.getsockname()[0], flush=True)\nsys.stdin.read()",
         candidate, str(lab_manager.CLAIM_PORT)],
        user=pwd.getpwnam("nobody").pw_uid, cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == candidate  # held by nobody
        mine = _free_host()
        lab_manager._release_host(mine)
        assert mine != candidate
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert _free_host() == candidate  # its process is gone: the claim with it
    lab_manager._release_host(candidate)
