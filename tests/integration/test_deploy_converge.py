"""Issue 28 in the lab: a deploy stopped by Ctrl-C or SIGTERM stops within a second with a partial
report; the same command again finishes the job; `firsttrust destroy` tears an appliance down."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from test_vsphere_deploy import deploy_command, environment
from vcsim_fixture import vcenter_session, vcsim  # noqa: F401 - the fixture


def _vm_names(server, prefix: str) -> list[str]:
    vc = vcenter_session(server)
    try:
        return sorted(name for name in vc.virtual_machines() if name.startswith(prefix))
    finally:
        vc.close()


def _interrupt_after(command, env, seconds: float, signum=signal.SIGINT):
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    sent = time.monotonic()
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return process.returncode, time.monotonic() - sent, out, err


def test_sigint_three_seconds_into_a_400_appliance_deploy_exits_130_within_a_second_with_a_partial_json_report(
        vcsim, tmp_path, capsys):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    command = deploy_command(vcsim, secrets_dir, "--name-prefix", "stop", "--count", "400", "--concurrency", "1",
                             "--no-enroll", "--json")
    code, latency, out, err = _interrupt_after(command, environment(vcsim, tmp_path / "home"), 3.0)
    assert code == 130, err
    report = json.loads(out)
    assert [entry["name"] for entry in report] == [f"stop-{n:03d}" for n in range(1, 401)]
    assert {entry["status"] for entry in report} == {"interrupted"}  # all are created before any powers on
    made = [entry for entry in report if entry["vm"]]
    assert made and report[:len(made)] == made, "the clones made in 3 s, in order"
    assert {entry["error"]["step"] for entry in made} == {"power on"}
    rest = report[len(made):]
    assert all(entry["error"]["code"] == "interrupted" and entry["error"]["step"] == "create" for entry in rest)
    assert sum(entry["task"] is not None for entry in rest) <= 1, "the clone in flight, recorded by its task"
    time.sleep(1.5)  # a clone task that was in flight may still end
    created = _vm_names(vcsim, "stop-")
    assert len(made) <= len(created) <= len(made) + 1, "no new step after the signal: only the clone in flight"
    assert latency < 1.0, f"exit {latency:.2f} s after SIGINT"
    done = len(made)
    with capsys.disabled():
        print(f"\nSIGINT after 3 s of a 400-appliance deploy: exit 130 after {latency * 1000:.0f} ms, "
              f"{done} appliances cloned")
