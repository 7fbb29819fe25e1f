"""The trust store from the command line: pins list/show/remove, a corrupt record, an empty
store, names checked before anything is sent (docs/requester.md)."""

from __future__ import annotations

import asyncio
import os

import pytest

from firsttrust.identity import create_identity
from firsttrust.requester import cli
from firsttrust.requester.library import AlreadyPinned, NameTaken, enroll_appliance, pin_certificate
from firsttrust.requester.truststore import TrustStore
from firsttrust.credentials import EnrollmentSecrets


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    return TrustStore(tmp_path / "home")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pin(store: TrustStore, name: str, address: str = "127.0.0.9") -> str:
    identity = create_identity(name)
    pin_certificate(name, address, identity.cert_pem, store=store)
    return identity.pin


def test_an_empty_store_says_so(home, capsys):
    code, out, err = run(capsys, "pins", "list")
    assert (code, out) == (0, "") and err == f"no pinned appliances in {home.home}\n"


def test_a_corrupt_record_is_named_and_skipped_and_the_others_are_listed(home, capsys):
    good = pin(home, "good")
    pin(home, "broken")  # not a hex word: a pin (sha256:<hex>) in the output can never contain it
    (home.appliances / "broken.json").write_text("{not json")
    code, out, err = run(capsys, "pins", "list")
    assert code == 1
    assert "good" in out and good in out and "broken" not in out
    assert err.count("\n") == 1 and str(home.appliances / "broken.json") in err and "corrupt" in err


CORRUPT_RECORDS = {
    "a-list": "[]", "null": "null", "a-number": "5", "pin-not-a-string": None, "certificate-not-a-string": None,
    "a-directory": None,
}


@pytest.mark.parametrize("case", sorted(CORRUPT_RECORDS))
def test_every_kind_of_corrupt_record_is_skipped_by_list_and_a_typed_error_from_get(home, case):
    from firsttrust.requester.truststore import TrustStoreError

    pin(home, "good")
    pin(home, "broken")
    path = home.appliances / "broken.json"
    if case == "a-directory":
        path.unlink()
        path.mkdir()
    elif CORRUPT_RECORDS[case] is not None:
        path.write_text(CORRUPT_RECORDS[case])
    else:
        import json
        record = json.loads(path.read_text())
        record["pin" if case == "pin-not-a-string" else "certificate"] = 5
        path.write_text(json.dumps(record))
    records, problems = home.scan()
    assert [r.name for r in records] == ["good"] and [r.name for r in home.list()] == ["good"]
    assert len(problems) == 1 and str(path) in str(problems[0])
    with pytest.raises(TrustStoreError) as caught:
        home.get("broken")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_pins_remove_forgets_exactly_that_appliance(home, capsys):
    pin(home, "one")
    two = pin(home, "two")
    code, out, _ = run(capsys, "pins", "remove", "one")
    assert code == 0 and out.startswith("removed one: ")
    assert [r.name for r in home.list()] == ["two"] and home.get("two").pin == two
    code, _, err = run(capsys, "pins", "remove", "one")
    assert code == 2 and "no pinned appliance named 'one'" in err and err.count("\n") == 1


def test_pins_remove_removes_a_record_that_cannot_be_read(home, capsys):
    """The corrupt record, the one most in need of removing, was refused by `pins remove` (review)."""
    pin(home, "one")
    two = pin(home, "two")
    (home.appliances / "one.json").write_text('{"name": "one", "pin": "not a pin"')
    code, out, err = run(capsys, "pins", "remove", "one")
    assert code == 0 and out.startswith("removed one: its record could not be read") and err == ""
    assert not (home.appliances / "one.json").exists() and home.get("two").pin == two


def test_a_store_that_is_a_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "file"))
    code, _, err = run(capsys, "pins", "list")
    assert code == 1 and str(tmp_path / "file") in err and err.count("\n") == 1 and "Traceback" not in err


def test_identity_says_where_the_store_is(home, capsys):
    code, out, err = run(capsys, "identity")
    assert code == 0 and out.startswith("-----BEGIN CERTIFICATE-----")
    assert err == f"trust store: {home.home} (FIRSTTRUST_HOME)\n"


