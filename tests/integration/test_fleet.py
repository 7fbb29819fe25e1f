"""A fleet of requester hosts against real appliances (docs/fleet.md), on a PostgreSQL server the
tests start: two requester processes racing on 20 appliances, any host calling any appliance, a
removed host refused by the appliances, a killed host's enrollment finished by another, the
database restarted mid-batch.

The appliances are the agent's own enrollment server and API, in this test's process on loopback
(agent_fixture); each requester host is a separate process with its own $FIRSTTRUST_HOME (its own
key) and the shared FIRSTTRUST_STORE.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from agent_fixture import provisioned
from pg_fixture import pg_server, pg_url  # noqa: F401 - fixtures

from firsttrust.agent.api import start_api, stop_api
from firsttrust.requester.errors import ApiError, ConnectionFailed
from firsttrust.requester.library import open_session
from firsttrust.requester.store import fleet
from firsttrust.requester.store.pgstore import PgStore

ROOT = Path(__file__).resolve().parents[2]


class Lab:
    """`count` appliances, each with its enrollment listener and its pinned mutual-TLS API."""

    def __init__(self, tmp_path: Path, count: int) -> None:
        self.tmp_path, self.count = tmp_path, count
        self.apps, self.runners = [], []

    async def __aenter__(self) -> "Lab":
        for i in range(self.count):
            app = provisioned(self.tmp_path / f"app-{i:02d}")
            await app.start(phase_timeout=30.0)
            runner, contexts = await start_api(app.store, "127.0.0.1", 0)
            app.server.api_port = runner.addresses[0][1]
            app.server.on_enrolled = _reloader(contexts)
            self.apps.append(app)
            self.runners.append(runner)
        return self

    async def __aexit__(self, *exc_info) -> None:
        for runner in self.runners:
            await stop_api(runner)
        for app in self.apps:
            await app.stop()

    def targets(self, directory: Path, indices=None) -> Path:
        directory.mkdir(exist_ok=True)
        rows = []
        for i in (range(self.count) if indices is None else indices):
            secrets = directory / f"app-{i:02d}.secrets.json"
            secrets.write_text(json.dumps({"sec_a": self.apps[i].secrets.sec_a, "sec_b": self.apps[i].secrets.sec_b}))
            secrets.chmod(0o600)
            rows.append({"name": f"app-{i:02d}", "address": f"127.0.0.1:{self.apps[i].port}",
                         "secrets": secrets.name})
        path = directory / "targets.json"
        path.write_text(json.dumps(rows))
        return path

    def authorized_pins(self, i: int) -> set[str]:
        return {entry["pin"] for entry in self.apps[i].store.authorized()}


def _reloader(contexts):
    async def reload(_authorization):
        contexts.reload()
    return reload


def host_env(home: Path, url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "FIRSTTRUST_HOME": str(home), "FIRSTTRUST_STORE": url, **extra}
    env.pop("PGPASSWORD", None)
    return env


async def firsttrust(*args: str, env: dict[str, str], timeout: float = 300) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "firsttrust.requester.cli", *args, cwd=ROOT,
                                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def hosts(tmp_path, pg_url):
    """host-a (the admin) and host-b, members of one fleet; their homes."""
    a = PgStore(pg_url, tmp_path / "host-a")
    fleet.create(a, "host-a")
    b = PgStore(pg_url, tmp_path / "host-b")
    fleet.join(b.home, a.membership().admin_pin, None, "host-b")
    fleet.add_host(a, "host-b", b.identity().cert_pem)
    return a, b


def outcomes(stdout: str) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(stdout)}


async def test_two_hosts_race_on_20_appliances_with_exactly_one_enrollment_each_then_either_calls_any(
        tmp_path, pg_url, hosts):
    a, b = hosts
    async with Lab(tmp_path / "lab", 20) as lab:
        targets = lab.targets(tmp_path / "batch")
        race = [firsttrust("enroll", "--targets", str(targets), "--json", "--workers", "1", "--deadline", "120",
                           env=host_env(store.home, pg_url)) for store in (a, b)]
        (rc_a, out_a, err_a), (rc_b, out_b, err_b) = await asyncio.gather(*race)
        got = {"host-a": outcomes(out_a), "host-b": outcomes(out_b)}
        for i in range(20):
            name = f"app-{i:02d}"
            statuses = sorted(got[h][name]["status"] for h in got)
            assert statuses.count("enrolled") == 1, (name, got["host-a"][name], got["host-b"][name])
            loser = next(h for h in got if got[h][name]["status"] != "enrolled")
            winner = "host-b" if loser == "host-a" else "host-a"
            row = got[loser][name]
            # the other reports which host holds it, or finds it pinned by the fleet already
            assert row["status"] == "already-pinned" or (row["error"]["code"] == "held_by_host"
                                                         and winner in row["error"]["message"]), row
            assert len(lab.authorized_pins(i)) == 1  # one enrollment: one key committed by the appliance
        assert len(a.list()) == 20 and a.claims() == []
        # each host pushes the other's key to the appliances it enrolled
        for store in (a, b):
            rc, out, err = await firsttrust("fleet", "sync", env=host_env(store.home, pg_url))
            assert rc == 0, (out, err)
        for i in range(20):
            assert lab.authorized_pins(i) == {a.identity().pin, b.identity().pin}
        for store in (a, b):
            for i in range(20):
                async with open_session(f"app-{i:02d}", store=store) as api:
                    assert (await api.get("/v1/identity"))["pin"] == lab.apps[i].store.load_identity().pin
        rc, out, err = await firsttrust("call", "app-07", "GET", "/v1/identity", env=host_env(b.home, pg_url))
        assert rc == 0 and json.loads(out)["pin"] == lab.apps[7].store.load_identity().pin, err


async def test_a_removed_host_is_refused_by_the_appliances_once_sync_has_reached_them(tmp_path, pg_url, hosts):
    a, b = hosts
    async with Lab(tmp_path / "lab", 3) as lab:
        rc, out, err = await firsttrust("enroll", "--targets", str(lab.targets(tmp_path / "batch")), "--json",
                                        "--workers", "1", env=host_env(a.home, pg_url))
        assert rc == 0, err
        assert (await firsttrust("fleet", "sync", env=host_env(a.home, pg_url)))[0] == 0
        async with open_session("app-01", store=b) as api:
            await api.get("/v1/health")
        rc, out, err = await firsttrust("fleet", "remove-host", "host-b", env=host_env(a.home, pg_url))
        assert rc == 0, err
        rc, out, err = await firsttrust("fleet", "sync", env=host_env(a.home, pg_url))
        assert rc == 0, (out, err)
        for i in range(3):
            assert b.identity().pin not in lab.authorized_pins(i)
            # host-b still holds its key and the pins: the appliance itself refuses it
            record = a.get(f"app-{i:02d}")
            from firsttrust.requester.session import PinnedSession
            with pytest.raises((ConnectionFailed, ApiError)):
                async with PinnedSession(record.address, record.api_port, record.certificate.encode(), b.key_path,
                                         b.cert_path) as api:
                    await api.get("/v1/health")
        rc, out, err = await firsttrust("call", "app-00", "GET", "/v1/health", env=host_env(b.home, pg_url))
        assert rc != 0 and "not a current member" in err, err


KILLED_HOST = """
import asyncio, os, sys
from firsttrust.requester.library import enroll_appliance, load_secrets
from firsttrust.requester.store import open_store
store = open_store()
step = sys.argv[1]
original = getattr(store, step)
def killed(*args, **kwargs):
    if step == "save_pending":
        original(*args, **kwargs)  # the pending pin is stored; `finish` is never sent
    os._exit(9)  # as kill -9: no release, no cleanup
