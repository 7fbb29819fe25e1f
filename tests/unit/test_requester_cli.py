"""The `firsttrust` command: 0600 files from creation, one-line errors, no secret anywhere but its output."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from firsttrust.agent.sources.encodings import decode_properties
from firsttrust.agent.sources.ovfenv import parse_ovf_env
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import REQUESTER_CERT, SEC_A, SEC_B
from firsttrust.requester import cli
from firsttrust.requester.deployspec import FORMATS, deployment_properties, render, secrets_to_json

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask():
    """A umask that would leave files world-readable: modes must come from creation, not umask."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def secrets_file(tmp_path, secrets):
    path = tmp_path / "secrets.json"
    path.write_bytes(secrets_to_json(secrets))
    path.chmod(0o600)
    return path


@pytest.fixture
def cert_file(tmp_path, requester_identity):
    path = tmp_path / "requester.pem"
    path.write_bytes(requester_identity.cert_pem)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *hidden: str) -> None:
    assert err.startswith("firsttrust: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for value in hidden:
        assert value not in err


# --- secrets new -----------------------------------------------------------------------------------


def test_secrets_new_writes_a_0600_file_and_prints_only_its_path(capsys, tmp_path, loose_umask):
    out_path = tmp_path / "s.json"
    code, out, err = run(capsys, "secrets", "new", "--out", str(out_path))
    assert (code, out, err) == (0, f"{out_path}\n", "")
    assert mode(out_path) == 0o600
    document = json.loads(out_path.read_text())
    assert EnrollmentSecrets(document["sec_a"], document["sec_b"])  # valid, fresh secrets
    assert sorted(document) == ["sec_a", "sec_b"]


def test_secrets_new_refuses_to_overwrite(capsys, secrets_file, secrets):
    before = secrets_file.read_bytes()
    code, out, err = run(capsys, "secrets", "new", "--out", str(secrets_file))
    assert code == cli.EXIT_FAILED and out == ""
    assert_one_error_line(err, secrets.sec_a, secrets.sec_b)
    assert "--force" in err
    assert secrets_file.read_bytes() == before


def test_secrets_new_refuses_a_symlink_and_does_not_follow_it(capsys, tmp_path):
    target = tmp_path / "elsewhere"
    link = tmp_path / "s.json"
    link.symlink_to(target)
    code, _, err = run(capsys, "secrets", "new", "--out", str(link))
    assert code == cli.EXIT_FAILED and not target.exists()
    assert_one_error_line(err)


def test_secrets_new_force_replaces_with_a_0600_file(capsys, tmp_path, secrets, loose_umask):
    path = tmp_path / "s.json"
    path.write_bytes(secrets_to_json(secrets))
    path.chmod(0o644)
    code, out, err = run(capsys, "secrets", "new", "--out", str(path), "--force")
    assert (code, err) == (0, "")
    assert mode(path) == 0o600
    assert secrets.sec_a not in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary file left behind


def test_secrets_new_force_never_replaces_a_fifo_or_a_device_node(capsys, tmp_path):
    # As root, `--out /dev/full --force` put a 0600 file of secrets where the device node was.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, out, err = run(capsys, "secrets", "new", "--out", str(fifo), "--force")
    assert code == cli.EXIT_FAILED and out == ""
    assert "not a regular file" in err
    assert_one_error_line(err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["fifo"]


def test_secrets_new_into_a_missing_directory_fails(capsys, tmp_path):
    code, _, err = run(capsys, "secrets", "new", "--out", str(tmp_path / "no" / "s.json"))
    assert code == cli.EXIT_FAILED
    assert_one_error_line(err)


# --- deploy-spec ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec_format", list(FORMATS))
def test_deploy_spec_prints_each_format(capsys, secrets_file, cert_file, secrets, requester_identity, spec_format):
    code, out, err = run(capsys, "deploy-spec", "--secrets", str(secrets_file), "--format", spec_format,
                         "--requester-cert", str(cert_file), "--enroll-window", "2d")
    properties = deployment_properties(secrets, requester_cert=requester_identity.cert_pem, enroll_window="2d")
    assert (code, err) == (0, "")
    assert out.encode() == render(properties, spec_format)


def test_deploy_spec_out_file_is_0600_and_refuses_to_overwrite(capsys, tmp_path, secrets_file, secrets, loose_umask):
    out_path = tmp_path / "env.xml"
    argv = ["deploy-spec", "--secrets", str(secrets_file), "--format", "ovf-env", "--out", str(out_path)]
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (0, f"{out_path}\n", "")
    assert mode(out_path) == 0o600
    assert decode_properties(parse_ovf_env(out_path.read_bytes()).properties) == {
        SEC_A: secrets.sec_a, SEC_B: secrets.sec_b,
    }
    code, out, err = run(capsys, *argv)
    assert code == cli.EXIT_FAILED
    assert_one_error_line(err, secrets.sec_a, secrets.sec_b)
    assert run(capsys, *argv, "--force")[0] == 0


def test_deploy_spec_warns_about_a_readable_secrets_file_and_proceeds(capsys, secrets_file, secrets):
    secrets_file.chmod(0o644)
    code, out, err = run(capsys, "deploy-spec", "--secrets", str(secrets_file), "--format", "extraconfig")
    assert code == 0 and secrets.sec_a in out
    assert err.startswith("firsttrust: warning: ") and err.count("\n") == 1 and "0644" in err
    assert secrets.sec_a not in err


SHORT = "SHORT-s3cret"  # too short to be a secret: must not be echoed either


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "no-command", "no-action", "unknown-command", "missing-format", "unknown-format", "missing-secrets",
        "bad-json", "missing-field", "short-secret", "same-secrets", "missing-cert", "bad-cert", "bad-window",
        "huge-secrets-file",
    ],
)
def test_each_bad_input_exits_2_with_one_line_and_no_secret(capsys, tmp_path, secrets_file, secrets, case):
    good = ["--secrets", str(secrets_file), "--format", "ovf-env"]
    pair = {"sec_a": SHORT + "-0123456789", "sec_b": SHORT + "-0123456789"}
    argv = {
        "no-command": [],
        "no-action": ["secrets"],
        "unknown-command": ["enroll-everything"],
        "missing-format": ["deploy-spec", "--secrets", str(secrets_file)],
        "unknown-format": ["deploy-spec", "--secrets", str(secrets_file), "--format", "yaml"],
        "missing-secrets": ["deploy-spec", "--secrets", str(tmp_path / "absent.json"), "--format", "ovf-env"],
        "bad-json": ["deploy-spec", "--secrets", str(write(tmp_path / "b.json", b'{"sec_a": "' + SHORT.encode())),
                     "--format", "ovf-env"],
        "missing-field": ["deploy-spec", "--secrets",
                          str(write(tmp_path / "m.json", json.dumps({"sec_a": SHORT}).encode())), "--format", "ovf-env"],
        "short-secret": ["deploy-spec", "--secrets",
                         str(write(tmp_path / "s.json", json.dumps({"sec_a": SHORT, "sec_b": secrets.sec_b}).encode())),
                         "--format", "ovf-env"],
        "same-secrets": ["deploy-spec", "--secrets", str(write(tmp_path / "d.json", json.dumps(pair).encode())),
                         "--format", "ovf-env"],
        "missing-cert": ["deploy-spec", *good, "--requester-cert", str(tmp_path / "absent.pem")],
        # The secrets file is not a certificate: the error must not quote it.
        "bad-cert": ["deploy-spec", *good, "--requester-cert", str(secrets_file)],
        "bad-window": ["deploy-spec", *good, "--enroll-window", "forever"],
        "huge-secrets-file": ["deploy-spec", "--secrets",
                              str(write(tmp_path / "h.json", b" " * (cli.MAX_INPUT_BYTES + 1))), "--format", "ovf-env"],
    }[case]
    code, out, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE, err
    assert out == ""
    assert_one_error_line(err, secrets.sec_a, secrets.sec_b, SHORT)


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "deploy-spec", "--help")
    assert code == 0 and "--enroll-window" in out


