"""Issue 28 in the lab: a deploy stopped by Ctrl-C or SIGTERM stops within a second with a partial
report; the same command again finishes the job; `firsttrust destroy` tears an appliance down."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from test_vsphere_deploy import FIRSTTRUST, deploy_command, environment
from vcsim_fixture import Guests, vcenter_session, vcsim  # noqa: F401 - the fixture

from firsttrust.requester.truststore import TrustStore


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
    assert report[:len(made)] == made, "the clones made in 3 s (few on a loaded machine), in order"
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


def _vm_name_count(server, prefix: str) -> dict[str, int]:
    vc = vcenter_session(server)
    try:
        counts: dict[str, int] = {}
        for item in vc._retrieve(vc.content.rootFolder, {"VirtualMachine": ["name"]}):
            for prop in item.propSet:
                if prop.val.startswith(prefix):
                    counts[prop.val] = counts.get(prop.val, 0) + 1
        return counts
    finally:
        vc.close()


def test_the_same_deploy_after_an_interrupt_ends_with_every_appliance_pinned_and_nothing_created_twice(
        vcsim, tmp_path, capsys):
    secrets_dir, home = tmp_path / "secrets", tmp_path / "home"
    secrets_dir.mkdir()
    env = environment(vcsim, home)
    names = [f"conv-{n:02d}" for n in range(1, 13)]
    command = deploy_command(vcsim, secrets_dir, "--name-prefix", "conv", "--count", "12", "--concurrency", "2",
                             "--ip-timeout", "120", "--json")
    with Guests(vcsim, "conv-", tmp_path / "guests") as guests:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in process.stderr:  # stopped in the middle: some powered on, others only cloned
            if "powered on" in line:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        first = json.loads(out)
        assert "interrupted" in {entry["status"] for entry in first}

        started = time.monotonic()
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        rerun = time.monotonic() - started
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert [entry["name"] for entry in report] == names
        assert {entry["status"] for entry in report} <= {"enrolled", "already-pinned"}
        assert {entry["action"] for entry in report} <= {"created", "resumed"} and "resumed" in {
            entry["action"] for entry in report}

        third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert third.returncode == 0, third.stderr
        assert {entry["action"] for entry in json.loads(third.stdout)} == {"unchanged"}
    assert not guests.errors, guests.errors
    assert _vm_name_count(vcsim, "conv-") == {name: 1 for name in names}, "nothing created twice"
    pins = {record.name: record for record in TrustStore(home).list()}
    assert sorted(pins) == names
    for name in names:
        document = json.loads((secrets_dir / f"{name}.json").read_text())
        assert pins[name].deployment_id == document["deployment_id"]

    destroy = [*FIRSTTRUST, "destroy", "conv-01", "conv-02", "--vcenter", vcsim.url, "--thumbprint",
               vcsim.thumbprint_sha1, "--secrets-dir", str(secrets_dir)]
    refused = subprocess.run(destroy, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    done = subprocess.run([*destroy, "--yes"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert set(_vm_name_count(vcsim, "conv-")) == set(names[2:])
    assert sorted(record.name for record in TrustStore(home).list()) == names[2:]
    assert not (secrets_dir / "conv-01.json").exists() and not (secrets_dir / "conv-02.json").exists()
    with capsys.disabled():
        print(f"\nre-run after SIGINT: {sum(e['action'] == 'resumed' for e in report)} resumed, "
              f"{sum(e['action'] == 'created' for e in report)} created, in {rerun:.1f} s; all 12 pinned")


def test_vcenter_thumbprint_says_trust_on_first_use_and_a_profile_from_the_environment_runs_check(vcsim, tmp_path):
    env = environment(vcsim, tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    read = subprocess.run([*FIRSTTRUST, "vcenter-thumbprint", vcsim.url], env=env, capture_output=True, text=True,
                          timeout=60)
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines()[0] == vcsim.thumbprint_sha1 and "trust on first use" in read.stderr

    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    profile = {**env, "FIRSTTRUST_VCENTER": vcsim.url, "FIRSTTRUST_VCENTER_THUMBPRINT": read.stdout.split()[0]}
    check = [*FIRSTTRUST, "deploy", "--template", "DC0_H0_VM0", "--name-prefix", "chk", "--count", "2",
             "--secrets-dir", str(secrets_dir), "--check", "--json"]
    result = subprocess.run(check, env=profile, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [(e["action"], e["status"]) for e in json.loads(result.stdout)] == [("created", "checked")] * 2
    assert list(secrets_dir.iterdir()) == [] and _vm_names(vcsim, "chk-") == []

    wrong = {**profile, "FIRSTTRUST_VCENTER_THUMBPRINT": "00" * 20}
    refused = subprocess.run(check, env=wrong, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "thumbprint" in refused.stderr
    (tmp_path / "config" / "firsttrust").mkdir(parents=True)
    (tmp_path / "config" / "firsttrust" / "config.toml").write_text(
        f'vcenter = "{vcsim.url}"\nthumbprint = "{vcsim.thumbprint_sha1}"\n')
    (tmp_path / "config" / "firsttrust" / "config.toml").chmod(0o600)
    from_file = subprocess.run(check, env=env, capture_output=True, text=True, timeout=120)
    assert from_file.returncode == 0, from_file.stderr
    cli_wins = subprocess.run([*check, "--thumbprint", "00" * 20], env=env, capture_output=True, text=True,
                              timeout=120)
    assert cli_wins.returncode == 1 and "thumbprint" in cli_wins.stderr
