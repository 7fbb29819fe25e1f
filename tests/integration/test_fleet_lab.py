"""Issue 30's done-when on lab appliances: `firsttrust-lab up 20` deploys twenty appliances through the
lab's vCenter (each an agent process of its own on its own loopback address, as on a VM), and two
fleet hosts sharing PostgreSQL race `firsttrust enroll` on all of them: exactly one enrollment each,
then either host calls any of them. test_fleet.py proves the same on in-process agents, quicker,
with every kill step; this one proves it on what a user brings up."""

from __future__ import annotations

import asyncio
import json

from pg_fixture import pg_server, pg_url  # noqa: F401 - fixtures
from test_fleet import firsttrust, host_env, hosts, outcomes  # noqa: F401 - the hosts fixture
from test_lab import lab_root  # noqa: F401 - the fixture

from firsttrust.agent.state import StateDir
from firsttrust.lab.cli import main as lab
from firsttrust.lab.manager import Manager
from firsttrust.requester.library import open_session

COUNT = 20


def authorized_pins(state_dir) -> set[str]:
    return {entry["pin"] for entry in StateDir(state_dir).authorized()}


async def test_two_hosts_race_on_20_lab_appliances_with_exactly_one_enrollment_each_then_either_calls_any(
        lab_root, tmp_path, pg_url, hosts, capsys):
    a, b = hosts
    try:
        assert lab(["up", str(COUNT), "--root", str(lab_root)]) == 0
        capsys.readouterr()
        appliances = {app.name: app for app in Manager(lab_root).running()}
        assert len(appliances) == COUNT
        targets = lab_root / "secrets" / "targets.csv"
        race = [firsttrust("enroll", "--targets", str(targets), "--json", "--deadline", "240",
                           env=host_env(store.home, pg_url)) for store in (a, b)]
        (rc_a, out_a, err_a), (rc_b, out_b, err_b) = await asyncio.gather(*race)
        got = {"host-a": outcomes(out_a), "host-b": outcomes(out_b)}
        assert set(got["host-a"]) == set(got["host-b"]) == set(appliances), (err_a, err_b)
        for name, app in appliances.items():
            rows = {host: got[host][name] for host in got}
            enrolled = [host for host, row in rows.items() if row["status"] == "enrolled"]
            assert len(enrolled) == 1, rows
            (winner,), loser = enrolled, next(h for h in rows if h not in enrolled)
            row = rows[loser]
            assert row["status"] == "already-pinned" or (row["error"]["code"] == "held_by_host"
                                                         and winner in row["error"]["message"]), row
            assert len(authorized_pins(app.state_dir)) == 1, name  # the appliance committed one key
        assert len(a.list()) == COUNT and a.claims() == []

        for store in (a, b):  # each host pushes the other's key to the appliances it enrolled
            rc, out, err = await firsttrust("fleet", "sync", env=host_env(store.home, pg_url))
            assert rc == 0, (out, err)
        for name, app in appliances.items():
            assert authorized_pins(app.state_dir) == {a.identity().pin, b.identity().pin}, name
            identity = StateDir(app.state_dir).load_identity().pin
            for store in (a, b):
                async with open_session(name, store=store) as api:
                    assert (await api.get("/v1/identity"))["pin"] == identity, name
        for store, name in ((a, "app-03"), (b, "app-17")):  # and as a user would, from the command line
            rc, out, err = await firsttrust("call", name, "GET", "/v1/identity", env=host_env(store.home, pg_url))
            assert rc == 0 and json.loads(out)["pin"] == StateDir(appliances[name].state_dir).load_identity().pin, err
    finally:
        assert lab(["down", "--root", str(lab_root)]) == 0
