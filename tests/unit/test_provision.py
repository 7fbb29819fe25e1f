"""firsttrust-agent provision / status / authorize / show-identity, against files and the
emulated guestinfo channel. No real VMware; the real chpasswd on a throwaway account."""

import base64
import dataclasses
import json
import os
import pwd
import stat
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest

from firsttrust.agent.cli import main
from firsttrust.agent.config import load_config
from firsttrust.agent.provision import provision
from firsttrust.agent.sources.deploy import read_deploy_config
from firsttrust.agent.sources.guestinfo import GuestInfo
from firsttrust.agent.sources.ovfenv import serialize_ovf_env
from firsttrust import deployment as keys
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.srp6a import compute_verifier
from firsttrust.lab import vmware_emulator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def vm(tmp_path, monkeypatch):
    """An emulated VM: the emulator's vmtoolsd/vmware-rpctool first on PATH."""
    path = tmp_path / "vm.json"
    vmware_emulator.create_vm(path, {})
    monkeypatch.setenv(vmware_emulator.ENV_VAR, str(path))
    monkeypatch.setenv("PATH", vmware_emulator.guest_tools_path(os.environ['PATH']))
    return path


@pytest.fixture
def no_vm(tmp_path, monkeypatch):
    monkeypatch.setenv(vmware_emulator.ENV_VAR, str(tmp_path / "absent.json"))
    monkeypatch.setenv("PATH", vmware_emulator.guest_tools_path(os.environ['PATH']))


