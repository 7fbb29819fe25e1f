"""An appliance in a temp dir: provisioned state plus an in-process enrollment listener."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from firsttrust.agent.config import AgentConfig, load_config
from firsttrust.agent.provision import provision
from firsttrust.agent.server import EnrollmentGate, EnrollmentServer, start_enrollment_server
from firsttrust.agent.sources.deploy import DeployConfig
from firsttrust.agent.state import StateDir
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.identity import Identity
from firsttrust.requester.enroll import ClientIdentityFiles


@dataclass
class Appliance:
    config: AgentConfig
    store: StateDir
    secrets: EnrollmentSecrets
    gate: EnrollmentGate | None = None
    server: EnrollmentServer | None = None
    listener: asyncio.base_events.Server | None = None
    connections_started: int = 0
    connections_finished: int = 0

    @property
    def port(self) -> int:
        return self.listener.sockets[0].getsockname()[1]

    async def start(self, **server_args) -> "Appliance":
        backoff = server_args.pop("backoff_base", 0.0)
        self.gate = EnrollmentGate(self.config, self.store, backoff_base=backoff)
        server_args.setdefault("host_key_glob", str(self.store.path / "no-host-keys-*"))
        self.server = EnrollmentServer(self.gate, api_port=8791, **server_args)
        self.server.handle = self._counted(self.server.handle)
        self.listener = await start_enrollment_server(self.server, "127.0.0.1", 0)
        return self

    def _counted(self, handle):
        async def counted(reader, writer, *slot):  # the front door hands over its slot too
            self.connections_started += 1
            try:
                await handle(reader, writer, *slot)
            finally:
                self.connections_finished += 1
        return counted

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait until every connection the agent accepted has been handled to its end (its
        charges, refunds and audit lines done): the client's answer can arrive before that."""
        async with asyncio.timeout(timeout):
            while self.connections_finished < self.connections_started or not self.connections_started:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.listener:
            self.listener.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.listener.wait_closed(), 5)


def provisioned(tmp_path: Path, secrets: EnrollmentSecrets | None = None, max_failures: int = 10,
                sec_b: str | None = None) -> Appliance:
    secrets = secrets or EnrollmentSecrets.generate()
    config = load_config(None, tmp_path / "state")
    from dataclasses import replace
    config = replace(config, max_failures=max_failures)
    provision(config, DeployConfig(source="test", sec_a=secrets.sec_a, sec_b=sec_b or secrets.sec_b),
              set_account_password=False)
    return Appliance(config, StateDir(config.state_dir), secrets)


def identity_files(tmp_path: Path, identity: Identity, name: str = "requester") -> ClientIdentityFiles:
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert.write_bytes(identity.cert_pem)
    key.write_bytes(identity.key_pem)
    key.chmod(0o600)
    return ClientIdentityFiles(cert, key)