setattr(store, step, killed)
asyncio.run(enroll_appliance(sys.argv[2], load_secrets(sys.argv[3]), name=sys.argv[4], store=store))
"""


async def kill_host_at(step: str, store: PgStore, url: str, lab: Lab, i: int, secrets: Path) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_HOST, step, f"127.0.0.1:{lab.apps[i].port}", str(secrets), f"app-{i:02d}",
        cwd=ROOT, env=host_env(store.home, url, FIRSTTRUST_FLEET_LEASE="1"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode


async def test_a_host_killed_before_finish_leaves_an_enrollment_the_other_host_finishes(tmp_path, pg_url, hosts):
    a, b = hosts
    async with Lab(tmp_path / "lab", 1) as lab:
        lab.targets(tmp_path / "batch")
        secrets = tmp_path / "batch" / "app-00.secrets.json"
        assert await kill_host_at("save_pending", a, pg_url, lab, 0, secrets) == 9
        [claim] = b.claims()
        assert (claim.holder, claim.pending_host) == ("host-a", "host-a")
        await asyncio.sleep(1.2)  # host-a's lease expires
        rc, out, err = await firsttrust("enroll", f"127.0.0.1:{lab.apps[0].port}", "--secrets", str(secrets),
                                        "--name", "app-00", env=host_env(b.home, pg_url))
        assert rc == 0 and out.startswith("enrolled app-00"), err
        assert lab.authorized_pins(0) == {b.identity().pin} and b.claims() == []
        assert a.get("app-00").pin == lab.apps[0].store.load_identity().pin


async def test_a_host_killed_after_the_commit_is_reported_held_by_it_and_finished_when_it_runs_again(
        tmp_path, pg_url, hosts):
    a, b = hosts
    async with Lab(tmp_path / "lab", 1) as lab:
        lab.targets(tmp_path / "batch")
        secrets = tmp_path / "batch" / "app-00.secrets.json"
        assert await kill_host_at("promote", a, pg_url, lab, 0, secrets) == 9
        assert lab.authorized_pins(0) == {a.identity().pin}  # committed to host-a's key
        await asyncio.sleep(1.2)
        rc, out, err = await firsttrust("enroll", f"127.0.0.1:{lab.apps[0].port}", "--secrets", str(secrets),
                                        "--name", "app-00", env=host_env(b.home, pg_url))
        assert rc == 1 and "host-a" in err, err  # held_by_host: only host-a's key can confirm it
        rc, out, err = await firsttrust("enroll", f"127.0.0.1:{lab.apps[0].port}", "--secrets", str(secrets),
                                        "--name", "app-00", env=host_env(a.home, pg_url))
        assert rc == 0 and out.startswith("enrolled app-00"), err
        assert (await firsttrust("fleet", "sync", env=host_env(a.home, pg_url)))[0] == 0
        async with open_session("app-00", store=b) as api:
            assert (await api.get("/v1/identity"))["pin"] == lab.apps[0].store.load_identity().pin


async def test_the_database_restarted_mid_batch_loses_no_enrollment(tmp_path, pg_url, pg_server, hosts):
    a, b = hosts
    async with Lab(tmp_path / "lab", 8) as lab:
        batch = asyncio.ensure_future(firsttrust(
            "enroll", "--targets", str(lab.targets(tmp_path / "batch")), "--json", "--workers", "1",
            "--concurrency", "2", env=host_env(a.home, pg_url)))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for _ in range(600):
                if conn.execute("SELECT count(*) FROM pins").fetchone()[0] >= 1 or batch.done():
                    break
                await asyncio.sleep(0.1)
        await asyncio.to_thread(pg_server.restart)
        rc, out, err = await batch
        assert rc == 0, err
        assert all(row["status"] == "enrolled" for row in json.loads(out))
        assert len(b.list()) == 8 and b.claims() == []
        for i in range(8):
            assert lab.authorized_pins(i) == {a.identity().pin}


async def test_held_by_host_is_refused_before_anything_is_sent(tmp_path, pg_url, hosts):
    a, b = hosts
    async with Lab(tmp_path / "lab", 1) as lab:
        a.claim("app-00")
        lab.targets(tmp_path / "batch")
        rc, out, err = await firsttrust("enroll", f"127.0.0.1:{lab.apps[0].port}", "--secrets",
                                        str(tmp_path / "batch" / "app-00.secrets.json"), "--name", "app-00",
                                        env=host_env(b.home, pg_url))
        assert rc == 1 and "host-a holds" in err, err
        assert lab.apps[0].connections_started == 0


async def test_a_revoke_of_a_current_member_written_by_a_database_writer_is_refused_by_sync(tmp_path, pg_url, hosts):
    a, b = hosts
    async with Lab(tmp_path / "lab", 1) as lab:
        rc, out, err = await firsttrust("enroll", "--targets", str(lab.targets(tmp_path / "batch")), "--json",
                                        "--workers", "1", env=host_env(a.home, pg_url))
        assert rc == 0, err
        await fleet.sync(a)
        assert lab.authorized_pins(0) == {a.identity().pin, b.identity().pin}
        with psycopg.connect(pg_url) as conn:  # a database writer, no key: "revoke host-a"
            conn.execute("UPDATE grants SET action = 'revoke', state = 'pending' WHERE member_pin = %s",
                         (a.identity().pin,))
        rc, out, err = await firsttrust("fleet", "sync", env=host_env(b.home, pg_url))
        assert rc == 1 and "fleet_untrusted_record" in err and a.identity().pin in err, (out, err)
        assert lab.authorized_pins(0) == {a.identity().pin, b.identity().pin}  # host-a's key was not deleted
        async with open_session("app-00", store=a) as api:
            await api.get("/v1/health")


async def test_a_removed_hosts_key_is_revoked_even_if_a_database_writer_deleted_or_flipped_its_revoke(
        tmp_path, pg_url, hosts):
    a, b = hosts
    async with Lab(tmp_path / "lab", 2) as lab:
        rc, out, err = await firsttrust("enroll", "--targets", str(lab.targets(tmp_path / "batch")), "--json",
                                        "--workers", "1", env=host_env(a.home, pg_url))
        assert rc == 0, err
        await fleet.sync(a)
        assert all(b.identity().pin in lab.authorized_pins(i) for i in range(2))
        fleet.remove_host(a, "host-b")
        with psycopg.connect(pg_url) as conn:  # a database writer hides the revokes the removal queued
            conn.execute("DELETE FROM grants WHERE appliance = 'app-00' AND member_pin = %s", (b.identity().pin,))
            conn.execute("UPDATE grants SET action = 'authorize', state = 'applied' WHERE appliance = 'app-01' "
                         "AND member_pin = %s", (b.identity().pin,))
        result = await fleet.sync(a)  # the work comes from the admin-signed membership: host-b is removed
        assert result.left == [] and result.refused == [], result
        assert all(b.identity().pin not in lab.authorized_pins(i) for i in range(2))
        assert (await fleet.sync(a)).applied == 0  # recorded as applied: nothing left to do
