"""Appliances in temp dirs, as tests/integration/agent_fixture.py makes them: provisioned
(identity, salt + verifier, SEC-B, state.json) with firsttrust.agent.provision.provision, the account
password left alone, then served by an in-process EnrollmentServer on 127.0.0.1.

Provisioning is never inside a measurement: it happens once per appliance, at first boot.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from firsttrust.agent.config import AgentConfig, load_config
from firsttrust.agent.provision import provision
from firsttrust.agent.server import EnrollmentGate, EnrollmentServer, start_enrollment_server
from firsttrust.agent.sources.deploy import DeployConfig
from firsttrust.agent.state import StateDir
from firsttrust.credentials import EnrollmentSecrets

from .measure import quiet_audit

# The API port the appliance announces in "enrolled"; nothing listens there in the benchmark.
ANNOUNCED_API_PORT = 8791


def state_dir(root: Path, index: int) -> Path:
    return root / f"appliance-{index:04d}" / "state"


def provision_one(root: Path, index: int, secrets: EnrollmentSecrets) -> Path:
    quiet_audit()
    config = load_config(None, state_dir(root, index))
    provision(config, DeployConfig(source="bench", sec_a=secrets.sec_a, sec_b=secrets.sec_b),
              set_account_password=False)
    return config.state_dir


def _provision_chunk(root: Path, start: int, chunk: list[tuple[str, str]]) -> None:
    for offset, (sec_a, sec_b) in enumerate(chunk):
        provision_one(root, start + offset, EnrollmentSecrets(sec_a, sec_b))


def provision_many(root: Path, secrets: list[EnrollmentSecrets], workers: int) -> None:
    """Provision len(secrets) appliances under `root`, spread over `workers` processes."""
    pairs = [(s.sec_a, s.sec_b) for s in secrets]
    size = -(-len(pairs) // workers)
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(_provision_chunk, root, start, pairs[start:start + size])
                for start in range(0, len(pairs), size)]
        for job in jobs:
            job.result()


@dataclass
class ServedAppliance:
    config: AgentConfig
    listener: asyncio.base_events.Server

    @property
    def port(self) -> int:
        return self.listener.sockets[0].getsockname()[1]

    @property
    def store(self) -> StateDir:
        return StateDir(self.config.state_dir)


async def serve(directory: Path) -> ServedAppliance:
    """An EnrollmentServer over a provisioned state dir, on an ephemeral 127.0.0.1 port."""
    config = load_config(None, directory)
    gate = EnrollmentGate(config, StateDir(directory), backoff_base=0.0)
    # The appliance's /etc/ssh: a directory of its own, with no host keys (the shape sends none).
    # Not the state directory, whose every write would look like a changed key directory.
    ssh = directory.parent / "etc-ssh"
    ssh.mkdir(exist_ok=True)
    server = EnrollmentServer(gate, api_port=ANNOUNCED_API_PORT, host_key_glob=str(ssh / "ssh_host_*_key.pub"))
    return ServedAppliance(config, await start_enrollment_server(server, "127.0.0.1", 0))


async def stop(appliances: list[ServedAppliance]) -> None:
    for appliance in appliances:
        appliance.listener.close()
    for appliance in appliances:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(appliance.listener.wait_closed(), 5)
