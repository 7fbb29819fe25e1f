"""The fleet store against races, hostile members and database writers, and the server's own
refusals (review 2026-12-08): one pin per name however the writes interleave, a removal no member
can block, typed errors for whatever PostgreSQL refuses, nothing unreadable written, nothing huge
read."""

from __future__ import annotations

import datetime
import threading

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pg_fixture import pg_server, pg_url  # noqa: F401 - fixtures
from test_fleet_store import _cli, record, two_hosts  # noqa: F401 - fixture

from firsttrust.identity import create_identity
from firsttrust.requester.store import fleet, signing
from firsttrust.requester.store.config import connection_options
from firsttrust.requester.store.errors import NotAMember, StoreConfigError, StoreRefused, StoreUnavailable
from firsttrust.requester.store.pgstore import MAX_PAYLOAD
from firsttrust.requester.truststore import PinConflict, TrustStore, TrustStoreError

def test_two_hosts_pinning_one_new_name_to_two_keys_at_once_one_is_refused(two_hosts):
    """A row lock cannot serialize two first pins (SELECT ... FOR UPDATE locks no row that is not
    there yet): both were told "pinned" and the second silently replaced the first."""
    a, b = two_hosts
    first, second = create_identity("appliance-1"), create_identity("appliance-2")
    for i in range(30):
        name, barrier, outcome = f"race-{i:02d}", threading.Barrier(2), {}

        def pin(store, key, identity):
            barrier.wait()
            try:
                store.save(record(name, identity), same_key_only=True)
                outcome[key] = "pinned"
            except PinConflict:
                outcome[key] = "refused"

        threads = [threading.Thread(target=pin, args=(a, "a", first)), threading.Thread(target=pin, args=(b, "b", second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcome.values()) == ["pinned", "refused"], (name, outcome)
        winner = first if outcome["a"] == "pinned" else second
        assert a.get(name).pin == winner.pin


def test_a_reissued_certificate_of_the_pinned_key_is_the_same_key_not_a_conflict(two_hosts, tmp_path):
    """As the file store compares: by key (the pin), not by the certificate's text."""
    a, _ = two_hosts
    identity = create_identity("appliance")
    a.save(record("app-01", identity))
    key = serialization.load_pem_private_key(identity.key_pem, None)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "appliance, re-issued")])
    reissued = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    again = record("app-01", identity)
    again = type(again)(**{**again.__dict__, "certificate": reissued.public_bytes(serialization.Encoding.PEM).decode()})
    files = TrustStore(tmp_path / "files")
    files.save(record("app-01", identity))
    files.save(again, same_key_only=True)
    a.save(again, same_key_only=True)
    assert a.get("app-01").certificate == again.certificate


def _sealed_pin(store, name: str, identity, payload_version) -> tuple[str, bytes]:
    """A pin record signed with a member's key, as a hostile member would write it."""
    data = store._pin_payload(store.membership().fleet_id, record(name, identity), 1)
    data["version"] = payload_version
    if payload_version is None:
        del data["version"]
    return signing.seal(store.identity(), data)


@pytest.mark.parametrize("payload_version", ["7", 2 ** 63, None])
def test_a_member_cannot_keep_itself_in_the_fleet_with_records_it_signed(two_hosts, pg_url, payload_version):
    """remove-host re-signs the member's pins: a version field of the wrong type, out of range or
    missing in a record the member signed, or a row signed in its name that does not verify, made
    the removal fail, and the member stayed."""
    a, b = two_hosts
    b.save(record("app-good", create_identity("appliance")))
    payload, signature = _sealed_pin(b, "app-odd", create_identity("appliance"), payload_version)
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO pins (name, signer_pin, version, payload, signature) VALUES (%s, %s, 1, %s, %s)",
                     ("app-odd", b.identity().pin, payload, signature))
        conn.execute("INSERT INTO pins (name, signer_pin, version, payload, signature) VALUES (%s, %s, 1, %s, %s)",
                     ("app-junk", b.identity().pin, "{}", b"not a signature"))
    fleet.remove_host(a, "host-b")
    with pytest.raises(NotAMember):
        b.get("app-good")
    assert a.get("app-good").name == "app-good"  # re-signed by the admin key: still valid


def test_what_the_database_refuses_is_a_typed_error_naming_nothing_secret(two_hosts, pg_url):
    """A pins.version a writer set to the largest bigint: the next save's version is out of range."""
    a, _ = two_hosts
    identity = create_identity("appliance")
    a.save(record("app-01", identity))
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE pins SET version = 9223372036854775807 WHERE name = 'app-01'")
    with pytest.raises(StoreRefused) as caught:
        a.save(record("app-01", identity))
    assert caught.value.code == "store_refused" and "\n" not in str(caught.value)


def test_the_stores_own_idle_timeout_is_a_lost_connection_retried_then_store_unavailable(two_hosts, monkeypatch):
    """Work between two statements that outlives the transaction's bound: PostgreSQL ends the
    session with IdleInTransactionSessionTimeout (not an OperationalError), which escaped raw."""
    a, _ = two_hosts
    monkeypatch.setenv("FIRSTTRUST_STORE_DEADLINE", "1")
    attempts = []

    def slow(cursor):
        attempts.append(1)
        cursor.execute("SELECT 1")
        __import__("time").sleep(1.4)  # past idle_in_transaction_session_timeout (1 s), inside the watchdog's 2 s
        cursor.execute("SELECT 1")

    with pytest.raises(StoreUnavailable):
        a.transaction(slow)
    assert len(attempts) >= 1