def ovf_file(tmp_path, properties, name="ovf-env.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(serialize_ovf_env(properties))
    return path


def secret_props(secrets, **extra):
    return {keys.SEC_A: secrets.sec_a, keys.SEC_B: secrets.sec_b, **extra}


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def all_bytes_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


# --- the command as a user types it ----------------------------------------------------------------


def test_provision_from_file_then_show_identity_pin(tmp_path, capsys, secrets, no_vm):
    env = ovf_file(tmp_path, secret_props(secrets, **{keys.ENROLL_WINDOW: "2h"}))
    state_dir = tmp_path / "state"
    code, out, err = run_cli(capsys, "provision", "--source", f"file:{env}", "--state-dir", str(state_dir),
                             "--no-set-password")
    assert code == 0, err
    assert out.startswith("armed: sha256:")
    code, pin, _ = run_cli(capsys, "show-identity", "--state-dir", str(state_dir), "--format", "pin")
    assert code == 0 and pin.strip() == out.split()[1]
    # files and modes
    assert mode(state_dir) == 0o700
    assert mode(state_dir / "identity.key") == 0o600
    assert mode(state_dir / "sec-b") == 0o600 and (state_dir / "sec-b").read_text() == secrets.sec_b
    assert mode(state_dir / "state.json") == 0o600
    assert mode(state_dir / "appliance.crt") == 0o644
    state = json.loads((state_dir / "state.json").read_text())
    assert state["phase"] == "provisioned" and state["enroll_window"] == 7200
    assert compute_verifier(secrets.sec_a.encode(), bytes.fromhex(state["srp_salt"])).hex() == state["srp_verifier"]
    # SEC-A is nowhere on disk, SEC-B only in its file; nothing printed either
    assert secrets.sec_a.encode() not in all_bytes_under(tmp_path / "state")
    assert all_bytes_under(state_dir).count(secrets.sec_b.encode()) == 1
    for text in (out, err, pin):
        assert secrets.sec_a not in text and secrets.sec_b not in text


def test_status_json_reports_the_scrub_as_impossible_for_a_file(tmp_path, capsys, secrets, no_vm):
    env = ovf_file(tmp_path, secret_props(secrets))
    run_cli(capsys, "provision", "--source", f"file:{env}", "--state-dir", str(tmp_path / "s"), "--no-set-password")
    code, out, _ = run_cli(capsys, "status", "--json", "--state-dir", str(tmp_path / "s"))
    status = json.loads(out)
    assert code == 0 and status["phase"] == "provisioned" and status["window_open"] is True
    assert status["scrub"]["result"] == "impossible" and status["failures_left"] == 10
    assert status["password"] == "skipped"


def test_status_before_provisioning(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "status", "--state-dir", str(tmp_path / "none"))
    assert code == 3 and "unprovisioned" in out
    code, _, err = run_cli(capsys, "show-identity", "--state-dir", str(tmp_path / "none"))
    assert code == 3 and err.count("\n") == 1


# --- a damaged state directory: a typed one-line error, nothing read whole ----------------------------

HUGE = 300 * 1024 * 1024  # sparse: costs no disk, but read whole it would be 300 MB of memory


def provisioned(tmp_path, capsys, secrets) -> Path:
    state_dir = tmp_path / "s"
    env = ovf_file(tmp_path, secret_props(secrets))
    code, _, err = run_cli(capsys, "provision", "--source", f"file:{env}", "--state-dir", str(state_dir),
                           "--no-set-password")
    assert code == 0, err
    return state_dir


@pytest.mark.parametrize("name", ["identity.key", "identity.crt"])
def test_a_huge_identity_file_is_refused_by_name_not_read_whole(tmp_path, capsys, secrets, no_vm, name):
    from firsttrust.agent.api import AuthorizedContexts
    from firsttrust.agent.state import MAX_IDENTITY_FILE, StateDir, StateError

    state_dir = provisioned(tmp_path, capsys, secrets)
    os.truncate(state_dir / name, HUGE)
    code, out, err = run_cli(capsys, "show-identity", "--state-dir", str(state_dir))
    assert code == 1 and out == ""
    assert err == f"firsttrust-agent: error: {state_dir / name} is larger than {MAX_IDENTITY_FILE} bytes\n"
    store = StateDir(state_dir)
    with pytest.raises(StateError, match="larger than"):
        store.load_identity()
    with pytest.raises(StateError, match="larger than"):  # the API's TLS context (serve)
        AuthorizedContexts(store)
    if name == "identity.crt":  # enrollment's identity: not usable, said in the log, never read whole
        from firsttrust.agent.server import OwnIdentity

        assert OwnIdentity(store).load() is None
    if name == "identity.key":
        with pytest.raises(StateError, match="larger than"):
            store.load_key_pem()


def test_a_huge_leftover_rotation_certificate_is_discarded_not_read_whole(tmp_path, capsys, secrets, no_vm):
    from firsttrust.agent.api import NEXT_CERT, recover_rotation
    from firsttrust.agent.state import StateDir

    state_dir = provisioned(tmp_path, capsys, secrets)
    # identity.next.crt without identity.next.key: the matching certificate, then 300 MB of zeros
    (state_dir / NEXT_CERT).write_bytes((state_dir / "identity.crt").read_bytes())
    os.truncate(state_dir / NEXT_CERT, HUGE)
    assert recover_rotation(StateDir(state_dir)) == "discarded"
    assert not (state_dir / NEXT_CERT).exists()


def test_a_huge_public_certificate_is_replaced_not_read_whole(tmp_path, capsys, secrets, no_vm, monkeypatch):
    import firsttrust.agent.provision as provision_module

    state_dir = provisioned(tmp_path, capsys, secrets)
    public = state_dir / "appliance.crt"
    os.truncate(public, HUGE)
    config, identity = load_config(None, state_dir), provision_module.StateDir(state_dir).load_identity()
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read whole"))
    provision_module._write_public_certificate(config, identity)
    monkeypatch.undo()
    assert public.read_bytes() == (state_dir / "identity.crt").read_bytes()


def test_a_corrupt_identity_key_without_its_certificate_is_a_typed_error(tmp_path, capsys, secrets, no_vm):
    state_dir = provisioned(tmp_path, capsys, secrets)
    (state_dir / "identity.crt").unlink()
    (state_dir / "identity.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    env = ovf_file(tmp_path, secret_props(secrets), "again.xml")
    code, _, err = run_cli(capsys, "provision", "--source", f"file:{env}", "--state-dir", str(state_dir),
                           "--no-set-password")
    assert code == 1 and err.count("\n") == 1 and "identity.key is corrupt" in err and "internal" not in err


WRONG_TYPES = [
    {"phase": 5},
    {"phase": "nonsense"},
    {"phase": None},
    {"failures": "x"},
    {"failures": True},
    {"failures": 1.5},
    {"window_expires_at": "soon"},
    {"window_expires_at": False},
    {"enroll_window": 3600.5},
    {"srp_verifier": 12},
    {"source": ["file:x"]},
    {"scrub": "done"},
    {"scrub": {}},
    {"published": None},
    {"enrollment": ["pin"]},
    {"phase": "enrolled", "enrollment": {"name": "r"}},
    {"repaired": {"at": 1.0}},
    {"repaired": {"at": 1.0, "actions": [1]}},
    {"version": "1"},
    {"version": True},
    {"window_expires_at": float("nan")},  # NaN: no JSON, yet Python's json reads it; the window never closed
    {"provisioned_at": float("inf")},
    {"srp_salt": "zz"},  # bytes.fromhex in provision and at hello: was "internal error (ValueError)"
    {"srp_verifier": "abc"},
    {"sec_b_sha256": "ABCD"},
]


@pytest.mark.parametrize("change", WRONG_TYPES, ids=[json.dumps(c) for c in WRONG_TYPES])
def test_a_state_json_with_wrong_types_is_refused_as_corrupt(tmp_path, capsys, secrets, no_vm, change):
    from firsttrust.agent.state import StateDir, StateError

    state_dir = provisioned(tmp_path, capsys, secrets)
    state = json.loads((state_dir / "state.json").read_text())
    verifier = state["srp_verifier"]
    state.update(change)
    (state_dir / "state.json").write_text(json.dumps(state))
    with pytest.raises(StateError, match=r"state\.json is corrupt \(.*\); refusing to guess"):
        StateDir(state_dir).load()
    for command in ("status", "show-identity"):  # show-identity reads no state.json: only status refuses
        code, out, err = run_cli(capsys, command, "--state-dir", str(state_dir))
        if command == "status":
            assert code == 1 and out == "", err
            assert err.startswith("firsttrust-agent: error: ") and err.count("\n") == 1 and "corrupt" in err
            assert "internal error" not in err and verifier not in err
        else:
            assert code == 0, err


def test_a_state_json_with_the_right_types_still_loads(tmp_path, capsys, secrets, no_vm):
    from firsttrust.agent.state import StateDir

    state_dir = provisioned(tmp_path, capsys, secrets)
    state = json.loads((state_dir / "state.json").read_text())
    state.update(provisioned_at=1700000000, window_expires_at=1700003600, enrolled_at=None, repaired=None,
                 scrub={"result": "done", "detail": "guestinfo"})
    (state_dir / "state.json").write_text(json.dumps(state))
    loaded = StateDir(state_dir).load()
    assert loaded.provisioned_at == 1700000000 and loaded.scrub["result"] == "done"
    code, _, err = run_cli(capsys, "status", "--state-dir", str(state_dir))
    assert code == 0, err


# --- idempotence and re-arming --------------------------------------------------------------------


def test_second_run_keeps_identity_and_secrets(tmp_path, secrets, no_vm):
    config = load_config(None, tmp_path / "s")
    deploy = read_deploy_config(f"file:{ovf_file(tmp_path, secret_props(secrets))}")
    first = provision(config, deploy, set_account_password=False)
    second = provision(config, deploy, set_account_password=False)
    assert (first.action, second.action) == ("armed", "unchanged")
    assert first.pin == second.pin and first.state.srp_verifier == second.state.srp_verifier


def test_new_secrets_rearm_until_enrolled(tmp_path, no_vm):
    config = load_config(None, tmp_path / "s")
    one, two, three = (EnrollmentSecrets.generate() for _ in range(3))
    first = provision(config, read_deploy_config(f"file:{ovf_file(tmp_path, secret_props(one), 'a.xml')}"),
                      set_account_password=False)
    second = provision(config, read_deploy_config(f"file:{ovf_file(tmp_path, secret_props(two), 'b.xml')}"),
                       set_account_password=False)
    assert second.action == "re-armed" and second.pin == first.pin
    assert second.state.srp_verifier != first.state.srp_verifier
    assert (tmp_path / "s" / "sec-b").read_text() == two.sec_b
    # once enrolled, injected secrets are ignored
    state_file = tmp_path / "s" / "state.json"
    state = json.loads(state_file.read_text())
    state.update(phase="enrolled", srp_salt=None, srp_verifier=None)
    state_file.write_text(json.dumps(state))
    third = provision(config, read_deploy_config(f"file:{ovf_file(tmp_path, secret_props(three), 'c.xml')}"),
                      set_account_password=False)
    assert third.action == "ignored-enrolled" and third.state.phase == "enrolled"
    assert (tmp_path / "s" / "sec-b").read_text() == two.sec_b


def test_nothing_injected_and_never_provisioned(tmp_path, capsys, no_vm):
    empty = tmp_path / "empty.xml"
    empty.write_bytes(serialize_ovf_env({"other.key": "x"}))
    code, _, err = run_cli(capsys, "provision", "--source", f"file:{empty}", "--state-dir", str(tmp_path / "s"))
    assert code == 1 and "no firsttrust properties" in err and err.count("\n") == 1
    assert not (tmp_path / "s" / "state.json").exists()


# --- the VMware channel (emulated): publish and scrub ----------------------------------------------------------


def test_guestinfo_keys_are_read_scrubbed_and_the_certificate_published(tmp_path, capsys, secrets, vm,
                                                                        requester_identity):
    vmware_emulator.create_vm(vm, {
        "guestinfo.firsttrust.sec-a": secrets.sec_a,
        "guestinfo.firsttrust.sec-b": secrets.sec_b,
        "guestinfo.firsttrust.requester-cert": base64.b64encode(requester_identity.cert_pem).decode(),
        "guestinfo.firsttrust.requester-cert.encoding": "base64",
    })
    code, out, err = run_cli(capsys, "provision", "--state-dir", str(tmp_path / "s"), "--no-set-password")
    assert code == 0, err
    data = vmware_emulator.read_vm(vm)
    assert all(v == "" for k, v in data["guestinfo"].items() if k.startswith("guestinfo.firsttrust.s"))
    published = base64.b64decode(data["guestinfo"][keys.APPLIANCE_CERT_GUESTINFO])
    assert published == (tmp_path / "s" / "identity.crt").read_bytes()
    status = json.loads(run_cli(capsys, "status", "--json", "--state-dir", str(tmp_path / "s"))[1])
    assert status["scrub"]["result"] == "done" and status["published"]["result"] == "done"
    assert status["authorized_keys"] == 1  # the injected-certificate mode
    # no secret ever reached a tool's argv
    argv = json.dumps(data["argv_log"])
    assert secrets.sec_a not in argv and secrets.sec_b not in argv
    # a reboot: guestinfo now blank, state kept, nothing re-provisioned
    code, out, _ = run_cli(capsys, "provision", "--state-dir", str(tmp_path / "s"), "--no-set-password")
    assert code == 0 and out.startswith("unchanged")


def test_ovfenv_in_guestinfo_is_rewritten_without_our_properties(tmp_path, capsys, secrets, vm):
    document = serialize_ovf_env(secret_props(secrets, **{"vendor.hostname": "app-01"})).decode()
    vmware_emulator.create_vm(vm, {"guestinfo.ovfEnv": document})
    code, out, err = run_cli(capsys, "provision", "--state-dir", str(tmp_path / "s"), "--no-set-password")
    assert code == 0, err
    after = vmware_emulator.read_vm(vm)["guestinfo"]["guestinfo.ovfEnv"]
    assert secrets.sec_a not in after and secrets.sec_b not in after
    assert 'oe:key="vendor.hostname"' in after
    assert json.loads(run_cli(capsys, "status", "--json", "--state-dir", str(tmp_path / "s"))[1])["scrub"][
        "result"] == "done"


def test_scrub_failure_is_recorded_not_ignored(tmp_path, capsys, secrets, vm):
    vmware_emulator.create_vm(vm, {"guestinfo.firsttrust.sec-a": secrets.sec_a,
                                   "guestinfo.firsttrust.sec-b": secrets.sec_b})
    config = load_config(None, tmp_path / "s")
    deploy = read_deploy_config("vmware", guestinfo=GuestInfo(timeout=2, attempts=1))
    vmware_emulator.set_mode(vm, "permission-denied")
    report = provision(config, deploy, guestinfo=GuestInfo(timeout=2, attempts=1, backoff=0),
                       set_account_password=False)
    assert report.state.scrub["result"] == "failed"
    assert secrets.sec_a not in report.state.scrub["detail"]
    assert json.loads((tmp_path / "s" / "state.json").read_text())["scrub"]["result"] == "failed"
    assert "scrub-failed" in capsys.readouterr().err


def test_hanging_vmtoolsd_is_cut_off(tmp_path, secrets, vm):
    vmware_emulator.create_vm(vm, {"guestinfo.firsttrust.sec-a": secrets.sec_a})
    vmware_emulator.set_mode(vm, "hang")
    from firsttrust.agent.errors import GuestInfoError
    with pytest.raises(GuestInfoError) as info:
        read_deploy_config("vmware", guestinfo=GuestInfo(timeout=0.5, attempts=2, backoff=0.05))
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "s").exists()


# --- bad input: typed one-line error, exit 2, state untouched --------------------------------------------------

BAD_DOCUMENTS = {
    "malformed": b"<Environment><unclosed>",
    "xxe": (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1">&x;</Environment>'),
    "bomb": (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
             b'<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1">&lol2;</Environment>'),
    "oversized": b"<Environment>" + b" " * (1024 * 1024 + 10) + b"</Environment>",
    "wrong-namespace": serialize_ovf_env({"firsttrust.sec-a": "x" * 30}).replace(
        b"http://schemas.dmtf.org/ovf/environment/1", b"http://example.com/not-ovf"),
    "non-utf8": serialize_ovf_env({"vendor.x": "caf\u00e9"}).replace("caf\u00e9".encode(), b"caf\xe9"),
}


def bad_property_documents(secrets, cert_pem):
    s = secret_props(secrets)
    return {
        "duplicate-keys": serialize_ovf_env(s).replace(
            b"</PropertySection>", b'<Property oe:key="firsttrust.sec-a" oe:value="zz"/></PropertySection>'),
        "unknown-encoding": serialize_ovf_env({**s, "firsttrust.sec-b.encoding": "rot13"}),
        "bad-base64": serialize_ovf_env({**s, "firsttrust.sec-b.encoding": "base64"}),
        "bad-gzip": serialize_ovf_env({**s, keys.SEC_B: base64.b64encode(b"not gzip").decode(),
                                       "firsttrust.sec-b.encoding": "gzip+base64"}),
        "sec-a-without-sec-b": serialize_ovf_env({keys.SEC_A: secrets.sec_a}),
        "invalid-cert": serialize_ovf_env({**s, keys.REQUESTER_CERT: "-----BEGIN CERTIFICATE-----\nAAAA"}),
        "weak-secret": serialize_ovf_env({keys.SEC_A: "short", keys.SEC_B: secrets.sec_b}),
        "bad-window": serialize_ovf_env({**s, keys.ENROLL_WINDOW: "forever"}),
        "unknown-key": serialize_ovf_env({**s, "firsttrust.sec_c": "x"}),
    }


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS) + ["duplicate-keys", "unknown-encoding", "bad-base64",
                                                          "bad-gzip", "sec-a-without-sec-b", "invalid-cert",
                                                          "weak-secret", "bad-window", "unknown-key"])
