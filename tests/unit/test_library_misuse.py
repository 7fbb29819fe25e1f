"""The requester as a library, used wrongly: each misuse is a typed error naming what is wrong,
at once, and one bad target in a batch is that target's outcome, not the batch's end."""

from __future__ import annotations

import asyncio

import pytest

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.errors import FirsttrustError
from firsttrust.requester.batch import InvalidTargets, Target, read_targets
from firsttrust.requester.enroll import InvalidAddress, parse_address
from firsttrust.requester.library import enroll_appliance_sync, enroll_many, load_secrets
from firsttrust.requester.truststore import TrustStore, TrustStoreError


@pytest.fixture
def store(tmp_path):
    return TrustStore(tmp_path / "home")


@pytest.mark.parametrize("concurrency", [0, -1, None, 1.5])
def test_a_concurrency_below_one_is_a_value_error_not_a_batch_that_waits_forever(store, concurrency):
    targets = [Target("a", "127.0.0.1:1", EnrollmentSecrets.generate())]
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(asyncio.wait_for(enroll_many(targets, concurrency=concurrency, store=store, workers=1), 10))


def test_a_target_that_is_not_a_target_is_a_type_error_naming_it(store):
    with pytest.raises(TypeError, match="Target objects.*not str"):
        asyncio.run(enroll_many(["127.0.0.1:1"], store=store, workers=1))


def test_a_bad_address_is_that_targets_outcome_and_the_rest_of_the_batch_runs(store):
    targets = [Target("bad", "bad:addr", EnrollmentSecrets.generate()),
               Target("label", "x..y", EnrollmentSecrets.generate()),
               Target("closed", "127.0.0.1:1", EnrollmentSecrets.generate())]
    outcomes = asyncio.run(enroll_many(targets, store=store, workers=1, deadline=0.5))
    assert [o.target.name for o in outcomes] == ["bad", "label", "closed"]
    assert isinstance(outcomes[1].error, InvalidAddress)  # the resolver's UnicodeError never reached
    assert isinstance(outcomes[0].error, InvalidAddress) and outcomes[0].error.code == "invalid_address"
    assert "'bad:addr'" in str(outcomes[0].error)
    assert isinstance(outcomes[2].error, FirsttrustError) and not isinstance(outcomes[2].error, InvalidAddress)


@pytest.mark.parametrize("address", ["127.0.0.1:xx", "h:0", "h:70000", "[::1", "[::1]x", "a b", None, 5,
                                     "x..y", "x..y:8790", "a" * 64 + ".example"])
def test_parse_address_raises_a_typed_error_that_is_still_a_value_error(address):
    with pytest.raises(InvalidAddress) as caught:
        parse_address(address, 8790)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_a_path_with_a_nul_byte_is_the_readers_typed_error_with_no_nul_in_it(tmp_path):
    with pytest.raises(InvalidTargets) as targets:
        read_targets(str(tmp_path / "x\0y"))
    with pytest.raises(TrustStoreError) as secrets:
        load_secrets(str(tmp_path / "a\0b"))
    for caught in (targets, secrets):
        assert "\0" not in str(caught.value) and "NUL" in str(caught.value)


@pytest.mark.parametrize("call, message", [
    (lambda s, st: enroll_appliance_sync("127.0.0.1:1", {"sec_a": "x", "sec_b": "y"}, name="a", store=st),
     "secrets must be an EnrollmentSecrets"),
    (lambda s, st: enroll_appliance_sync("127.0.0.1:1", None, name="a", store=st), "not NoneType"),
    (lambda s, st: enroll_appliance_sync("127.0.0.1:1", s, name="a", store=st, ssh_key=5), "ssh_key must be"),
    (lambda s, st: enroll_appliance_sync("127.0.0.1:1", s, name="a", store=st, foo=2),
     r"enroll_appliance\(\) got an unexpected keyword argument 'foo'"),
    (lambda s, st: asyncio.run(enroll_many([Target("a", "127.0.0.1:1", s)], store=st, name="x")),
     r"enroll_many\(\) got an unexpected keyword argument 'name'"),
], ids=["secrets-a-dict", "secrets-none", "ssh-key-int", "unknown-keyword", "many-with-a-name"])
def test_a_wrong_argument_is_a_type_error_naming_it_before_any_key_is_made(store, call, message):
    with pytest.raises(TypeError, match=message):
        call(EnrollmentSecrets.generate(), store)
    assert not store.key_path.exists()


def test_pin_certificate_takes_pem_text_and_refuses_a_bad_port_or_way_before_pinning(store):
    from firsttrust.identity import create_identity
    from firsttrust.requester.library import pin_certificate

    identity = create_identity("app")
    for kwargs, message in (({"api_port": "8791"}, "api_port"), ({"api_port": 0}, "api_port"),
                            ({"embodiment": "srp"}, "embodiment")):
        with pytest.raises(ValueError, match=message):
            pin_certificate("app", "127.0.0.9", identity.cert_pem, store=store, **kwargs)
    assert store.list() == [] and not store.key_path.exists()
    record = pin_certificate("app", "127.0.0.9", identity.cert_pem.decode("ascii"), store=store)
    assert record.pin == identity.pin and store.get("app").pin == identity.pin