def test_a_store_url_whose_connect_timeout_is_not_a_number_is_a_config_error():
    with pytest.raises(StoreConfigError, match="connect_timeout"):
        connection_options("postgresql:///firsttrust?host=/run/postgresql&connect_timeout=abc")


def test_a_record_that_would_not_read_back_is_refused_before_anything_is_written(two_hosts, pg_url):
    """The file store refused these already; the fleet store signed and stored them, and every
    host then read the name as corrupt."""
    a, _ = two_hosts
    identity, other = create_identity("appliance"), create_identity("appliance")
    base = record("app-01", identity)
    for bad in ({"pin": other.pin}, {"api_port": 0}, {"address": "10.0.0.5\x00"}):
        with pytest.raises(TrustStoreError):
            a.save(type(base)(**{**base.__dict__, **bad}))
        with pytest.raises(TrustStoreError):
            a.save_pending(type(base)(**{**base.__dict__, **bad}))
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pins").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM enrollments").fetchone()[0] == 0


def test_a_huge_row_written_into_the_database_is_never_read_out_of_it(two_hosts, pg_url, monkeypatch):
    """Every transaction reads the membership: one junk row of megabytes made every host fetch it."""
    a, b = two_hosts
    a.save(record("app-01", create_identity("appliance")))
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO members (host, pin, payload, signature) VALUES ('junk', 'sha256:00', %s, '')",
                     ("x" * (3 * MAX_PAYLOAD),))
        conn.execute("INSERT INTO pins (name, signer_pin, version, payload, signature) VALUES ('app-02', %s, 1, %s, '')",
                     (b.identity().pin, "y" * (3 * MAX_PAYLOAD)))
    seen = []
    real = signing.opened
    monkeypatch.setattr(signing, "opened", lambda cert, text, sig: seen.append(len(text or "")) or real(cert, text, sig))
    assert b.get("app-01").name == "app-01"
    records, problems = b.scan()
    assert [r.name for r in records] == ["app-01"] and len(problems) == 1
    assert seen and max(seen) <= MAX_PAYLOAD


def test_import_files_never_replaces_a_pin_the_fleet_holds_for_another_key(two_hosts, tmp_path, pg_url):
    a, _ = two_hosts
    fleets, old = create_identity("appliance"), create_identity("appliance")
    a.save(record("app-01", fleets, "10.0.0.5"))
    files = TrustStore(tmp_path / "old-files")
    files.save(record("app-01", old, "10.9.9.9"))
    files.save(record("app-02", old, "10.9.9.8"))
    done = _cli("store", "import-files", "--from", str(files.home), home=a.home, url=pg_url, check=False)
    assert done.returncode == 3, done.stderr
    assert "not imported app-01" in done.stderr and "Traceback" not in done.stderr
    assert a.get("app-01").pin == fleets.pin
    assert a.get("app-02").pin == old.pin


def test_fleet_pending_shows_the_databases_unsigned_text_on_one_bounded_line(two_hosts, pg_url):
    a, _ = two_hosts
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO enrollments (name, holder, lease_until) VALUES ('app-01', %s, now())",
                     ("evil\x1b[2J\nforged line" + "z" * 100_000,))
    done = _cli("fleet", "pending", home=a.home, url=pg_url, check=False)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert len(done.stdout) < 2000 and len(done.stdout.splitlines()) == 2


def test_an_enrollment_that_waits_past_its_lease_keeps_its_claim_and_a_lost_claim_stops_it(two_hosts, pg_url,
                                                                                           monkeypatch):
    """The lease was renewed only when the pending pin was stored: a host waiting for a booting
    appliance longer than the lease lost the claim to another host while it still retried."""
    import asyncio
    import socket
    import time

    from firsttrust.credentials import EnrollmentSecrets
    from firsttrust.requester.library import enroll_appliance
    from firsttrust.requester.store.errors import HeldByHost

    a, b = two_hosts
    monkeypatch.setenv("FIRSTTRUST_FLEET_LEASE", "5")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens: the appliance is still booting
    ended = {}

    def host_a():
        try:
            asyncio.run(enroll_appliance(f"127.0.0.1:{port}", EnrollmentSecrets.generate(), name="app-01", store=a,
                                         deadline=7))
        except Exception as exc:  # noqa: BLE001 - the deadline, in the end
            ended["a"] = exc

    thread = threading.Thread(target=host_a)
    thread.start()
    try:
        time.sleep(6.0)  # past the lease taken at the claim
        assert thread.is_alive()
        with pytest.raises(HeldByHost, match="host-a"):
            b.claim("app-01")
    finally:
        thread.join(30)
    assert type(ended["a"]).__name__ == "DeadlineExceeded"

    # And a host whose claim was taken over stops at its next retry instead of going on.
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO enrollments (name, holder, lease_until) VALUES ('app-02', 'host-b', "
                     "now() + interval '1 hour')")
    with pytest.raises(HeldByHost, match="lapsed"):
        a.renew("app-02")


def test_a_fleet_profile_with_a_bad_anchor_is_a_config_error_naming_the_file(tmp_path):
    from firsttrust.requester.store.config import load_profile

    (tmp_path / "fleet.json").write_text('{"anchor_pin": "sha256:not-a-pin"}')
    with pytest.raises(StoreConfigError, match="fleet.json is corrupt") as caught:
        load_profile(tmp_path)
    assert caught.value.code == "store_config"
