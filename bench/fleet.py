"""fleet/one-host (issue 30, docs/fleet.md section 8): the same appliances enrolled and pinned by
two requester processes sharing the fleet store on PostgreSQL, over one requester process with the
file store; wall time, and the database's transactions per appliance (pg_stat_database).

Both fleet hosts are given the whole batch (the HA shape: either may finish any appliance), so
the claims decide who enrolls which. On one 2-core machine the two requester processes, the
appliances and PostgreSQL share the same cores: this measures the store's overhead and
contention, not scale. Deploying through vCenter is not part of it (the lab's vcsim deploy is
the same for both stores): enroll and pin only.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from firsttrust.credentials import EnrollmentSecrets

from .appliances import provision_many, serve, state_dir, stop
from .measure import quiet_audit

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FleetResult:
    count: int
    files_wall: float
    fleet_wall: float
    transactions_per_appliance: float
    enrolled: int

    @property
    def ratio(self) -> float:
        return self.fleet_wall / self.files_wall


def _targets(directory: Path, ports: list[int], secrets: list[EnrollmentSecrets]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (port, secret) in enumerate(zip(ports, secrets)):
        path = directory / f"app-{i:03d}.json"
        path.write_text(json.dumps({"sec_a": secret.sec_a, "sec_b": secret.sec_b}))
        path.chmod(0o600)
        rows.append({"name": f"app-{i:03d}", "address": f"127.0.0.1:{port}", "secrets": path.name})
    (directory / "targets.json").write_text(json.dumps(rows))
    return directory / "targets.json"


async def _enroll(targets: Path, home: Path, store: str) -> tuple[int, list[dict]]:
    env = {**os.environ, "FIRSTTRUST_HOME": str(home), "FIRSTTRUST_STORE": store}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "firsttrust.requester.cli", "enroll", "--targets",
                                                str(targets), "--json", cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return proc.returncode, json.loads(out or b"[]")


def _transactions(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    return int(row[0])


async def _run(root: Path, count: int, url: str) -> FleetResult:
    from firsttrust.requester.store import fleet
    from firsttrust.requester.store.pgstore import PgStore

    secrets = [EnrollmentSecrets.generate() for _ in range(2 * count)]
    provision_many(root / "appliances", secrets, max(1, min(2, os.cpu_count() or 1)))
    served = [await serve(state_dir(root / "appliances", i)) for i in range(2 * count)]
    try:
        files_targets = _targets(root / "files", [a.port for a in served[:count]], secrets[:count])
        start = time.perf_counter()
        await _enroll(files_targets, root / "files-home", "files")
        files_wall = time.perf_counter() - start

        a = PgStore(url, root / "host-a")
        fleet.create(a, "host-a")
        b = PgStore(url, root / "host-b")
        fleet.join(b.home, a.membership().admin_pin, None, "host-b")
        fleet.add_host(a, "host-b", b.identity().cert_pem)
        fleet_targets = _targets(root / "fleet", [s.port for s in served[count:]], secrets[count:])
        await asyncio.sleep(1.5)  # the setup's statistics are flushed before the baseline is read
        before = _transactions(url)
        start = time.perf_counter()
        results = await asyncio.gather(*(_enroll(fleet_targets, home, url) for home in (a.home, b.home)))
        fleet_wall = time.perf_counter() - start
        await asyncio.sleep(1.5)  # the requesters' backends have exited and flushed their statistics
        transactions = _transactions(url) - before - 1  # less the baseline's own read
        enrolled = sum(row["status"] == "enrolled" for _, rows in results for row in rows)
        return FleetResult(count, files_wall, fleet_wall, transactions / count, enrolled)
    finally:
        await stop(served)


def measure_fleet(count: int) -> FleetResult | str:
    """The measurement, or why it could not run (no PostgreSQL, no psycopg)."""
    from firsttrust.lab.postgres import available, postgres_server

    reason = available()
    if reason:
        return reason
    quiet_audit()
    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="firsttrust-bench-fleet-") as root:
        return asyncio.run(_run(Path(root), count, server.url()))


def line(result: FleetResult | str) -> str:
    if isinstance(result, str):
        return f"fleet/one-host = not measured ({result})"
    return (f"fleet/one-host = {result.ratio:.2f} ({result.count} appliances: two hosts on PostgreSQL "
            f"{result.fleet_wall:.1f} s / one host on files {result.files_wall:.1f} s; "
            f"{result.transactions_per_appliance:.1f} database transactions per appliance; "
            f"{result.enrolled} enrolled)")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    print(line(measure_fleet(count)))