def test_a_targets_file_of_thousands_of_rows_is_read_and_a_bad_row_is_named_by_file_and_row(tmp_path):
    """MAX_TARGETS rows fit the targets file's own cap (the 64 KiB secrets-file cap held ~1,000),
    and a bad value found while checking a row names the file and the row."""
    from firsttrust.requester.batch import MAX_TARGETS
    from firsttrust.requester.deployspec import secrets_to_json

    (tmp_path / "s.json").write_bytes(secrets_to_json(EnrollmentSecrets.generate()))
    rows = ["name,address,secrets"] + [f"appliance-{i:05d},10.0.{i // 250}.{i % 250 + 1}:8790,s.json"
                                       for i in range(MAX_TARGETS)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    assert (tmp_path / "t.csv").stat().st_size > 64 * 1024
    assert len(read_targets(str(tmp_path / "t.csv"))) == MAX_TARGETS
    for row, problem in (("a,x..y,s.json", "invalid address"), ("a,10.0.0.1,missing.json", "missing.json"),
                         ("a b,10.0.0.1,s.json", "invalid name")):
        (tmp_path / "bad.csv").write_text(f"name,address,secrets\nok,10.0.0.2,s.json\n{row}\n")
        with pytest.raises(FirsttrustError) as refused:
            read_targets(str(tmp_path / "bad.csv"))
        assert f"targets file {tmp_path / 'bad.csv'}, row 2: " in str(refused.value) and problem in str(refused.value)


def _record(name, identity):
    from firsttrust.requester.truststore import ApplianceRecord

    return ApplianceRecord(name=name, address="10.0.0.5", pin=identity.pin, certificate=identity.cert_pem.decode(),
                           api_port=8791)


def test_a_name_twice_among_the_targets_is_refused_before_anything_is_sent(store, monkeypatch):
    """Both would enroll, and the second pin would replace the first: that appliance's secrets
    spent, its window closed, nothing pinned for it."""
    from firsttrust.requester import library

    sent = []
    monkeypatch.setattr(library, "_enroll_appliance", lambda *a, **k: sent.append(a))
    twice = Target("app", "127.0.0.1:1", EnrollmentSecrets.generate())
    for targets in ([twice, Target("app", "127.0.0.2:1", EnrollmentSecrets.generate())], [twice, twice]):
        with pytest.raises(ValueError, match="'app' appears twice"):
            asyncio.run(enroll_many(targets, store=store, workers=1))
    with pytest.raises(TypeError, match="secrets must be an EnrollmentSecrets"):
        asyncio.run(enroll_many([Target("a", "127.0.0.1:1", {"sec_a": "x"})], store=store, workers=1))
    for deadline in ("5", None, float("nan"), -1):
        with pytest.raises(ValueError, match="deadline"):
            asyncio.run(enroll_many([Target("a", "127.0.0.1:1", EnrollmentSecrets.generate())], store=store,
                                    workers=1, deadline=deadline))
    assert sent == []


def test_a_bug_in_one_enrollment_of_a_batch_stops_the_others_before_it_is_raised(store, monkeypatch):
    """gather left them running unseen: enrolling appliances (spending their secrets) with nobody
    to record their pins."""
    from firsttrust.requester import library

    ended = []

    async def enrollment(address, secrets, *, name, **kwargs):
        if name == "bug":
            await asyncio.sleep(0.05)
            raise RuntimeError("a bug")
        try:
            await asyncio.sleep(5)
        finally:
            ended.append(name)

    monkeypatch.setattr(library, "_enroll_appliance", enrollment)
    targets = [Target(n, "127.0.0.1:1", EnrollmentSecrets.generate()) for n in ("a", "bug", "b")]

    async def caller() -> list[str]:
        with pytest.raises(RuntimeError, match="a bug"):
            await enroll_many(targets, store=store, workers=1)
        return sorted(ended)  # when the caller hears of it, not when asyncio.run tidies up

    assert asyncio.run(caller()) == ["a", "b"]


def test_a_store_that_cannot_be_written_is_a_trust_store_error_naming_the_file(store, monkeypatch):
    import errno

    from firsttrust.identity import create_identity
    from firsttrust.requester import truststore

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(truststore, "write_atomic", full)
    with pytest.raises(TrustStoreError, match=r"cannot write .*app1\.json: No space left on device"):
        store.save(_record("app1", create_identity("appliance")))


def test_a_record_that_would_not_read_back_is_never_written(store):
    """Recovery pinned SSH host keys unchecked: the pin was written, every later use of the name
    then called it corrupt."""
    import dataclasses

    from firsttrust.identity import create_identity

    bad = dataclasses.replace(_record("app1", create_identity("appliance")), ssh_host_keys=("",))
    with pytest.raises(TrustStoreError, match="corrupt"):
        store.save(bad)
    assert not (store.appliances / "app1.json").exists()
    huge = dataclasses.replace(_record("app1", create_identity("appliance")),
                               ssh_host_keys=tuple(f"ssh-ed25519 {'A' * 300} k{i}" for i in range(1000)))
    with pytest.raises(TrustStoreError, match="larger than"):
        store.save(huge)


def test_pinning_a_name_another_process_pinned_to_another_key_meanwhile_is_refused_under_the_lock(
        store, monkeypatch):
    """The check before and the write after: the write is a compare-and-set under the store's lock."""
    from firsttrust.identity import create_identity
    from firsttrust.requester import identitycheck, library
    from firsttrust.requester.identitycheck import IdentityChanged

    first, second = create_identity("appliance"), create_identity("appliance")
    monkeypatch.setattr(identitycheck, "other_pin", lambda *args: None)  # the check passed: then the other process won
    store.save(_record("app", first))
    with pytest.raises(IdentityChanged, match="while this certificate"):
        library.pin_certificate("app", "10.0.0.6", second.cert_pem, store=store)
    assert store.get("app").pin == first.pin
    assert library.pin_certificate("app", "10.0.0.6", second.cert_pem, store=store, replace=True).pin == second.pin


@pytest.mark.parametrize("concurrency, workers", [(1, 2), (3, 2), (2, 4)])
def test_workers_never_run_more_enrollments_at_once_than_the_concurrency(store, monkeypatch, concurrency, workers):
    """Each worker got concurrency/workers rounded up: concurrency 1 on 2 workers ran 2 at once."""
    import threading

    from firsttrust.requester import library
    from firsttrust.requester.truststore import UnknownAppliance

    lock, now, peak = threading.Lock(), [0], [0]

    async def enrollment(address, secrets, *, name, **kwargs):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        await asyncio.sleep(0.01)
        with lock:
            now[0] -= 1
        raise UnknownAppliance("done")  # a typed outcome: nothing is pinned

    monkeypatch.setattr(library, "_enroll_appliance", enrollment)
    targets = [Target(f"a{i}", "127.0.0.1:1", EnrollmentSecrets.generate()) for i in range(24)]
    outcomes = asyncio.run(enroll_many(targets, store=store, concurrency=concurrency, workers=workers,
                                       worker_kind="thread"))
    assert [o.target.name for o in outcomes] == [t.name for t in targets]
    assert peak[0] == concurrency


def test_recovery_pins_only_the_ssh_host_keys_an_enrolled_frame_could_carry(store, monkeypatch):
    """The recovery path (a pending pin confirmed through the API) took any strings: an empty
    key, or 2,500 of them, gave a pin that every later use of the name called corrupt."""
    from firsttrust.identity import create_identity
    from firsttrust.requester import library

    appliance = create_identity("appliance")
    good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl host"
    served = {"pin": appliance.pin, "ssh_host_keys": ["", good, 5, "not a key"] + [good] * 40}

    class Session:
        def __init__(self, *args):
            pass

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

        async def get(self, path):
            return served

    monkeypatch.setattr(library, "PinnedSession", Session)
    pending = _record("app", appliance)
    record = asyncio.run(library._confirm_pending(store, pending, False))
    assert record.ssh_host_keys == (good,) * 16
    assert store.get("app").ssh_host_keys == (good,) * 16  # and it reads back


def test_a_call_without_the_requesters_key_is_a_trust_store_error_naming_it(store):
    from firsttrust.identity import create_identity
    from firsttrust.requester.library import call

    store.identity()
    store.save(_record("app", create_identity("appliance")))
    store.key_path.unlink()
    with pytest.raises(TrustStoreError, match="identity.key is missing"):
        asyncio.run(call("app", "GET", "/v1/identity", store=store))


def test_a_nan_or_text_deadline_is_refused_at_once_not_retried_for_ever(store):
    from firsttrust.requester.library import enroll_appliance

    for deadline in (float("nan"), "5", None, -1):
        with pytest.raises(ValueError, match="deadline"):
            asyncio.run(asyncio.wait_for(enroll_appliance("127.0.0.1:1", EnrollmentSecrets.generate(), name="a",
                                                          store=store, deadline=deadline), 10))


def test_a_session_used_outside_its_async_with_is_a_typed_error(tmp_path):
    from firsttrust.identity import create_identity
    from firsttrust.requester.errors import SessionClosed
    from firsttrust.requester.session import PinnedSession

    appliance, requester = create_identity("appliance"), create_identity("requester")
    (tmp_path / "k").write_bytes(requester.key_pem)
    (tmp_path / "c").write_bytes(requester.cert_pem)
    session = PinnedSession("127.0.0.1", 1, appliance.cert_pem, tmp_path / "k", tmp_path / "c")
    with pytest.raises(SessionClosed) as caught:
        asyncio.run(session.get("/v1/identity"))
    assert caught.value.code == "session_closed" and isinstance(caught.value, RuntimeError)
