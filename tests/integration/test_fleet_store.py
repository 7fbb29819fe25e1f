"""The fleet store on a real PostgreSQL server the tests start (docs/fleet.md): signed records,
claims, connection loss, configuration. No appliance here (test_fleet.py has them)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psycopg
import pytest
from pg_fixture import pg_server, pg_url  # noqa: F401 - fixtures

from firsttrust.identity import create_identity, load_certificate
from firsttrust.requester.store import open_store
from firsttrust.requester.store import fleet, signing
from firsttrust.requester.store.config import connection_options
from firsttrust.requester.store.errors import (HeldByHost, NotAMember, StoreConfigError, StoreSchemaError,
                                               StoreUnavailable, UntrustedRecord)
from firsttrust.requester.store.pgstore import PgStore
from firsttrust.requester.truststore import ApplianceRecord, TrustStore, UnknownAppliance


def record(name: str, identity, address: str = "10.0.0.5") -> ApplianceRecord:
    return ApplianceRecord(name=name, address=address, pin=identity.pin, certificate=identity.cert_pem.decode(),
                           api_port=8791, ssh_host_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA test",))


@pytest.fixture
def two_hosts(tmp_path, pg_url):
    """A fleet with hosts a (the admin) and b, both members."""
    a = PgStore(pg_url, tmp_path / "a")
    fleet.create(a, "host-a")
    b = PgStore(pg_url, tmp_path / "b")
    fleet.join(b.home, a.membership().admin_pin, None, "host-b")
    fleet.add_host(a, "host-b", b.identity().cert_pem)
    return a, b


def test_file_store_stays_the_default_without_configuration(tmp_path, monkeypatch):
    monkeypatch.delenv("FIRSTTRUST_STORE", raising=False)
    store = open_store(tmp_path / "home")
    assert type(store) is TrustStore
    monkeypatch.setenv("FIRSTTRUST_STORE", "files")
    assert type(open_store(tmp_path / "home")) is TrustStore


def test_store_url_with_a_password_or_unverified_tls_is_refused_without_echoing_it():
    with pytest.raises(StoreConfigError) as caught:
        connection_options("postgresql://fleet:hunter2-secret@db.example/firsttrust")
    assert caught.value.code == "store_config" and "hunter2" not in str(caught.value)
    with pytest.raises(StoreConfigError, match="verify-full"):
        connection_options("postgresql://fleet@db.example/firsttrust?sslmode=require")
    assert connection_options("postgresql://fleet@db.example/firsttrust")["sslmode"] == "verify-full"
    assert "sslmode" not in connection_options("postgresql:///firsttrust?host=/run/postgresql")
    with pytest.raises(StoreConfigError):
        connection_options("mysql://db.example/firsttrust")


def test_a_store_without_schema_says_migrate_and_migrate_is_idempotent(tmp_path, pg_url):
    store = PgStore(pg_url, tmp_path / "a")
    assert store.schema_version() == 0
    with pytest.raises(StoreSchemaError, match="store migrate"):
        store.claims()
    assert store.migrate() == [1]
    assert store.migrate() == []
    assert store.schema_version() == 1


def test_pins_saved_by_one_host_are_read_by_another_and_no_private_key_enters_the_database(two_hosts, pg_url,
                                                                                          appliance_identity):
    a, b = two_hosts
    a.save(record("app-01", appliance_identity))
    assert b.get("app-01") == a.get("app-01")
    assert [r.name for r in b.list()] == ["app-01"]
    with psycopg.connect(pg_url) as conn:
        dump = "\n".join(str(row) for table in ("fleet", "members", "pins", "enrollments", "grants", "audit")
                         for row in conn.execute(f"SELECT * FROM {table}").fetchall())
    assert "PRIVATE KEY" not in dump
    for store in (a, b):
        assert store.identity().key_pem.decode().strip().splitlines()[1] not in dump


def test_a_pin_swapped_by_a_database_writer_is_refused(two_hosts, pg_url, appliance_identity, stranger_identity):
    a, b = two_hosts
    a.save(record("app-01", appliance_identity))
    with psycopg.connect(pg_url) as conn:
        payload = json.loads(conn.execute("SELECT payload FROM pins WHERE name = 'app-01'").fetchone()[0])
        payload["record"]["pin"] = stranger_identity.pin
        payload["record"]["certificate"] = stranger_identity.cert_pem.decode()
        conn.execute("UPDATE pins SET payload = %s WHERE name = 'app-01'", (json.dumps(payload),))
    with pytest.raises(UntrustedRecord) as caught:
        b.get("app-01")
    assert caught.value.code == "fleet_untrusted_record"
    records, problems = b.scan()
    assert records == [] and [p.code for p in problems] == ["fleet_untrusted_record"]


def test_a_host_that_was_never_admitted_cannot_write(two_hosts, pg_url, tmp_path, appliance_identity):
    a, b = two_hosts
    # a host that joined (knows the anchor) but was never admitted cannot write
    c = PgStore(pg_url, tmp_path / "c")
    fleet.join(c.home, a.membership().admin_pin, None)
    with pytest.raises(NotAMember) as caught:
        c.save(record("app-02", appliance_identity))
    assert caught.value.code == "fleet_not_member"


def test_a_member_row_added_by_a_database_writer_is_not_a_member(two_hosts, pg_url, tmp_path, appliance_identity):
    a, b = two_hosts
    intruder = create_identity("intruder")
    with psycopg.connect(pg_url) as conn:
        payload = json.dumps({"kind": "member", "fleet": a.membership().fleet_id, "host": "intruder",
                              "pin": intruder.pin, "certificate": intruder.cert_pem.decode(), "removed": False,
                              "version": 1})
        conn.execute("INSERT INTO members (host, pin, payload, signature) VALUES ('intruder', %s, %s, %s)",
                     (intruder.pin, payload, b"\x30\x00"))
    assert "intruder" not in {m.host for m in b.membership().members}


def test_a_fleet_whose_admin_key_is_not_the_local_anchor_is_refused(two_hosts, tmp_path):
    a, b = two_hosts
    fleet.join(b.home, create_identity("other-admin").pin, None)
    with pytest.raises(UntrustedRecord, match="anchor"):
        b.list()


def test_two_hosts_claiming_one_appliance_one_gets_held_by_host_naming_the_holder(two_hosts):
    a, b = two_hosts
    assert a.claim("app-01") is None
    with pytest.raises(HeldByHost) as caught:
        b.claim("app-01")
    assert caught.value.holder == "host-a" and caught.value.code == "held_by_host"
    assert [(c.name, c.holder) for c in b.claims()] == [("app-01", "host-a")]
    a.release("app-01")
    assert b.claim("app-01") is None


def test_an_expired_claim_with_a_pending_pin_is_taken_over_and_named(two_hosts, appliance_identity, monkeypatch):
    a, b = two_hosts
    monkeypatch.setenv("FIRSTTRUST_FLEET_LEASE", "0")
    a.claim("app-01")
    a.save_pending(record("app-01", appliance_identity))
    assert b.claim("app-01") == "host-a"
    assert b.get_pending("app-01") is None  # host-a's pending pin is only host-a's to confirm
    b.release("app-01")  # host-a gets it back
    assert a.get_pending("app-01").pin == appliance_identity.pin
    assert a.claim("app-01") is None  # its lease expired: host-a resumes it


def test_promote_pins_and_drops_the_claim_in_one_transaction(two_hosts, appliance_identity):
    a, b = two_hosts
    a.claim("app-01")
    a.save_pending(record("app-01", appliance_identity))
    a.promote(record("app-01", appliance_identity))
    assert b.claims() == [] and b.get("app-01").pin == appliance_identity.pin


def test_a_removed_host_can_no_longer_read_or_claim_and_its_pins_stay_valid(two_hosts, appliance_identity):
    a, b = two_hosts
    b.save(record("app-01", appliance_identity))
    fleet.remove_host(a, "host-b")
    assert a.get("app-01").pin == appliance_identity.pin  # re-signed by the admin key
    with pytest.raises(NotAMember):
        b.claim("app-02")
    with pytest.raises(NotAMember):
        b.save(record("app-02", appliance_identity))
    with pytest.raises(NotAMember):
        b.get("app-01")
    with pytest.raises(NotAMember):
        b.list()


def test_a_host_whose_key_has_a_members_subject_is_not_admitted(two_hosts, tmp_path):
    a, b = two_hosts
    twin = create_identity("firsttrust-requester host-b")  # the appliance's TLS trust would confuse the two
    with pytest.raises(StoreConfigError, match="same subject"):
        fleet.add_host(a, "host-c", twin.cert_pem)
    fleet.add_host(a, "host-c", create_identity("firsttrust-requester host-c").cert_pem)


def test_the_database_restarted_mid_operation_is_retried(two_hosts, pg_server, appliance_identity):
    a, b = two_hosts
    a.save(record("app-01", appliance_identity))
    pg_server.restart()  # every connection the stores hold is gone
    assert b.get("app-01").pin == appliance_identity.pin
    a.save(record("app-02", appliance_identity))
    assert {r.name for r in b.list()} == {"app-01", "app-02"}


def test_the_database_down_gives_store_unavailable_in_one_line(two_hosts, pg_server, monkeypatch):
    a, b = two_hosts
    monkeypatch.setenv("FIRSTTRUST_STORE_DEADLINE", "1")
    pg_server.stop("immediate")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            b.list()
        assert caught.value.code == "store_unavailable" and "\n" not in str(caught.value)
    finally:
        pg_server.start()


def test_unknown_appliance_is_the_file_stores_error(two_hosts):
    a, b = two_hosts
    with pytest.raises(UnknownAppliance):
        b.get("app-99")


def test_a_pending_pin_swapped_by_a_database_writer_is_refused(two_hosts, pg_url, appliance_identity,
                                                                stranger_identity):
    a, b = two_hosts
    a.claim("app-01")
    a.save_pending(record("app-01", appliance_identity))
    with psycopg.connect(pg_url) as conn:
        payload = json.loads(conn.execute("SELECT payload FROM enrollments").fetchone()[0])
        payload["record"].update(pin=stranger_identity.pin, certificate=stranger_identity.cert_pem.decode())
        conn.execute("UPDATE enrollments SET payload = %s", (json.dumps(payload),))
    with pytest.raises(UntrustedRecord):
        a.get_pending("app-01")


def _cli(*args, home, url, check=True):
    import os
    import subprocess
    import sys

    env = {**os.environ, "FIRSTTRUST_HOME": str(home), "FIRSTTRUST_STORE": url}
    done = subprocess.run([sys.executable, "-m", "firsttrust.requester.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_the_store_and_fleet_commands_create_join_admit_list_check_and_import(tmp_path, pg_url, appliance_identity):
    admin, member = tmp_path / "admin", tmp_path / "member"
    assert "schema migrations applied: 1" in _cli("store", "migrate", home=admin, url=pg_url).stdout
    created = _cli("fleet", "create", "--host", "admin-host", home=admin, url=pg_url).stdout
    anchor = created.split("`fleet join`): ")[1].split()[0]
    joined = _cli("fleet", "join", "--anchor", anchor, "--host", "member-host", home=member, url=pg_url)
    (tmp_path / "member.crt").write_text(joined.stdout)
    assert load_certificate(joined.stdout.encode()).subject.rfc4514_string() == "CN=firsttrust-requester member-host"
    _cli("fleet", "add-host", "member-host", str(tmp_path / "member.crt"), home=admin, url=pg_url)
    hosts = _cli("fleet", "hosts", home=member, url=pg_url).stdout
    assert "admin-host" in hosts and "member-host" in hosts
    # a file store's pins, imported on the member host
    files = TrustStore(tmp_path / "old-files")
    files.identity()
    files.save(record("app-01", appliance_identity))
    assert "imported app-01" in _cli("store", "import-files", "--from", str(files.home), home=member,
                                     url=pg_url).stdout
    assert "1 pin records verified" in _cli("store", "check", home=admin, url=pg_url).stdout
    assert "app-01" in _cli("pins", "list", home=admin, url=pg_url).stdout
    assert "no enrollment is held" in _cli("fleet", "pending", home=admin, url=pg_url).stderr
    refused = _cli("fleet", "add-host", "x", str(tmp_path / "member.crt"), home=member, url=pg_url, check=False)
    assert refused.returncode == 1 and "no fleet admin key" in refused.stderr
    with_password = _cli("pins", "list", home=admin, url="postgresql://u:pw-not-here@db.example/x", check=False)
    assert with_password.returncode == 1 and "pw-not-here" not in with_password.stderr + with_password.stdout


# --- review of issue 30: deadlines, TLS, re-pins, replays, the checks on a pin record -------------


def _bounded(call, seconds: float):
    """(what `call()` raised or returned, how long it took); fails if it is still running after `seconds`."""
    outcome = {}

    def run():
        started = time.monotonic()
        try:
            outcome["result"] = call()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            outcome["result"] = exc
        outcome["took"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome.get("result"), outcome.get("took")


def test_a_row_lock_held_by_another_session_gives_store_unavailable_within_the_deadline(two_hosts, pg_url,
                                                                                        monkeypatch):
    a, b = two_hosts
    monkeypatch.setenv("FIRSTTRUST_STORE_DEADLINE", "2")
    a.claim("app-01")
    with psycopg.connect(pg_url) as holder:  # e.g. a stopped host's open transaction
        holder.execute("SELECT * FROM enrollments WHERE name = 'app-01' FOR UPDATE")
        result, took = _bounded(lambda: b.claim("app-01"), 15)
        assert isinstance(result, StoreUnavailable) and took is not None and took < 6, (result, took)
        assert "\n" not in str(result)


def test_a_server_that_answers_nothing_gives_store_unavailable_within_the_deadline(two_hosts, monkeypatch):
    a, b = two_hosts
    monkeypatch.setenv("FIRSTTRUST_STORE_DEADLINE", "2")
    b.list()  # b's connection is open
    backend = b._conn.info.backend_pid
    os.kill(backend, signal.SIGSTOP)  # a hung server, a silent partition: not even its statement_timeout runs
    try:
        result, took = _bounded(b.list, 15)
    finally:
        os.kill(backend, signal.SIGCONT)
    assert isinstance(result, StoreUnavailable) and took is not None and took < 6, (result, took)
    assert [r.name for r in b.list()] == []  # a new connection: the store works again


def test_a_unix_socket_host_with_a_tcp_hostaddr_still_needs_verified_tls(monkeypatch):
    for variable in ("PGHOST", "PGHOSTADDR", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    # libpq connects to hostaddr over TCP whatever `host` says: verify-full, as any TCP URL
    assert connection_options("postgresql:///firsttrust?host=/run/postgresql&hostaddr=192.0.2.7")["sslmode"] == \
        "verify-full"
    with pytest.raises(StoreConfigError, match="verify-full"):
        connection_options("postgresql:///firsttrust?host=/run/postgresql&hostaddr=192.0.2.7&sslmode=disable")
    monkeypatch.setenv("PGHOSTADDR", "192.0.2.7")
    with pytest.raises(StoreConfigError, match="verify-full"):
        connection_options("postgresql:///firsttrust?host=/run/postgresql&sslmode=disable")
    monkeypatch.delenv("PGHOSTADDR")
    monkeypatch.setenv("PGHOST", "/run/postgresql")  # libpq's host when the URL has none: a socket
    assert "sslmode" not in connection_options("postgresql:///firsttrust")


def test_a_repinned_appliance_gets_every_other_members_key_again(two_hosts, pg_url, appliance_identity,
                                                                  stranger_identity):
    a, b = two_hosts
    a.save(record("app-01", appliance_identity))
    with psycopg.connect(pg_url) as conn:  # as host-a's sync records it after pushing host-b's key
        conn.execute("UPDATE grants SET state = 'applied'")
    a.save(record("app-01", appliance_identity))  # the same appliance saved again: nothing to push
    assert _grants(pg_url) == {b.identity().pin: ("authorize", "applied"), a.identity().pin: ("authorize", "applied")}
    a.save(record("app-01", stranger_identity, "10.0.0.9"))  # re-pinned (--replace, redeployed): a new appliance
    assert _grants(pg_url) == {b.identity().pin: ("authorize", "pending"), a.identity().pin: ("authorize", "applied")}


def _grants(url: str, appliance: str = "app-01") -> dict[str, tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return {pin: (action, state) for pin, action, state in conn.execute(
            "SELECT member_pin, action, state FROM grants WHERE appliance = %s", (appliance,)).fetchall()}


def test_a_removed_members_certificate_is_refused_for_a_new_host_with_store_config(two_hosts):
    a, b = two_hosts
    fleet.remove_host(a, "host-b")
    with pytest.raises(StoreConfigError, match="host-b") as caught:
        fleet.add_host(a, "host-c", b.identity().cert_pem)
    assert caught.value.code == "store_config" and "\n" not in str(caught.value)
    assert fleet.add_host(a, "host-b", b.identity().cert_pem) == b.identity().pin  # the same host re-admitted


def _every_commit_answer_lost(monkeypatch, store) -> None:
    """Every transaction commits, then runs again from the start, as transaction() does when the
    answer to a COMMIT that did go through is lost (docs/fleet.md section 7)."""
    original = store.transaction

    def replayed(work):
        original(work)
        return original(work)

    monkeypatch.setattr(store, "transaction", replayed)


def test_membership_writes_replayed_after_a_lost_commit_answer_succeed(tmp_path, pg_url, monkeypatch):
    admin = PgStore(pg_url, tmp_path / "a")
    _every_commit_answer_lost(monkeypatch, admin)
    fleet.create(admin, "host-a")
    assert [m.host for m in admin.membership().members] == ["host-a"]
    host_c = create_identity("firsttrust-requester host-c")
    assert fleet.add_host(admin, "host-c", host_c.cert_pem) == host_c.pin
    assert host_c.pin in admin.membership().current()
    assert fleet.remove_host(admin, "host-c") == host_c.pin
    assert host_c.pin not in admin.membership().current()
    with pytest.raises(StoreConfigError, match="member already"):  # another certificate is still refused
        fleet.add_host(admin, "host-a", create_identity("firsttrust-requester host-a2").cert_pem)
    with pytest.raises(NotAMember):  # a host that never was a member is still an error
        fleet.remove_host(admin, "host-z")


def _move_pin_row(url: str, sql: str, *args) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(sql, args)


def test_a_signed_pin_record_moved_to_another_name_is_refused(two_hosts, pg_url, appliance_identity):
    a, b = two_hosts
    a.save(record("app-01", appliance_identity))
    _move_pin_row(pg_url, "INSERT INTO pins (name, signer_pin, version, payload, signature) SELECT 'app-02', "
                  "signer_pin, version, payload, signature FROM pins WHERE name = 'app-01'")
    with pytest.raises(UntrustedRecord):
        b.get("app-02")
    assert b.get("app-01").name == "app-01"


def test_a_signed_pending_pin_put_into_pins_is_refused(two_hosts, pg_url, appliance_identity):
    a, b = two_hosts
    a.claim("app-01")
    a.save_pending(record("app-01", appliance_identity))  # signed by host-a, kind "pending"
    _move_pin_row(pg_url, "INSERT INTO pins (name, signer_pin, version, payload, signature) SELECT name, "
                  "signer_pin, 1, payload, signature FROM enrollments WHERE name = 'app-01'")
    with pytest.raises(UntrustedRecord):
        b.get("app-01")


def test_a_signed_pin_record_of_another_fleet_is_refused(two_hosts, pg_url, appliance_identity):
    a, b = two_hosts
    a.save(record("app-01", appliance_identity))
    with psycopg.connect(pg_url) as conn:  # the record and every member row are re-signed for "another fleet"
        admin = fleet.admin_identity(a.home)
        conn.execute("UPDATE fleet SET id = 'another-fleet'")
        for host, payload in conn.execute("SELECT host, payload FROM members").fetchall():
            member = {**json.loads(payload), "fleet": "another-fleet"}
            text, signature = signing.seal(admin, member)
            conn.execute("UPDATE members SET payload = %s, signature = %s WHERE host = %s", (text, signature, host))
    assert a.identity().pin in b.membership().current()  # the membership verifies under the new id
    with pytest.raises(UntrustedRecord):
        b.get("app-01")  # the pin record names the old fleet id


def test_an_older_signed_member_record_written_back_does_not_readmit_a_removed_host(two_hosts, pg_url):
    a, b = two_hosts
    with psycopg.connect(pg_url) as conn:
        before_removal = conn.execute("SELECT payload, signature FROM members WHERE host = 'host-b'").fetchone()
    fleet.remove_host(a, "host-b")
    assert b.identity().pin not in a.membership().current()  # host-a has verified the removal (version 2)
    with pytest.raises(NotAMember):
        b.list()  # so has host-b
    with psycopg.connect(pg_url) as conn:  # a database writer, no key, writes the old signed record back
        conn.execute("UPDATE members SET payload = %s, signature = %s WHERE host = 'host-b'", before_removal)
    [member] = [m for m in a.membership().members if m.host == "host-b"]
    assert member.removed and member.rolled_back  # sync revokes its key, never authorizes it
    with pytest.raises(NotAMember):
        b.claim("app-09")
    assert fleet.remove_host(a, "host-b") == b.identity().pin  # the admin signs the removal again, newer
    [member] = [m for m in a.membership().members if m.host == "host-b"]
    assert member.removed and not member.rolled_back and member.version == 3
    fleet.add_host(a, "host-b", b.identity().cert_pem)  # and may re-admit it: a newer record still
    assert b.identity().pin in b.membership().current()
