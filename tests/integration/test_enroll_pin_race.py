"""A pin written by another process while an enrollment runs is never replaced silently
(review 2026-12-08): the name was unpinned when the enrollment began, `pin-cert` (or another
host) pinned it to another key meanwhile, and the enrollment's promote overwrote that pin."""

from __future__ import annotations

import pytest
from agent_fixture import provisioned
from test_serve import Serve

from firsttrust.identity import create_identity
from firsttrust.requester.identitycheck import IdentityChanged
from firsttrust.requester.library import enroll_appliance
from firsttrust.requester.truststore import ApplianceRecord, PinConflict, TrustStore


class _PinnedMeanwhile(TrustStore):
    """A file store where another process pins the name right after this one keeps its pending pin."""

    def __init__(self, home, other: ApplianceRecord) -> None:
        super().__init__(home)
        self.other = other

    def save_pending(self, record: ApplianceRecord) -> None:
        super().save_pending(record)
        TrustStore(self.home).save(self.other, same_key_only=True)  # pin-cert in another process


def _other(name: str) -> ApplianceRecord:
    other = create_identity("appliance")
    return ApplianceRecord(name=name, address="10.0.0.9", pin=other.pin, certificate=other.cert_pem.decode(),
                           api_port=8791, embodiment="injected-certificate")


async def test_a_pin_written_while_the_enrollment_ran_is_refused_kept_pending_and_replaced_only_on_request(tmp_path):
    app = provisioned(tmp_path / "app")
    serve = Serve(app.store.path)
    await serve.ready()
    address = f"127.0.0.1:{serve.enroll_port}"
    try:
        other = _other("app-01")
        with pytest.raises(IdentityChanged, match="while this enrollment ran"):
            await enroll_appliance(address, app.secrets, name="app-01", store=_PinnedMeanwhile(tmp_path / "home", other),
                                   deadline=20)
        store = TrustStore(tmp_path / "home")
        assert store.get("app-01").pin == other.pin  # the other process's pin stands
        pending = store.get_pending("app-01")
        assert pending is not None and pending.pin == app.store.load_identity().pin
        with pytest.raises(IdentityChanged):  # the same command again (recovery): still refused, nothing replaced
            await enroll_appliance(address, app.secrets, name="app-01", store=store, deadline=20)
        assert store.get("app-01").pin == other.pin
        record = await enroll_appliance(address, app.secrets, name="app-01", store=store, deadline=20, replace=True)
        assert record.pin == app.store.load_identity().pin == store.get("app-01").pin
        assert store.get_pending("app-01") is None
    finally:
        serve.stop()


def test_the_file_stores_promote_with_same_key_only_refuses_another_key_and_keeps_the_pending_pin(tmp_path):
    store = TrustStore(tmp_path / "home")
    mine, other = _other("app-01"), _other("app-01")
    store.save_pending(mine)
    store.save(other)
    with pytest.raises(PinConflict):
        store.promote(mine, same_key_only=True)
    assert store.get("app-01").pin == other.pin and store.get_pending("app-01") is not None
    store.promote(mine)
    assert store.get("app-01").pin == mine.pin and store.get_pending("app-01") is None
