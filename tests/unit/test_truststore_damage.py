"""The trust store refuses damage it used to paper over: half an identity (never replaced by a new
key), a record under another record's file name (never used, shown or removed as the wrong
appliance), and directories another user owns (never written into)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from firsttrust.identity import create_identity
from firsttrust.requester.truststore import ApplianceRecord, TrustStore, TrustStoreError

APPLIANCE = create_identity("appliance")


def record(name: str) -> ApplianceRecord:
    return ApplianceRecord(name=name, address="10.0.0.5", pin=APPLIANCE.pin, certificate=APPLIANCE.cert_pem.decode(),
                           api_port=8791)


@pytest.mark.parametrize("lost", ["identity.crt", "identity.key"])
def test_half_an_identity_is_refused_never_replaced_by_a_new_key(tmp_path, lost):
    store = TrustStore(tmp_path / "home")
    before = store.identity()
    (tmp_path / "home" / lost).unlink()
    with pytest.raises(TrustStoreError, match=f"{lost} is missing"):
        TrustStore(tmp_path / "home").identity()
    kept = "identity.key" if lost == "identity.crt" else "identity.crt"
    assert (tmp_path / "home" / kept).read_bytes() == (before.key_pem if kept == "identity.key" else before.cert_pem)
    assert not (tmp_path / "home" / lost).exists()


def test_a_creation_killed_between_its_two_files_is_made_again_not_refused(tmp_path):
    """The marker tells a creation that never finished (nothing used its half) from damage."""
    from firsttrust.requester.truststore import CREATING

    home = tmp_path / "home"
    TrustStore(home).identity()
    (home / "identity.crt").unlink()
    (home / CREATING).write_bytes(b"")  # as a kill after the key's rename leaves it
    made = TrustStore(home).identity()
    assert (home / "identity.crt").read_bytes() == made.cert_pem
    assert (home / "identity.key").read_bytes() == made.key_pem and not (home / CREATING).exists()
    assert TrustStore(home).identity().cert_pem == made.cert_pem  # and kept from then on


def test_a_garbage_key_is_a_corrupt_identity(tmp_path):
    store = TrustStore(tmp_path / "home")
    store.identity()
    (tmp_path / "home" / "identity.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(TrustStoreError, match="corrupt"):
        TrustStore(tmp_path / "home").identity()


def test_a_record_copied_under_another_name_is_refused_and_removing_that_name_keeps_the_original(tmp_path):
    store = TrustStore(tmp_path / "home")
    store.save(record("app1"))
    copy = tmp_path / "home" / "appliances" / "app1-backup.json"
    copy.write_bytes((tmp_path / "home" / "appliances" / "app1.json").read_bytes())
    with pytest.raises(TrustStoreError, match="holds the record of 'app1'"):
        store.get("app1-backup")
    records, problems = store.scan()
    assert [r.name for r in records] == ["app1"] and len(problems) == 1
    env = {**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", "pins", "remove", "app1-backup"],
                          env=env, capture_output=True, text=True, timeout=60)
    # The copy, refused as corrupt, is what goes (pins remove removes a damaged record by its file's name).
    assert done.returncode == 0 and "Traceback" not in done.stderr and "could not be read" in done.stdout
    assert (tmp_path / "home" / "appliances" / "app1.json").exists() and not copy.exists()


def test_a_home_another_user_owns_is_refused_and_a_loose_one_is_tightened(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    TrustStore(loose).identity()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    assert stat.S_IMODE((loose / "appliances").stat().st_mode) == 0o700
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o777)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(TrustStoreError, match="belongs to uid 65534"):
        TrustStore(foreign).identity()
    assert not (foreign / "identity.key").exists()


@pytest.mark.parametrize("path", ["/v1/identity/rotate", "/v1/identity/./rotate", "/v1/x/../identity/rotate",
                                  "//v1/identity//rotate/", "/v1/identity/%72otate", "/v1/identity/rotate?x=1"])
def test_call_refuses_every_spelling_of_the_rotate_path(tmp_path, path):
    """The appliance routes what yarl normalises: `call` must not rotate behind the pin's back."""
    env = {**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", "call", "app1", "POST", path],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "rotate" in done.stderr or "segments" in done.stderr


@pytest.mark.parametrize("field,value", [("api_port", "abc"), ("api_port", True), ("api_port", 0),
                                         ("enrolled_at", "yesterday"), ("enrolled_at", 1e300),
                                         ("enrolled_at", float("nan")), ("ssh_host_keys", [1, 2]),
                                         ("ssh_host_keys", [""]), ("ssh_host_keys", "ssh-ed25519 AAAA"),
                                         ("address", "10.0.0.5\nx"), ("address", 5), ("embodiment", None),
                                         ("deployment_id", 7)])
def test_a_record_field_of_the_wrong_type_or_range_is_a_corrupt_record_named_not_an_internal_error(
        tmp_path, field, value):
    import json

    store = TrustStore(tmp_path / "home")
    store.save(record("app1"))
    path = tmp_path / "home" / "appliances" / "app1.json"
    data = json.loads(path.read_bytes())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(TrustStoreError, match=f"{path} is corrupt") as refused:
        store.get("app1")
    assert field in str(refused.value)
    env = {**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", "pins", "show", "app1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "internal error" not in done.stderr and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("argv", [["pins", "export", "app1", "--format", "known_hosts", "--ssh-port", "0"],
                                  ["pins", "export", "app1", "--format", "known_hosts", "--ssh-port", "99999"],
                                  ["deploy", "--vcenter", "https://vc.example/sdk", "--template", "t", "--name", "a",
                                   "--secrets-dir", "s", "--ip-timeout", "nan", "--thumbprint", ":".join(["AB"] * 32)]])
def test_an_out_of_range_number_is_a_usage_error(tmp_path, argv):
    env = {**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "must be between" in done.stderr


def test_ctrl_d_at_destroys_prompt_is_no_and_destroys_nothing(tmp_path):
    import pty

    from firsttrust.requester.deployer import PASSWORD_ENV, USER_ENV

    (tmp_path / "s").mkdir()
    main, replica = pty.openpty()
    env = {**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home"), USER_ENV: "u", PASSWORD_ENV: "p"}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "firsttrust.requester.cli", "destroy", "app1", "--vcenter",
                                 "https://127.0.0.1:9/sdk", "--thumbprint", ":".join(["AB"] * 32),
                                 "--secrets-dir", str(tmp_path / "s")], env=env, stdin=replica,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(main, b"\x04")  # Ctrl-D: end of input at the prompt
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(main)
        os.close(replica)
    assert proc.returncode == 1, err
    assert "nothing destroyed" in err and "internal error" not in err and "Traceback" not in err


def test_pins_list_with_the_records_directory_a_file_is_damage_not_nothing_pinned(tmp_path):
    home = tmp_path / "home"
    TrustStore(home).identity()
    (home / "appliances").rmdir()
    (home / "appliances").write_bytes(b"")  # a record written as the directory's name by mistake
    env = {**os.environ, "FIRSTTRUST_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", "pins", "list"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no pinned appliances" not in done.stderr
    assert done.stderr.count("\n") == 1 and "appliances is not a directory" in done.stderr


@pytest.mark.parametrize("path", ["/v1/identity/rotate", "//v1/identity/./rotate", "/v1/identity/%72otate?x=1", "v1"])
def test_the_library_call_refuses_the_rotate_path_as_the_command_does(tmp_path, path):
    """library.call sent it: the appliance rotated, the answer came back as data, the pin stayed old."""
    import asyncio

    from firsttrust.requester.library import CallRefused, call

    store = TrustStore(tmp_path / "home")
    store.save(record("app1"))
    with pytest.raises(CallRefused):  # before any connection: the record's address is never dialled
        asyncio.run(call("app1", "POST", path, store=store))


def test_the_identitys_sweep_leaves_other_writers_temp_files_alone(tmp_path):
    """fleet.json is written under another lock: its writer's temp file, in flight, was deleted
    by another process's identity() (1399 of 2000 writes failed in the review)."""
    store = TrustStore(tmp_path / "home")
    store.identity()
    home = tmp_path / "home"
    in_flight = home / ".fleet.json.0123456789ab.tmp"
    in_flight.write_bytes(b"{}")
    stale = [home / ".identity.key.0123456789ab.tmp", home / "appliances" / ".app1.json.0123456789ab.tmp"]
    for path in stale:
        path.write_bytes(b"x")
    TrustStore(home).identity()
    assert in_flight.exists() and not any(path.exists() for path in stale)


def test_an_unreadable_appliances_folder_is_an_error_not_an_empty_store_and_every_problem_names_its_file(
        tmp_path, monkeypatch):
    """glob swallows EACCES: `pins list` said "no pinned appliances", exit 0, for a folder it could
    not read; a record under a name the store refuses was skipped without naming its file."""
    import os

    from firsttrust.requester.truststore import TrustStore, TrustStoreError

    store = TrustStore(tmp_path / "home")
    store.appliances.mkdir(parents=True)
    (store.appliances / "bad name.json").write_text("{}")
    _, problems = store.scan()
    assert len(problems) == 1 and str(store.appliances / "bad name.json") in str(problems[0])

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(TrustStoreError, match="cannot read .*appliances: Permission denied"):
        store.scan()


def test_a_key_that_is_not_the_certificates_is_refused_and_fleet_join_never_replaces_a_damaged_identity(tmp_path):
    """`identity` printed the certificate (exit 0) though identity.key was another key's, and
    `fleet join` replaced an identity whose key was missing with a new pair."""
    import shutil

    from firsttrust.requester.store.fleet import ensure_identity
    from firsttrust.requester.truststore import TrustStore, TrustStoreError

    store, other = TrustStore(tmp_path / "home"), TrustStore(tmp_path / "other")
    store.identity()
    other.identity()
    shutil.copy(other.key_path, store.key_path)
    with pytest.raises(TrustStoreError, match="is not the key of"):
        store.identity()
    store.key_path.unlink()
    before = store.cert_path.read_bytes()
    with pytest.raises(TrustStoreError, match="never replaced"):
        ensure_identity(store.home, "h1")
    assert store.cert_path.read_bytes() == before and not store.key_path.exists()
    fresh = ensure_identity(tmp_path / "new", "h1")
    assert fresh.certificate.subject.rfc4514_string() == "CN=firsttrust-requester h1"