def test_bad_input_is_a_one_line_error_and_leaves_state_untouched(tmp_path, capsys, secrets, requester_identity,
                                                                  case, no_vm):
    state_dir = tmp_path / "s"
    good = ovf_file(tmp_path, secret_props(secrets), "good.xml")
    assert run_cli(capsys, "provision", "--source", f"file:{good}", "--state-dir", str(state_dir),
                   "--no-set-password")[0] == 0
    before = {p.name: p.read_bytes() for p in state_dir.iterdir()}
    documents = {**BAD_DOCUMENTS, **bad_property_documents(EnrollmentSecrets.generate(), requester_identity.cert_pem)}
    bad = tmp_path / "bad.xml"
    bad.write_bytes(documents[case])
    code, out, err = run_cli(capsys, "provision", "--source", f"file:{bad}", "--state-dir", str(state_dir),
                             "--no-set-password")
    assert code == 2, (case, err)
    assert err.startswith("firsttrust-agent: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "root:" not in err
    assert {p.name: p.read_bytes() for p in state_dir.iterdir()} == before


def test_bad_config_file(tmp_path, capsys):
    config = tmp_path / "agent.toml"
    for text in ("account = 'Root Account'", "max_failures = 11", "nonsense = 1", "state_dir = 'relative'",
                 "[[[", "enroll_window = 'soon'", 'state_dir = "/tmp/s\\u0000x"',
                 'public_certificate = "/tmp/\\u001b[2J"', 'ssh_host_keys = "/\\u0000"'):
        config.write_text(text)
        code, _, err = run_cli(capsys, "status", "--config", str(config))
        assert code == 2 and err.count("\n") == 1, (text, err)


def test_bad_cli_arguments(capsys):
    for argv in ([], ["provision", "--bogus"], ["show-identity", "--format", "der"], ["launch"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.startswith("firsttrust-agent: error: ") and err.count("\n") == 1


# --- the guest-command mode: authorize through guest operations -----------------------------------------------------------------


def test_authorize_from_stdin_and_file(tmp_path, requester_identity, stranger_identity):
    state_dir = tmp_path / "s"
    exe = [sys.executable, "-m", "firsttrust.agent.cli"]
    out = subprocess.run(exe + ["authorize", "--cert", "-", "--state-dir", str(state_dir)],
                         input=requester_identity.cert_pem, capture_output=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and requester_identity.pin.encode() in out.stdout
    cert_file = tmp_path / "stranger.der"
    cert_file.write_bytes(stranger_identity.cert_der)
    assert main(["authorize", "--cert", str(cert_file), "--state-dir", str(state_dir)]) == 0
    assert main(["authorize", "--cert", str(cert_file), "--state-dir", str(state_dir)]) == 0  # idempotent
    entries = json.loads((state_dir / "authorized.json").read_text())["keys"]
    assert [e["pin"] for e in entries] == [requester_identity.pin, stranger_identity.pin]
    assert mode(state_dir / "authorized.json") == 0o600
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    assert main(["authorize", "--cert", str(garbage), "--state-dir", str(state_dir)]) == 2


# --- the real chpasswd ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create an account")
@pytest.mark.parametrize("colon", [False, True], ids=["generated", "with-a-colon"])
def test_real_chpasswd_sets_a_hash_that_verifies_sec_a(tmp_path, capsys, secrets, no_vm, colon):
    """A ':' is printable ASCII, so a SEC-A may hold one; chpasswd splits its line at the first
    ':' only, so the password is the rest of the line, colons and all."""
    if colon:
        secrets = dataclasses.replace(secrets, sec_a=secrets.sec_a[:8] + ":" + secrets.sec_a[9:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    account = "ft" + uuid.uuid4().hex[:10]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", account], check=True, timeout=60)
    try:
        config = tmp_path / "agent.toml"
        config.write_text(f'account = "{account}"\n')
        env = ovf_file(tmp_path, secret_props(secrets))
        code, out, err = run_cli(capsys, "provision", "--config", str(config), "--source", f"file:{env}",
                                 "--state-dir", str(tmp_path / "s"))
        assert code == 0, err
        shadow = {line.split(":")[0]: line.split(":")[1] for line in Path("/etc/shadow").read_text().splitlines()}
        stored = shadow[account]
        assert stored.startswith("$") and crypt.crypt(secrets.sec_a, stored) == stored
        assert crypt.crypt(secrets.sec_b, stored) != stored
        assert json.loads((tmp_path / "s" / "state.json").read_text())["password"] == "set"
    finally:
        subprocess.run(["userdel", account], check=False, timeout=60)
    assert account not in pwd.getpwall().__repr__()


def test_missing_account_fails_before_anything_is_armed(tmp_path, capsys, secrets, no_vm):
    config = tmp_path / "agent.toml"
    config.write_text('account = "nosuchuser-ft"\n')
    env = ovf_file(tmp_path, secret_props(secrets))
    code, _, err = run_cli(capsys, "provision", "--config", str(config), "--source", f"file:{env}",
                           "--state-dir", str(tmp_path / "s"))
    assert code == 1 and "does not exist" in err and secrets.sec_a not in err
    assert not (tmp_path / "s" / "state.json").exists() and not (tmp_path / "s" / "sec-b").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_a_state_directory_another_user_owns_is_refused_and_nothing_is_written_there(tmp_path, capsys, secrets,
                                                                                     no_vm):
    """Its owner could have planted an identity.key or an authorized.json, and could swap them
    after the agent made the directory 0700 (it stays theirs)."""
    nobody = pwd.getpwnam("nobody").pw_uid
    state_dir = tmp_path / "theirs"
    state_dir.mkdir()
    os.chmod(state_dir, 0o777)
    os.chown(state_dir, nobody, -1)
    env = ovf_file(tmp_path, secret_props(secrets))
    code, out, err = run_cli(capsys, "provision", "--source", f"file:{env}", "--state-dir", str(state_dir),
                             "--no-set-password")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"belongs to uid {nobody}" in err and str(state_dir) in err
    assert list(state_dir.iterdir()) == [] and stat.S_IMODE(state_dir.stat().st_mode) == 0o777  # not even chmodded


def test_the_guest_command_way_ends_enrolled_via_guest_command_and_an_armed_appliance_stays_armed(
        tmp_path, capsys, secrets, requester_identity, no_vm):
    cert = tmp_path / "requester.pem"
    cert.write_bytes(requester_identity.cert_pem)
    guest_only = ovf_file(tmp_path, {keys.GUEST_PASSWORD: EnrollmentSecrets.generate().sec_a}, name="guest.xml")
    waiting = tmp_path / "guest"
    code, _, err = run_cli(capsys, "provision", "--source", f"file:{guest_only}", "--state-dir", str(waiting),
                           "--no-set-password")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "status", "--json", "--state-dir", str(waiting))
    assert code == 0 and json.loads(out)["phase"] == "unprovisioned"
    for _ in range(2):  # the same command again (a run cut short after authorized.json) changes nothing more
        code, _, err = run_cli(capsys, "authorize", "--cert", str(cert), "--state-dir", str(waiting))
        assert code == 0, err
        status = json.loads(run_cli(capsys, "status", "--json", "--state-dir", str(waiting))[1])
        assert (status["phase"], status["enrolled_via"], status["authorized_keys"]) == ("enrolled", "guest-command", 1)
    armed = provisioned(tmp_path, capsys, secrets)
    code, _, err = run_cli(capsys, "authorize", "--cert", str(cert), "--state-dir", str(armed))
    assert code == 0, err
    status = json.loads(run_cli(capsys, "status", "--json", "--state-dir", str(armed))[1])
    assert (status["phase"], status["enrolled_via"], status["window_open"]) == ("provisioned", None, True)


def _lone(vm, key, value):
    data = vmware_emulator.read_vm(vm)["guestinfo"]
    data.update({"guestinfo.firsttrust.sec-a": "", "guestinfo.firsttrust.sec-b": "", key: value})
    vmware_emulator.create_vm(vm, data)


@pytest.mark.parametrize("left", ["sec-a", "sec-b"])
def test_a_scrub_cut_off_between_its_two_keys_is_finished_by_the_next_run_not_refused_for_ever(
        tmp_path, capsys, secrets, vm, left):
    """guestinfo's scrub blanks SEC-A and SEC-B in two writes: a kill, a timeout or a refused
    info-set between them leaves one. If it is this appliance's own secret, the next run
    finishes the scrub; before, every later boot refused the half pair and the ports stayed shut."""
    vmware_emulator.create_vm(vm, {"guestinfo.firsttrust.sec-a": secrets.sec_a,
                                   "guestinfo.firsttrust.sec-b": secrets.sec_b})
    state_dir = ["--state-dir", str(tmp_path / "s"), "--no-set-password"]
    assert run_cli(capsys, "provision", *state_dir)[0] == 0
    before = (tmp_path / "s" / "state.json").read_bytes()
    _lone(vm, f"guestinfo.firsttrust.{left}", secrets.sec_a if left == "sec-a" else secrets.sec_b)
    code, out, err = run_cli(capsys, "provision", *state_dir)
    assert code == 0 and out.startswith("unchanged") and "scrub done" in out, err
    assert vmware_emulator.read_vm(vm)["guestinfo"][f"guestinfo.firsttrust.{left}"] == ""
    after = json.loads((tmp_path / "s" / "state.json").read_text())
    assert {k: v for k, v in after.items() if k not in ("scrub", "published")} == {
        k: v for k, v in json.loads(before).items() if k not in ("scrub", "published")}


@pytest.mark.parametrize("history", ["never provisioned", "armed with other secrets"])
def test_a_lone_secret_that_is_not_this_appliances_own_is_still_refused(tmp_path, capsys, secrets, vm, history):
    other = EnrollmentSecrets.generate()
    state_dir = ["--state-dir", str(tmp_path / "s"), "--no-set-password"]
    if history != "never provisioned":
        vmware_emulator.create_vm(vm, {"guestinfo.firsttrust.sec-a": other.sec_a,
                                       "guestinfo.firsttrust.sec-b": other.sec_b})
        assert run_cli(capsys, "provision", *state_dir)[0] == 0
    before = all_bytes_under(tmp_path / "s") if (tmp_path / "s").exists() else b""
    _lone(vm, "guestinfo.firsttrust.sec-b", secrets.sec_b)
    code, out, err = run_cli(capsys, "provision", *state_dir)
    assert (code, out) == (2, "") and "sec-b is set but firsttrust.sec-a is missing" in err
    assert secrets.sec_b not in err and err.count("\n") == 1
    assert vmware_emulator.read_vm(vm)["guestinfo"]["guestinfo.firsttrust.sec-b"] == secrets.sec_b
    assert (all_bytes_under(tmp_path / "s") if (tmp_path / "s").exists() else b"") == before


def test_an_enrolled_appliance_scrubs_a_lone_secret_it_ignores_anyway(tmp_path, capsys, secrets, vm):
    vmware_emulator.create_vm(vm, {"guestinfo.firsttrust.sec-a": secrets.sec_a,
                                   "guestinfo.firsttrust.sec-b": secrets.sec_b})
    state_dir = ["--state-dir", str(tmp_path / "s"), "--no-set-password"]
    assert run_cli(capsys, "provision", *state_dir)[0] == 0
    state = json.loads((tmp_path / "s" / "state.json").read_text())
    state.update(phase="enrolled", enrolled_at=1.0, enrolled_via="srp")
    (tmp_path / "s" / "state.json").write_text(json.dumps(state))
    _lone(vm, "guestinfo.firsttrust.sec-a", EnrollmentSecrets.generate().sec_a)
    code, out, err = run_cli(capsys, "provision", *state_dir)
    assert code == 0 and "scrub done" in out, err
    assert vmware_emulator.read_vm(vm)["guestinfo"]["guestinfo.firsttrust.sec-a"] == ""
    assert json.loads((tmp_path / "s" / "state.json").read_text())["phase"] == "enrolled"


@pytest.mark.parametrize("enrolled_via", ["srp", "injected-certificate"])
def test_an_enrolled_appliance_never_authorizes_a_certificate_planted_in_guestinfo_later(
        tmp_path, capsys, secrets, vm, requester_identity, stranger_identity, enrolled_via):
    """Without the VMX hardening any guest user can info-set guestinfo.firsttrust.*, and the value
    survives a guest reboot: once enrolled, an injected certificate is ignored like injected secrets."""
    state_dir = ["--state-dir", str(tmp_path / "s"), "--no-set-password"]
    first = ({"guestinfo.firsttrust.requester-cert": base64.b64encode(requester_identity.cert_pem).decode(),
              "guestinfo.firsttrust.requester-cert.encoding": "base64"} if enrolled_via == "injected-certificate"
             else {"guestinfo.firsttrust.sec-a": secrets.sec_a, "guestinfo.firsttrust.sec-b": secrets.sec_b})
    vmware_emulator.create_vm(vm, first)
    assert run_cli(capsys, "provision", *state_dir)[0] == 0
    if enrolled_via == "srp":
        state = json.loads((tmp_path / "s" / "state.json").read_text())
        state.update(phase="enrolled", enrolled_at=1.0, enrolled_via="srp")
        (tmp_path / "s" / "state.json").write_text(json.dumps(state))
    authorized = (tmp_path / "s" / "authorized.json").read_bytes() if (tmp_path / "s" / "authorized.json").exists() \
        else None
    planted = {"guestinfo.firsttrust.requester-cert": base64.b64encode(stranger_identity.cert_pem).decode(),
               "guestinfo.firsttrust.requester-cert.encoding": "base64"}
    vmware_emulator.create_vm(vm, {**vmware_emulator.read_vm(vm)["guestinfo"], **planted})
    code, out, err = run_cli(capsys, "provision", *state_dir)
    assert code == 0 and out.startswith("ignored-enrolled"), err
    after = (tmp_path / "s" / "authorized.json").read_bytes() if (tmp_path / "s" / "authorized.json").exists() \
        else None
    assert after == authorized and "key-authorized" not in err
    assert vmware_emulator.read_vm(vm)["guestinfo"]["guestinfo.firsttrust.requester-cert"] == ""  # scrubbed


@pytest.mark.parametrize("keys", [["x", 1], [{"pin": 5, "certificate": "c"}], [{"name": "no pin"}]])
def test_an_authorized_file_with_entries_of_the_wrong_shape_is_corrupt_named_not_an_internal_error(
        tmp_path, capsys, requester_identity, keys):
    state_dir = tmp_path / "s"
    state_dir.mkdir(mode=0o700)
    (state_dir / "authorized.json").write_text(json.dumps({"keys": keys}))
    (tmp_path / "r.pem").write_bytes(requester_identity.cert_pem)
    code, out, err = run_cli(capsys, "authorize", "--state-dir", str(state_dir), "--cert", str(tmp_path / "r.pem"))
    assert (code, out) == (1, "") and f"{state_dir / 'authorized.json'} is corrupt" in err and err.count("\n") == 1


def _key_pem(kind: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP384R1())
    encryption = (serialization.BestAvailableEncryption(b"pw") if kind == "encrypted"
                  else serialization.NoEncryption())
    if kind == "encrypted":
        key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@pytest.mark.parametrize("kind", ["rsa", "p384", "encrypted"])
@pytest.mark.parametrize("command", ["provision", "status", "show-identity"])
def test_an_identity_key_of_the_wrong_kind_is_refused_as_corrupt_never_an_internal_error(
        tmp_path, capsys, secrets, no_vm, kind, command):
    """An RSA or encrypted key was an internal error (AssertionError, TypeError); a P-384 key got
    a P-384 certificate the agent's own checks refuse."""
    state_dir = provisioned(tmp_path, capsys, secrets)
    (state_dir / "identity.key").write_bytes(_key_pem(kind))
    before = all_bytes_under(state_dir)
    env = ovf_file(tmp_path, secret_props(secrets), "again.xml")
    argv = {"provision": ["provision", "--source", f"file:{env}", "--no-set-password"],
            "status": ["status"], "show-identity": ["show-identity"]}[command]
    code, _, err = run_cli(capsys, *argv, "--state-dir", str(state_dir))
    assert code == 1 and err.count("\n") == 1 and "is corrupt" in err and "internal" not in err, err
    assert all_bytes_under(state_dir) == before
    if command == "provision":  # and with the certificate gone too (a crash's shape): the key is still refused
        (state_dir / "identity.crt").unlink()
        code, _, err = run_cli(capsys, *argv, "--state-dir", str(state_dir))
        assert code == 1 and "identity.key is corrupt" in err and not (state_dir / "identity.crt").exists()


def test_a_provisioned_appliance_whose_key_is_gone_is_refused_never_given_a_new_identity(
        tmp_path, capsys, secrets, no_vm):
    state_dir = provisioned(tmp_path, capsys, secrets)
    (state_dir / "identity.key").unlink()
    before = all_bytes_under(state_dir)
    env = ovf_file(tmp_path, secret_props(secrets), "again.xml")
    code, out, err = run_cli(capsys, "provision", "--source", f"file:{env}", "--state-dir", str(state_dir),
                             "--no-set-password")
    assert (code, out) == (1, "") and "identity.key is missing" in err and err.count("\n") == 1
    assert all_bytes_under(state_dir) == before and not (state_dir / "identity.key").exists()