def test_an_internal_error_prints_its_type_but_not_its_message(capsys, monkeypatch, secrets_file, secrets):
    def broken(*_args, **_kwargs):
        raise KeyError(secrets.sec_a)

    monkeypatch.setattr(cli, "deployment_properties", broken)
    code, out, err = run(capsys, "deploy-spec", "--secrets", str(secrets_file), "--format", "ovf-env")
    assert code == cli.EXIT_FAILED and out == ""
    assert_one_error_line(err, secrets.sec_a)
    assert "KeyError" in err


def test_exit_codes_follow_the_table():
    from firsttrust.errors import AuthenticationFailed, InvalidCertificate
    assert cli.exit_code_for(InvalidCertificate("x")) == cli.EXIT_USAGE
    assert cli.exit_code_for(cli.OutputError("x")) == cli.EXIT_FAILED
    assert cli.exit_code_for(AuthenticationFailed("x")) == cli.EXIT_FAILED


# --- as a process -------------------------------------------------------------------------------------


def test_the_command_as_a_process_keeps_secrets_out_of_argv(tmp_path, cert_file, requester_identity):
    def firsttrust(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "firsttrust.requester.cli", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
        calls.append(argv)
        return done

    calls: list[list[str]] = []
    secrets_path = tmp_path / "s.json"
    made = firsttrust("secrets", "new", "--out", str(secrets_path))
    assert (made.returncode, made.stdout, made.stderr) == (0, f"{secrets_path}\n", "")
    document = json.loads(secrets_path.read_text())

    spec = firsttrust("deploy-spec", "--secrets", str(secrets_path), "--format", "ovf-env",
                      "--requester-cert", str(cert_file))
    assert spec.returncode == 0 and spec.stderr == ""
    properties = decode_properties(parse_ovf_env(spec.stdout.encode()).properties)
    assert properties == {SEC_A: document["sec_a"], SEC_B: document["sec_b"],
                          REQUESTER_CERT: requester_identity.cert_pem.decode()}

    bad = firsttrust("deploy-spec", "--secrets", str(cert_file), "--format", "ovf-env")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("firsttrust: error: ") and "Traceback" not in bad.stderr

    for argv in calls:
        assert not any(document["sec_a"] in arg or document["sec_b"] in arg for arg in argv)


def test_the_console_script_is_installed_next_to_the_interpreter():
    script = Path(sys.executable).parent / "firsttrust"
    if not script.exists():
        pytest.skip("the firsttrust console script is not installed in this environment")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "deploy-spec" in done.stdout


@pytest.mark.parametrize("argv, said", [
    (["fleet", "join", "--anchor", "bogus", "--host", "h"], "a pin is"),
    (["fleet", "join", "--anchor", "sha256:" + "a" * 64, "--host", "bad!name"], "a host name is"),
    (["fleet", "create", "--host", "../x"], "a host name is"),
    (["fleet", "add-host", "h", "missing.pem"], "cannot read certificate"),
    (["fleet", "add-host", "bad name", "missing.pem"], "a host name is"),
])
def test_fleet_commands_refuse_bad_arguments_as_usage_before_any_store(argv, said, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FIRSTTRUST_STORE", "postgresql://u@127.0.0.1:1/db")  # nothing listens: never reached
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert said in err
    assert_one_error_line(err)
    assert not (tmp_path / "home" / "fleet.json").exists()


def test_pin_cert_names_the_certificate_file_it_cannot_use(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate\n")
    code, out, err = run(capsys, "pin-cert", "app-1", "--cert", str(garbage), "--address", "127.0.0.1")
    assert (code, out) == (cli.EXIT_USAGE, "")
    assert f"certificate {garbage}: not a valid X.509 certificate" in err
    assert_one_error_line(err)


def test_pin_cert_never_replaces_a_pin_to_another_key_without_replace(capsys, tmp_path, monkeypatch):
    """As ssh refuses a changed host key: a certificate handed over for a name pinned to another
    key is exit 3 and nothing pinned; the same certificate again is fine; --replace re-pins and says so."""
    from firsttrust.identity import create_identity
    from firsttrust.requester.truststore import TrustStore

    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    first, second = create_identity("appliance"), create_identity("appliance")
    (tmp_path / "first.pem").write_bytes(first.cert_pem)
    (tmp_path / "second.pem").write_bytes(second.cert_pem)
    pin = ["pin-cert", "app-1", "--address", "127.0.0.1"]
    assert run(capsys, *pin, "--cert", str(tmp_path / "first.pem"))[0] == cli.EXIT_OK
    assert run(capsys, *pin, "--cert", str(tmp_path / "first.pem"))[0] == cli.EXIT_OK
    code, out, err = run(capsys, *pin, "--cert", str(tmp_path / "second.pem"))
    assert (code, out) == (cli.EXIT_IDENTITY_CHANGED, "")
    # checked before anything is made: the message says where the old pin is (the store's own
    # compare-and-set, behind it, refuses a race without knowing that)
    assert f"pinned to {first.pin} at 127.0.0.1:8791" in err and second.pin in err and "--replace" in err
    assert_one_error_line(err)
    assert TrustStore(tmp_path / "home").get("app-1").pin == first.pin
    code, out, err = run(capsys, *pin, "--cert", str(tmp_path / "second.pem"), "--replace")
    assert code == cli.EXIT_OK and f"pinned app-1: {second.pin}" in out
    assert err == f"replaced app-1: 127.0.0.1 {first.pin}\n"
    assert TrustStore(tmp_path / "home").get("app-1").pin == second.pin


def test_batch_enroll_passes_replace_on_and_refuses_what_it_cannot_use(capsys, monkeypatch, tmp_path, secrets_file):
    """--replace and --api-address were silently ignored by a batch (it then failed with
    "...or pass --replace to re-pin it", --replace given); --workers by a single enroll."""
    targets = tmp_path / "targets.csv"
    targets.write_text(f"name,address,secrets\napp-01,10.0.0.5,{secrets_file}\n")
    seen = {}

    async def fake_enroll_many(targets, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(cli, "enroll_many", fake_enroll_many)
    run(capsys, "enroll", "--targets", str(targets), "--replace")
    assert seen.get("replace") is True
    code, _, err = run(capsys, "enroll", "--targets", str(targets), "--api-address", "10.0.0.6:8791")
    assert code == cli.EXIT_USAGE and "--api-address" in err
    code, _, err = run(capsys, "enroll", "10.0.0.5", "--secrets", str(secrets_file), "--name", "app", "--workers", "2")
    assert code == cli.EXIT_USAGE and "--workers" in err