@pytest.mark.parametrize("name", ["identity.key", "identity.crt"])
def test_a_huge_identity_file_is_refused_by_name_not_read_whole(home, capsys, name):
    from firsttrust.requester.truststore import MAX_IDENTITY_FILE, TrustStoreError

    assert run(capsys, "identity")[0] == 0
    before = (home.home / name).stat().st_ino
    os.truncate(home.home / name, 300 * 1024 * 1024)  # sparse: read whole, 300 MB of memory
    code, out, err = run(capsys, "identity")
    assert code == 1 and out == ""
    assert err == f"firsttrust: error: {home.home / name} is larger than {MAX_IDENTITY_FILE} bytes\n"
    with pytest.raises(TrustStoreError, match="larger than"):
        home.identity()
    # refused, not replaced: the key is the requester's identity to every appliance that pinned it
    assert (home.home / name).stat().st_ino == before and (home.home / name).stat().st_size == 300 * 1024 * 1024
    if name == "identity.crt":  # enrollment reads the files it is given, bounded too
        from firsttrust.errors import InvalidCertificate
        from firsttrust.requester.enroll import ClientIdentityFiles, _OwnIdentity

        with pytest.raises(InvalidCertificate, match="larger than"):
            _OwnIdentity(ClientIdentityFiles(home.home / name, home.home / "identity.key"))


def test_help_names_firsttrust_home(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "FIRSTTRUST_HOME" in out


async def test_a_name_pinned_elsewhere_is_refused_before_anything_is_sent(home):
    taken = pin(home, "app", "127.0.0.9")
    # Port 9 on 127.0.0.10: nothing listens, so reaching the network would fail differently.
    with pytest.raises(NameTaken, match="already pinned to another appliance"):
        await enroll_appliance("127.0.0.10:9", EnrollmentSecrets.generate(), name="app", store=home)
    assert home.get("app").pin == taken


async def test_the_same_name_and_address_again_is_already_pinned_without_contact(home):
    taken = pin(home, "app", "127.0.0.9")
    with pytest.raises(AlreadyPinned) as already:
        await enroll_appliance("127.0.0.9:9", EnrollmentSecrets.generate(), name="app", store=home)
    assert already.value.record.pin == taken


def test_pin_cert_through_vcenter_refuses_another_key_before_any_call_unless_replace(tmp_path, monkeypatch):
    """verify_and_pin (pin-cert --vcenter): a name pinned to another key is refused before the
    first pinned call; deploy passes replace=True (its VM carries this deployment's id)."""
    from firsttrust.identity import create_identity
    from firsttrust.requester import guestcommand
    from firsttrust.requester.identitycheck import IdentityChanged
    from firsttrust.requester.library import pin_certificate
    from firsttrust.requester.truststore import TrustStore

    store = TrustStore(tmp_path / "home")
    first, second = create_identity("appliance"), create_identity("appliance")
    pin_certificate("app", "127.0.0.9", first.cert_pem, store=store)
    calls = []

    async def first_pinned_call(*args):
        calls.append(args)

    monkeypatch.setattr(guestcommand, "_first_pinned_call", first_pinned_call)
    with pytest.raises(IdentityChanged, match="--replace"):
        guestcommand.verify_and_pin("app", "127.0.0.9", second.cert_pem, embodiment="injected-certificate",
                                    store=store, replace=False)
    assert calls == [] and store.get("app").pin == first.pin
    guestcommand.verify_and_pin("app", "127.0.0.9", first.cert_pem, embodiment="injected-certificate", store=store,
                                replace=False)  # the same key: no change
    assert len(calls) == 1
    record = guestcommand.verify_and_pin("app", "127.0.0.9", second.cert_pem, embodiment="injected-certificate",
                                         store=store)
    assert record.pin == second.pin == store.get("app").pin


@pytest.mark.parametrize("extra, says", [
    ((), "whom to trust at"),  # nothing given, nothing in the environment or the config file
    (("--thumbprint", "00"), "invalid vCenter URL"),
    (("--ca-file", "/nonexistent/ca.pem"), "cannot load CA bundle /nonexistent/ca.pem: No such file or directory"),
])
def test_pin_cert_through_vcenter_checks_its_inputs_as_deploy_does(home, capsys, monkeypatch, tmp_path, extra, says):
    """pin-cert --vcenter skipped deploy's checks: no trust given was an internal error
    (TypeError), a port of 99999 one too (ValueError), and a missing --ca-file exit 1."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    for variable in ("FIRSTTRUST_VCENTER_THUMBPRINT", "FIRSTTRUST_VCENTER_CA_FILE", "FIRSTTRUST_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    url = "https://vc.example:99999/sdk" if says == "invalid vCenter URL" else "https://vc.example/sdk"
    code, out, err = run(capsys, "pin-cert", "app", "--vcenter", url, *extra)
    assert code == cli.EXIT_USAGE and out == ""
    assert says in err and err.count("\n") == 1 and "internal error" not in err
