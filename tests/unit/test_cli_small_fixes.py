"""Issue 28's small ones in the `firsttrust` CLI, each reproduced: a targets file with a byte order
mark, without a header or with an extra column; a world-readable secrets file given to enroll;
`pins show`'s time; the progress lines of deploy's threads."""

from __future__ import annotations

import io
import json
import threading

import pytest

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.identity import create_identity
from firsttrust.requester import cli, deploycommand
from firsttrust.requester.deployspec import secrets_to_json
from firsttrust.requester.truststore import ApplianceRecord, TrustStore


@pytest.fixture
def secrets_dir(tmp_path):
    for name in ("a", "b"):
        path = tmp_path / f"{name}.json"
        path.write_bytes(secrets_to_json(EnrollmentSecrets.generate()))
        path.chmod(0o600)
    return tmp_path


def targets(tmp_path, text: str, encoding: str = "utf-8"):
    path = tmp_path / "targets.csv"
    path.write_text(text, encoding=encoding)
    return str(path)


def test_a_targets_file_with_a_byte_order_mark_reads_like_one_without(secrets_dir):
    path = targets(secrets_dir, "name,address,secrets\napp-1,10.0.0.5,a.json\n", encoding="utf-8-sig")
    assert [t.name for t in cli._read_targets(path)] == ["app-1"]


def test_a_targets_file_without_its_header_says_so(secrets_dir):
    path = targets(secrets_dir, "app-1,10.0.0.5,a.json\napp-2,10.0.0.6,b.json\n")
    with pytest.raises(cli.UsageError, match="first line is not the header name,address,secrets"):
        cli._read_targets(path)


def test_an_extra_or_misspelt_column_is_refused_not_ignored(secrets_dir):
    path = targets(secrets_dir, "name,address,secrets,owner\napp-1,10.0.0.5,a.json,me\n")
    with pytest.raises(cli.UsageError, match="unknown column 'owner'"):
        cli._read_targets(path)
    (secrets_dir / "t.json").write_text(json.dumps([{"name": "app-1", "adress": "x", "secrets": "a.json"}]))
    with pytest.raises(cli.UsageError, match="unknown column 'adress'"):
        cli._read_targets(str(secrets_dir / "t.json"))


def test_a_secrets_file_others_can_read_is_warned_about_in_a_batch(secrets_dir, capsys):
    (secrets_dir / "b.json").chmod(0o644)
    cli._read_targets(targets(secrets_dir, "name,address,secrets\napp-1,h,a.json\napp-2,h,b.json\n"))
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "b.json is accessible to group or others (mode 0644)" in err


def test_enroll_warns_about_a_world_readable_secrets_file(secrets_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    (secrets_dir / "a.json").chmod(0o644)
    code = cli.main(["enroll", "127.0.0.1:1", "--secrets", str(secrets_dir / "a.json"), "--name", "app-1",
                     "--deadline", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "a.json is accessible to group or others (mode 0644); chmod 600 it" in err


def test_pins_show_prints_the_enrollment_time_in_utc(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path))
    identity = create_identity("appliance")
    TrustStore(tmp_path).save(ApplianceRecord(name="app-1", address="10.0.0.5", pin=identity.pin,
                                              certificate=identity.cert_pem.decode(), api_port=8791,
                                              enrolled_at=1796000000.0))
    assert cli.main(["pins", "show", "app-1"]) == 0
    out = capsys.readouterr().out
    assert "enrolled at: 2026-11-30T00:53:20Z\n" in out and "deployment id: none\n" in out


def test_deploy_progress_lines_from_many_threads_never_run_together(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(deploycommand.sys, "stderr", stream)
    threads = [threading.Thread(target=lambda n=n: [deploycommand._progress(f"app-{n}", "x" * 200)
                                                    for _ in range(200)]) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1600 and all(line.startswith("firsttrust: app-") and line.endswith("x" * 200)
                                      for line in lines)


def test_operations_md_says_what_the_cli_does_with_a_rotate_call(capsys):
    from pathlib import Path
    assert cli.main(["call", "app-1", "POST", "/v1/identity/rotate"]) == cli.EXIT_USAGE
    assert "use `firsttrust rotate NAME`" in capsys.readouterr().err
    operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert "rotates too" not in operations and "is\nrefused (exit 2" in operations
