"""The fleet store's calls made by the library and by `fleet sync` (docs/fleet.md sections 3 and 7):
store calls run off the event loop (with PostgreSQL they are round trips, and retries that sleep
during an outage), and sync never revokes a key the admin-signed membership does not say is removed."""

from __future__ import annotations

import threading

import pytest

from firsttrust.identity import create_identity
from firsttrust.requester.library import enroll_appliance
from firsttrust.requester.store import fleet
from firsttrust.requester.store.errors import UntrustedRecord
from firsttrust.requester.store.pgstore import Member
from firsttrust.requester.truststore import TrustStore
from firsttrust.credentials import EnrollmentSecrets


class Stop(Exception):
    pass


class ThreadRecordingStore(TrustStore):
    """A store over the network, as PgStore, that notes the thread of each call the enrollment
    makes before any traffic."""

    remote = True

    def __init__(self, home) -> None:
        super().__init__(home)
        self.threads: dict[str, list[threading.Thread]] = {}

    def _note(self, call: str) -> None:
        self.threads.setdefault(call, []).append(threading.current_thread())

    def get_pending(self, name):
        self._note("get_pending")
        if len(self.threads["get_pending"]) > 1:
            raise Stop()  # the attempt's recovery check: far enough
        return super().get_pending(name)

    def get(self, name):
        self._note("get")
        return super().get(name)


async def test_the_enrollments_store_calls_run_off_the_event_loop(tmp_path):
    store = ThreadRecordingStore(tmp_path / "home")
    store.identity()  # created here, before the enrollment
    loop_thread = threading.current_thread()
    with pytest.raises(Stop):
        await enroll_appliance("127.0.0.1:1", EnrollmentSecrets.generate(), name="app-01", store=store,
                               deadline=1)
    assert set(store.threads) == {"get_pending", "get"}, store.threads
    assert all(thread is not loop_thread for threads in store.threads.values() for thread in threads)


class Api:
    def __init__(self) -> None:
        self.calls = []

    async def post(self, path, body):
        self.calls.append(("POST", path))

    async def delete(self, path):
        self.calls.append(("DELETE", path))


def _member(removed: bool) -> Member:
    identity = create_identity("firsttrust-requester host-b")
    return Member("host-b", identity.pin, identity.cert_pem.decode(), removed, 1)


async def test_sync_revokes_only_a_member_whose_signed_record_says_removed():
    current, removed = _member(False), _member(True)
    api = Api()
    for member, pin in ((current, current.pin), (None, "sha256:" + "00" * 32)):
        with pytest.raises(UntrustedRecord) as caught:
            await fleet._apply(api, member, pin, "revoke")
        assert caught.value.code == "fleet_untrusted_record"
    with pytest.raises(UntrustedRecord):
        await fleet._apply(api, removed, removed.pin, "authorize")
    assert api.calls == []  # nothing was sent for any of them
    await fleet._apply(api, removed, removed.pin, "revoke")
    await fleet._apply(api, current, current.pin, "authorize")
    assert api.calls == [("DELETE", f"/v1/authorized-keys/{removed.pin}"), ("POST", "/v1/authorized-keys")]
