"""The guest account good for one job (agent/guestaccount.py), recorded at first boot from
firsttrust.guest-password, and `firsttrust-agent authorize --expect-pin --report` (issue 27)."""

from __future__ import annotations

import json
import stat

from firsttrust import deployment as keys
from firsttrust.agent import guestaccount
from firsttrust.agent.cli import main
from firsttrust.agent.sources.deploy import validate_properties
from firsttrust.credentials import generate_secret

import pytest


def test_a_recorded_account_accepts_its_password_only_and_never_stores_it(tmp_path):
    password = generate_secret()
    guestaccount.record(tmp_path, password, expires_at=2e9)
    path = tmp_path / guestaccount.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert password.encode() not in path.read_bytes()
    assert guestaccount.check(tmp_path, guestaccount.DEFAULT_ACCOUNT, password, clock=lambda: 1e9)
    assert not guestaccount.check(tmp_path, guestaccount.DEFAULT_ACCOUNT, password + "x", clock=lambda: 1e9)
    assert not guestaccount.check(tmp_path, "root", password, clock=lambda: 1e9)


def test_the_account_ends_when_the_window_closes_or_when_locked(tmp_path):
    password = generate_secret()
    guestaccount.record(tmp_path, password, expires_at=100.0)
    assert guestaccount.check(tmp_path, guestaccount.DEFAULT_ACCOUNT, password, clock=lambda: 99.0)
    assert not guestaccount.check(tmp_path, guestaccount.DEFAULT_ACCOUNT, password, clock=lambda: 100.0)
    guestaccount.record(tmp_path, password, expires_at=2e9)
    assert guestaccount.lock(tmp_path) and guestaccount.lock(tmp_path)
    assert not guestaccount.check(tmp_path, guestaccount.DEFAULT_ACCOUNT, password, clock=lambda: 1.0)
    assert guestaccount.load(tmp_path)["hash"] == ""


def test_no_record_accepts_nothing(tmp_path):
    assert not guestaccount.check(tmp_path, guestaccount.DEFAULT_ACCOUNT, "anything")
    assert not guestaccount.lock(tmp_path)


def test_the_guest_password_property_is_read_validated_and_hidden_from_repr():
    password = generate_secret()
    config = validate_properties({keys.GUEST_PASSWORD: password}, "test", "none")
    assert config.guest_password == password and not config.empty
    assert password not in repr(config)
    with pytest.raises(Exception, match="firsttrust.guest-password") as refused:
        validate_properties({keys.GUEST_PASSWORD: "short"}, "test", "none")
    assert "short" not in str(refused.value)


def test_authorize_refuses_a_certificate_whose_pin_is_not_the_expected_one(tmp_path, requester_identity,
                                                                          stranger_identity, capsys):
    cert = tmp_path / "requester.pem"
    cert.write_bytes(stranger_identity.cert_pem)
    state = tmp_path / "state"
    report = tmp_path / "report.json"
    code = main(["authorize", "--cert", str(cert), "--state-dir", str(state), "--expect-pin", requester_identity.pin,
                 "--report", str(report)])
    assert code == 2
    assert "--expect-pin" in capsys.readouterr().err
    assert json.loads(report.read_text())["ok"] is False
    assert not (state / "authorized.json").exists() or stranger_identity.pin not in (state / "authorized.json").read_text()


def test_authorize_with_the_expected_pin_reports_the_appliances_certificate(tmp_path, requester_identity, capsys):
    from firsttrust.agent.state import StateDir
    from firsttrust.identity import create_identity

    state = StateDir(tmp_path / "state")
    state.ensure()
    appliance = create_identity("appliance")
    state.save_key(appliance.key_pem)
    state.save_certificate(appliance.cert_pem)
    cert = tmp_path / "requester.pem"
    cert.write_bytes(requester_identity.cert_pem)
    report = tmp_path / "report.json"
    code = main(["authorize", "--cert", str(cert), "--state-dir", str(state.path), "--expect-pin",
                 requester_identity.pin, "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    answer = json.loads(report.read_text())
    assert answer["ok"] and answer["pin"] == requester_identity.pin
    assert answer["appliance_certificate"] == appliance.cert_pem.decode()
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    # A report file is never overwritten (the caller's fresh directory): a second run refuses.
    assert main(["authorize", "--cert", str(cert), "--state-dir", str(state.path), "--report", str(report)]) == 2


def test_authorize_whose_report_cannot_be_written_authorizes_nothing(tmp_path, requester_identity, capsys):
    # Exit 2 tells the caller nothing was authorized: the report file is created before the key is.
    cert = tmp_path / "requester.pem"
    cert.write_bytes(requester_identity.cert_pem)
    state = tmp_path / "state"
    report = tmp_path / "report.json"
    report.write_text("someone else's")
    code = main(["authorize", "--cert", str(cert), "--state-dir", str(state), "--expect-pin", requester_identity.pin,
                 "--report", str(report)])
    assert code == 2
    assert "cannot write the report" in capsys.readouterr().err
    assert not (state / "authorized.json").exists()
    assert report.read_text() == "someone else's"


def test_authorize_reads_either_spelling_of_the_expected_pin_and_calls_a_malformed_one_malformed(
        tmp_path, requester_identity, capsys):
    """--expect-pin was compared as a string: curl's spelling of the right pin was "another pin",
    and a malformed pin was never said to be one."""
    from firsttrust.identity import pin_to_curl

    cert = tmp_path / "requester.pem"
    cert.write_bytes(requester_identity.cert_pem)
    code = main(["authorize", "--cert", str(cert), "--state-dir", str(tmp_path / "a"),
                 "--expect-pin", pin_to_curl(requester_identity.pin)])
    assert code == 0, capsys.readouterr().err
    report = tmp_path / "report.json"
    code = main(["authorize", "--cert", str(cert), "--state-dir", str(tmp_path / "b"), "--expect-pin", "sha256:abc",
                 "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2 and "pin" in err and "is not the one --expect-pin names" not in err
    assert json.loads(report.read_text())["ok"] is False


def test_authorize_that_cannot_write_its_state_says_so_in_its_report_and_from_a_closed_stdin_in_one_line(
        tmp_path, requester_identity, capsys, monkeypatch):
    import sys

    cert = tmp_path / "requester.pem"
    cert.write_bytes(requester_identity.cert_pem)
    state = tmp_path / "state"
    state.write_text("a file where the state directory belongs")
    report = tmp_path / "report.json"
    code = main(["authorize", "--cert", str(cert), "--state-dir", str(state), "--report", str(report)])
    assert code == 1
    answer = json.loads(report.read_text())  # it was left empty
    assert answer["ok"] is False and answer["error"]
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", None)
    code = main(["authorize", "--cert", "-", "--state-dir", str(tmp_path / "s2")])
    err = capsys.readouterr().err
    assert code == 2 and "standard input is closed" in err and err.count("\n") == 1
