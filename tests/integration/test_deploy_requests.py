"""What a deploy asks of vCenter: the deployer's own session, counted by the lab's vCenter per method
(lab/go/vcsim/requests.go), for 20 appliances cloned, booted, enrolled and scrubbed. The waits are
one WaitForUpdatesEx stream for the whole run (requester/vsphere_wait.py), so every other request
is a constant per appliance, whatever the boot takes; docs/deployment.md ("What a deploy asks of
vCenter") quotes the numbers this prints."""

from __future__ import annotations

import time
from collections import Counter

from vcsim_fixture import Guests, vcenter_session, vcsim  # noqa: F401 - the fixture

from firsttrust.requester.deployer import VcenterAccess, deploy
from firsttrust.requester.deployplan import appliance_names, plan_deployment
from firsttrust.requester.truststore import TrustStore
from firsttrust.requester.vcenter_tls import pinned_context

COUNT = 20
# Per appliance, not counting WaitForUpdatesEx: clone, power-on and reconfigure (3 tasks) and the
# guest IP are 4 watched objects (CreateFilter, DestroyPropertyFilter, at most one
# CancelWaitForUpdates each: up to 12), the 3 task calls, 2 reads of the configuration: 17 at most,
# 14.1-14.2 measured (fewer cancels than watches: a wait is not always in flight). The run's own
# (the inventory, the collector, logout) add 6 in all.
MAX_PER_APPLIANCE = 16


def test_twenty_appliances_cost_a_constant_number_of_requests_each(vcsim, tmp_path, capsys):
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    plan = plan_deployment(vcsim.url, "DC0_H0_VM0", appliance_names(prefix="req", count=COUNT))
    access = VcenterAccess.load(vcsim.url, pinned_context(vcsim.thumbprint_sha1), environ=vcsim.credentials_env())
    vc = vcenter_session(vcsim)
    key = vc.session_key()
    before = Counter(vcsim.lab.requests()["sessions"].get(key, {}).get("methods", {}))
    started = time.monotonic()
    try:
        with Guests(vcsim, "req-", tmp_path / "guests") as guests:
            reports = deploy(plan, access, secrets_dir, concurrency=8, ip_timeout=60,
                             store=TrustStore(tmp_path / "home"), vcenter=vc)
    finally:
        vc.close()
    elapsed = time.monotonic() - started
    assert not guests.errors, guests.errors
    assert [r.status for r in reports] == ["enrolled"] * COUNT, [(r.name, str(r.error)) for r in reports]
    counted = Counter(vcsim.lab.requests()["sessions"][key]["methods"]) - before
    waits = counted.pop("WaitForUpdatesEx", 0)
    others = sum(counted.values())
    # one task per step and appliance, exactly: nothing polled, nothing repeated
    assert counted["CloneVM_Task"] == counted["PowerOnVM_Task"] == counted["ReconfigVM_Task"] == COUNT
    # a filter per watched object; those still there at the end go with the collector
    assert counted["CreateFilter"] == 4 * COUNT and counted["DestroyPropertyFilter"] <= 4 * COUNT
    assert counted["CreatePropertyCollector"] == counted["DestroyPropertyCollector"] == 1
    assert counted["CancelWaitForUpdates"] <= 4 * COUNT + 2
    assert others <= MAX_PER_APPLIANCE * COUNT, dict(counted)
    # the waits are one stream for the run: at most one a second, plus one per update delivered
    assert waits <= elapsed + 4 * COUNT + 5, (waits, elapsed)
    with capsys.disabled():
        print(f"\n{COUNT} appliances: {others} requests besides the waits ({others / COUNT:.1f} per appliance), "
              f"{waits} WaitForUpdatesEx in {elapsed:.1f} s; by method: {dict(sorted(counted.items()))}")
