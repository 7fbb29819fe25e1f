"""requester/batch.py: the targets file and the batch report, through the library's public names."""

from __future__ import annotations

import json

import pytest
from test_cli_small_fixes import secrets_dir  # noqa: F401 - the fixture: a folder with a.json and b.json

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.errors import PeerRefused
from firsttrust.requester.identitycheck import IdentityChanged
from firsttrust.requester.interrupts import Interrupted
from firsttrust.requester.library import BatchReport, InvalidTargets, Outcome, Target, read_targets
from firsttrust.requester.truststore import ApplianceRecord


def test_a_csv_and_a_json_targets_file_read_the_same(secrets_dir):
    (secrets_dir / "t.csv").write_text("name,address,secrets\napp-1,10.0.0.5,a.json\napp-2,10.0.0.6:9000,b.json\n")
    (secrets_dir / "t.json").write_text(json.dumps([{"name": "app-1", "address": "10.0.0.5", "secrets": "a.json"},
                                               {"name": "app-2", "address": "10.0.0.6:9000", "secrets": "b.json"}]))
    from_csv, from_json = read_targets(str(secrets_dir / "t.csv")), read_targets(str(secrets_dir / "t.json"))
    assert [(t.name, t.address) for t in from_csv] == [("app-1", "10.0.0.5"), ("app-2", "10.0.0.6:9000")]
    assert from_csv == from_json


@pytest.mark.parametrize("text, message", [
    ("name,address,secrets\n", "lists no appliance"),
    ("name,address,secrets\napp-1,10.0.0.5,a.json\napp-1,10.0.0.6,b.json\n", "row 2: name 'app-1' appears twice"),
    ("name,address,secrets\napp-1,,a.json\n", "row 1: missing address"),
    ("name,address,secrets\nbad name,10.0.0.5,a.json\n", "invalid name 'bad name'"),
    ("name,address,secrets\napp-1,10.0.0.5:x,a.json\n", "invalid address '10.0.0.5:x'"),
    ("name,address,secrets\napp-1,10.0.0.5,missing.json\n", "cannot read secrets file"),
    ("name,address,secrets\napp-1,10.0.0.5,a.json,extra\n", "row 1: more fields than the header names"),
    # JSON: a number was read as an address (5 connected to 0.0.0.5), a list as a path, a key twice kept the last
    ('[{"name": "app-1", "address": 5, "secrets": "a.json"}]', "each value of a JSON targets file is a string"),
    ('[{"name": "app-1", "address": "10.0.0.5", "secrets": ["a.json"]}]', "each value .* is a string"),
    ('[{"name": "app-1", "address": "10.0.0.5", "address": "10.0.0.6", "secrets": "a.json"}]', "appears twice"),
])
def test_a_bad_targets_file_raises_invalid_targets_naming_what(secrets_dir, text, message):
    (secrets_dir / "t.csv").write_text(text)
    with pytest.raises(InvalidTargets, match=message):
        read_targets(str(secrets_dir / "t.csv"))


def test_a_loose_secrets_file_is_reported_to_warn_and_the_read_goes_on(secrets_dir):
    (secrets_dir / "b.json").chmod(0o640)
    (secrets_dir / "t.csv").write_text("name,address,secrets\napp-1,h,a.json\napp-2,h,b.json\n")
    warnings: list[str] = []
    assert len(read_targets(str(secrets_dir / "t.csv"), warn=warnings.append)) == 2
    assert len(warnings) == 1 and "b.json is accessible to group or others (mode 0640)" in warnings[0]


def test_the_report_as_data(secrets_dir):
    secrets = EnrollmentSecrets.generate()
    record = ApplianceRecord(name="app-1", address="10.0.0.5", pin="sha256:" + "0" * 64, certificate="",
                             api_port=8791)
    outcomes = [Outcome(Target("app-1", "10.0.0.5", secrets), record, None, 0.4121),
                Outcome(Target("app-2", "10.0.0.6", secrets), record, None, 0.1, already_pinned=True),
                Outcome(Target("app-3", "10.0.0.7", secrets), None, PeerRefused("auth_failed", "no"), 1.0),
                Outcome(Target("app-4", "10.0.0.8", secrets), None, Interrupted("stopped"), 0.0)]
    report = BatchReport(outcomes)
    assert [e["status"] for e in report.entries()] == ["enrolled", "already-pinned", "failed", "interrupted"]
    assert report.entries()[0] == {"name": "app-1", "address": "10.0.0.5", "ok": True, "status": "enrolled",
                                   "pin": record.pin, "error": None, "seconds": 0.412}
    assert report.rows()[0][-1] == "412 ms" and report.rows()[3][3] == "interrupted: stopped"
    assert report.summary() == "1 enrolled, 1 already pinned, 1 failed, 1 interrupted"
    assert len(report.failed) == 2 and not report.identity_changed
    changed = Outcome(Target("app-5", "10.0.0.9", secrets), None, IdentityChanged("another key"), 0.0)
    assert BatchReport([*outcomes, changed]).identity_changed
