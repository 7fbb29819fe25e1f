"""`firsttrust-lab demo`: all three ways in, and two attacks that fail, end to end on 127.0.0.1.

The demo plays the bring-up script (the requester) against the lab's vCenter (lab.manager), with
a trust store of its own under the lab root, using only what a real bring-up script would use:
the requester library (requester.library, requester.deployspec) and the manager's operations.

    app-srp-1, app-srp-2   FIG. 4, secrets + SRP: fresh secrets injected, enroll_many
    app-cert               FIG. 2, injected certificate: the requester's certificate injected (no
                           secrets); the appliance's certificate read back from guestinfo; pinned
    app-guest              FIG. 3, guest command: `firsttrust-agent authorize --cert -` and
                           `show-identity --format pem` run in the guest; pinned
    app-attacked           first a relay that forwards SRP and terminates TLS itself: caught on
                           both sides, nothing authorized, nothing pinned; then a wrong SEC-A:
                           refused (auth_failed), counted, nothing authorized

The four trusted appliances then answer GET /v1/identity over pinned mutual TLS with the key
that was pinned. Every check raises DemoFailure when it does not hold.

Why app-guest is deployed with secrets (FIG. 3): `firsttrust-agent provision` refuses a VM
into which nothing at all was injected ("no firsttrust properties found"), and an enrollment
window alone does not count as something; without provisioning there is no identity and no
`serve`. So the FIG. 3 appliance gets one-time secrets that nobody keeps (generated here and
dropped, scrubbed from guestinfo by the agent) with the shortest enrollment window there is, 1 s:
its SRP door closes a second after first boot, and trust comes from the guest command alone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import (
    APPLIANCE_CERT_GUESTINFO,
    BASE64,
    ENCODING_SUFFIX,
    REQUESTER_CERT,
    encode_value,
)
from firsttrust.errors import FirsttrustError, PeerRefused
from firsttrust.identity import pin_of_certificate
from firsttrust.requester.deployspec import deployment_properties
from firsttrust.requester.library import (
    Target,
    enroll_appliance,
    enroll_many,
    known_hosts_lines,
    open_session,
    pin_certificate,
)
from firsttrust.requester.truststore import TrustStore, UnknownAppliance

from . import procs
from .errors import LabError
from .manager import Appliance, Manager, prepare_lab_directory
from .relay import TlsTerminatingRelay
from .vmware_emulator import ENV_VAR

SRP, INJECTED, GUEST = "srp", "injected-certificate", "guest-command"
# The shortest enrollment window the agent accepts: the FIG. 3 appliance's unused SRP door.
GUEST_COMMAND_WINDOW = "1s"
# The FIG. 4 appliances' window: long enough for a slow demo, short enough to be obviously temporary.
SRP_WINDOW = "10m"
# Between the steps of the narrated demo, so a person can follow; --short skips it.
PACE_SECONDS = 0.4
# The appliance handles the relayed connection's end a moment after the relay sees it; its
# state is read after this pause (and must show nothing authorized).
SETTLE_SECONDS = 0.2


class DemoFailure(LabError):
    """A check of the demo did not hold."""

    code = "demo_failed"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)


@dataclass
class Row:
    name: str
    embodiment: str
    pin: str | None
    seconds: float
    result: str


class Demo:
    def __init__(self, manager: Manager, store: TrustStore, *, short: bool, out: TextIO) -> None:
        self.manager, self.store, self.out = manager, store, out
        self.pace = 0.0 if short else PACE_SECONDS
        self.rows: list[Row] = []
        self.ellipsis = "…" if _can_encode(out, "…") else "..."

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def step(self) -> None:
        if self.pace:
            await asyncio.sleep(self.pace)

    # -- the story -------------------------------------------------------------------------------

    async def run(self) -> None:
        identity = self.store.identity()
        self.say(f"requester identity {self.short_pin(identity.pin)} (trust store {self.store.home})")
        # The secrets live in this process only: never printed, never in a file, never in argv.
        secrets = {name: EnrollmentSecrets.generate() for name in ("app-srp-1", "app-srp-2", "app-attacked")}
        cert_only = {REQUESTER_CERT: encode_value(identity.cert_pem.decode("ascii"), BASE64),
                     REQUESTER_CERT + ENCODING_SUFFIX: BASE64}
        plan = {
            "app-srp-1": deployment_properties(secrets["app-srp-1"], enroll_window=SRP_WINDOW),
            "app-srp-2": deployment_properties(secrets["app-srp-2"], enroll_window=SRP_WINDOW),
            "app-cert": cert_only,
            # FIG. 3: one-time secrets nobody keeps, a 1 s window (see the module docstring).
            "app-guest": deployment_properties(EnrollmentSecrets.generate(), enroll_window=GUEST_COMMAND_WINDOW),
            # Both attacks, one after the other: the relay costs the appliance no failed guess
            # (SRP itself succeeds through it), so the wrong SEC-A meets no back-off.
            "app-attacked": deployment_properties(secrets["app-attacked"], enroll_window=SRP_WINDOW),
        }
        start = time.perf_counter()
        self.say(f"vCenter: deploying {len(plan)} appliances (properties in guestinfo.ovfEnv, first boot, agent)")
        apps = {app.name: app for app in await asyncio.to_thread(self.manager.deploy_many, plan)}
        self.say(f"  deployed and listening after {time.perf_counter() - start:.1f} s")
        width = max(len(name) for name in apps)
        for app in apps.values():
            self.say(f"  {app.name:<{width}}  enrollment {app.enroll_address:<16} API {app.api_address}")
        await self.step()

        await self.fig4(apps, secrets)
        self.known_hosts("app-srp-1")
        await self.step()
        await self.fig2(apps["app-cert"])
        await self.step()
        await self.fig3(apps["app-guest"])
        await self.step()
        await self.verify_identities(["app-srp-1", "app-srp-2", "app-cert", "app-guest"])
        self.verify_no_secret_left(apps, secrets)
        await self.step()
        await self.relay_attack(apps["app-attacked"], secrets["app-attacked"])
        await self.step()
        await self.wrong_secret(apps["app-attacked"], secrets["app-attacked"])

    async def fig4(self, apps: dict[str, Appliance], secrets: dict[str, EnrollmentSecrets]) -> None:
        names = ["app-srp-1", "app-srp-2"]
        self.say(f"FIG. 4  secrets + SRP: enroll_many({', '.join(names)})")
        targets = [Target(name, apps[name].enroll_address, secrets[name]) for name in names]
        for outcome in await enroll_many(targets, store=self.store):
            name = outcome.target.name
            if not outcome.ok:
                raise DemoFailure(f"{name}: SRP enrollment failed: {outcome.error.code}: {outcome.error}")
            check(outcome.record.api_port == apps[name].api_port,
                  f"{name}: the appliance named API port {outcome.record.api_port}, not {apps[name].api_port}")
            self.rows.append(Row(name, SRP, outcome.record.pin, outcome.seconds, "ok"))
            self.say(f"  {name}: enrolled, pinned {self.short_pin(outcome.record.pin)}")

    def known_hosts(self, name: str) -> None:
        """ssh without trust on first use: the host key came with the SRP enrollment."""
        record = self.store.get(name)
        check(bool(record.ssh_host_keys), f"{name}: the enrollment reported no SSH host keys")
        path = self.manager.root / f"{name}.known_hosts"
        path.write_text("".join(line + "\n" for line in known_hosts_lines(record)))
        self.say(f"  {name}: SSH host key pinned with the enrollment; `firsttrust pins export {name} "
                 f"--format known_hosts` > {path.name}")
        if shutil.which("ssh-keygen") is None:
            self.say("  (ssh-keygen not installed: apt-get install openssh-client to see ssh find it)")
            return
        found = subprocess.run(["ssh-keygen", "-F", record.address, "-f", str(path)], capture_output=True,
                               text=True, timeout=30)
        check(found.returncode == 0 and record.ssh_host_keys[0].split()[1] in found.stdout,
              f"ssh-keygen -F {record.address} did not find {name}'s host key in {path}")
        self.say(f"  ssh-keygen -F {record.address} -f {path.name}: found; ssh -o StrictHostKeyChecking=yes "
                 "trusts it, nothing on first use")

    async def fig2(self, app: Appliance) -> None:
        self.say(f"FIG. 2  injected certificate: {app.name} got the requester's certificate at deployment")
        start = time.perf_counter()
        published = await asyncio.to_thread(self.manager.read_guestinfo, app.name, APPLIANCE_CERT_GUESTINFO)
        check(bool(published), f"{app.name}: the appliance published no certificate in {APPLIANCE_CERT_GUESTINFO}")
        try:
            certificate = base64.b64decode(published, validate=True)
        except (binascii.Error, ValueError):
            raise DemoFailure(f"{app.name}: {APPLIANCE_CERT_GUESTINFO} is not base64") from None
        record = pin_certificate(app.name, app.api_address, certificate, embodiment=INJECTED, store=self.store)
        self.rows.append(Row(app.name, INJECTED, record.pin, time.perf_counter() - start, "ok"))
        self.say(f"  vCenter read {APPLIANCE_CERT_GUESTINFO}; pinned {self.short_pin(record.pin)}")

    async def fig3(self, app: Appliance) -> None:
        self.say(f"FIG. 3  guest command: vCenter runs firsttrust-agent in {app.name}")
        start = time.perf_counter()
        authorized = await self.guest(app.name, ["firsttrust-agent", "authorize", "--cert", "-", "--name",
                                                 "bring-up"], stdin=self.store.identity().cert_pem)
        check(self.store.identity().pin in authorized, f"{app.name}: authorize named another key: {authorized.strip()}")
        self.say(f"  authorize --cert - (the requester's certificate on stdin) -> {authorized.split(':')[0]}")
        shown = await self.guest(app.name, ["firsttrust-agent", "show-identity", "--format", "pem"])
        record = pin_certificate(app.name, app.api_address, shown.encode("ascii"), embodiment=GUEST,
                                 store=self.store)
        self.say(f"  show-identity --format pem -> the appliance's certificate; pinned {self.short_pin(record.pin)}")
        # The running agent sees the key `authorize` wrote from another process on its next
        # handshake (agent.api reloads when authorized.json changes): no restart.
        await self.identity(app.name)
        self.rows.append(Row(app.name, GUEST, record.pin, time.perf_counter() - start, "ok"))
        state = await self.status(app.name)
        check(state["window_expires_at"] - state["provisioned_at"] <= 1.0,
              f"{app.name}: its unused SRP window is not the 1 s it was deployed with")
        check(state["authorized_keys"] == 1, f"{app.name}: {state['authorized_keys']} keys authorized, expected 1")

    async def verify_identities(self, names: list[str]) -> None:
        self.say(f"check   GET /v1/identity over pinned mutual TLS on {len(names)} appliances")
        for name in names:
            answer = await self.identity(name)
            pinned = self.store.get(name).pin
            check(isinstance(answer, dict) and answer.get("pin") == pinned,
                  f"{name}: /v1/identity names pin {answer.get('pin') if isinstance(answer, dict) else answer!r}, "
                  f"pinned {pinned}")
            check(pin_of_certificate(answer["certificate"].encode("ascii")) == pinned,
                  f"{name}: /v1/identity returned a certificate for another key")
            for row in self.rows:
                if row.name == name:
                    row.result = "ok: pinned, /v1/identity verified"
            self.say(f"  {name}: answers with {self.short_pin(pinned)} = the pinned key")

    def verify_no_secret_left(self, apps: dict[str, Appliance], secrets: dict[str, EnrollmentSecrets]) -> None:
        """The agents scrubbed the secrets from guestinfo, never had them in argv or a log."""
        for name, pair in secrets.items():
            vm_text = apps[name].vm_path.read_text()  # guestinfo and the argv of every tool run
            log_text = apps[name].log_path.read_text(errors="replace")
            for label, secret in (("SEC-A", pair.sec_a), ("SEC-B", pair.sec_b)):
                check(secret not in vm_text, f"{name}: {label} is still in the VM's guestinfo or a tool's argv")
                check(secret not in log_text, f"{name}: {label} appears in the agent's log")
        self.say(f"check   secrets scrubbed from guestinfo, absent from argv and logs ({len(secrets)} appliances)")

    async def wrong_secret(self, app: Appliance, right: EnrollmentSecrets) -> None:
        self.say(f"attack  {app.name}: enroll with a wrong SEC-A")
        wrong = EnrollmentSecrets(EnrollmentSecrets.generate().sec_a, right.sec_b)
        start = time.perf_counter()
        try:
            await enroll_appliance(app.enroll_address, wrong, name=app.name, store=self.store)
        except PeerRefused as exc:
            check(exc.code == "auth_failed", f"{app.name}: a wrong SEC-A was refused with {exc.code}, not auth_failed")
            elapsed = time.perf_counter() - start
        else:
            raise DemoFailure(f"{app.name}: an enrollment with a wrong SEC-A succeeded")
        state = await self.status(app.name)
        check(state["phase"] == "provisioned" and state["authorized_keys"] == 0,
              f"{app.name}: after a wrong SEC-A the appliance is {state['phase']} with "
              f"{state['authorized_keys']} authorized keys")
        check(state["failures"] == 1, f"{app.name}: the failure was not counted ({state['failures']})")
        self.check_not_pinned(app.name)
        self.rows.append(Row(app.name, f"{SRP} (wrong SEC-A)", None, elapsed, "refused: auth_failed (expected)"))
        self.say("  refused by the appliance: auth_failed (expected); failure counted, nothing authorized, "
                 "nothing pinned")

    async def relay_attack(self, app: Appliance, secrets: EnrollmentSecrets) -> None:
        workdir = self.manager.root / "relay"
        prepare_lab_directory(workdir)
        async with TlsTerminatingRelay("127.0.0.1", app.enroll_port, workdir) as relay:
            self.say(f"attack  {app.name}: a relay on 127.0.0.1:{relay.port} forwards SRP, then terminates TLS "
                     "with its own key")
            start = time.perf_counter()
            try:
                await enroll_appliance(f"127.0.0.1:{relay.port}", secrets, name=app.name, store=self.store)
            except FirsttrustError as exc:
                caught, elapsed = exc, time.perf_counter() - start
            else:
                raise DemoFailure(f"{app.name}: the enrollment through a TLS-terminating relay succeeded")
            outcome = await relay.finished()
        await asyncio.sleep(SETTLE_SECONDS)
        check(outcome.frames_forwarded == 4, f"{app.name}: the relay forwarded {outcome.frames_forwarded} of the 4 "
              "SRP frames (the attack did not get as far as it should)")
        check(not outcome.inside_tls, f"{app.name}: the relay is inside TLS with both sides")
        state = await self.status(app.name)
        check(state["phase"] == "provisioned" and state["authorized_keys"] == 0,
              f"{app.name}: after the relay the appliance is {state['phase']} with {state['authorized_keys']} "
              "authorized keys")
        check(state["failures"] == 0, f"{app.name}: the relayed attempt was counted as a failed guess, "
              "although its SRP proof verified")
        self.check_not_pinned(app.name)
        self.rows.append(Row(app.name, f"{SRP} (through a relay)", None, elapsed,
                             f"caught: {caught.code} (expected)"))
        self.say(f"  requester: {caught.code}: {caught}")
        self.say(f"  appliance side of the relay: TLS {outcome.tls_to_appliance}")
        self.say("  caught on both sides (expected): nothing authorized, nothing pinned")

    # -- helpers ---------------------------------------------------------------------------------

    async def guest(self, name: str, argv: list[str], stdin: bytes | None = None) -> str:
        result = await asyncio.to_thread(self.manager.guest_command, name, argv, stdin)
        if result.returncode != 0:
            message = result.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"]
            raise DemoFailure(f"{name}: guest command {' '.join(argv[:2])} exited {result.returncode}: {message[-1]}")
        return result.stdout.decode("utf-8", "replace")

    async def status(self, name: str) -> dict:
        return json.loads(await self.guest(name, ["firsttrust-agent", "status", "--json"]))

    async def identity(self, name: str) -> dict:
        async with open_session(name, store=self.store) as api:
            answer = await api.get("/v1/identity")
            check(api.connections_checked >= 1, f"{name}: the session checked no pin")
        return answer

    def check_not_pinned(self, name: str) -> None:
        try:
            self.store.get(name)
        except UnknownAppliance:
            return
        raise DemoFailure(f"{name}: the requester pinned an appliance whose enrollment failed")

    def short_pin(self, pin: str | None) -> str:
        if not pin:
            return "-"
        algorithm, _, digest = pin.partition(":")
        return f"{algorithm}:{digest[:12]}{self.ellipsis}"

    def table(self) -> None:
        header = ("NAME", "EMBODIMENT", "PIN", "TIME (ms)", "RESULT")
        lines = [(row.name, f"{row.embodiment}", self.short_pin(row.pin), f"{row.seconds * 1000:.0f}", row.result)
                 for row in self.rows]
        widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(4)]
        self.say("")
        for line in (header, *lines):
            self.say("  ".join([line[0].ljust(widths[0]), line[1].ljust(widths[1]), line[2].ljust(widths[2]),
                                line[3].rjust(widths[3]), line[4]]).rstrip())


def run(root: Path | None = None, *, short: bool = False, keep: bool = False, out: TextIO | None = None) -> None:
    """Run the demo in the lab root; destroy everything afterwards unless `keep`.

    Raises:
        LabError (DemoFailure for a check that did not hold), FirsttrustError: the demo failed;
        its appliances are destroyed all the same.
    """
    out = out or sys.stdout
    started = time.perf_counter()
    manager = Manager(root)
    running = manager.running()
    if running:
        raise LabError(f"{manager.root} runs {len(running)} appliance(s) already; run firsttrust-lab down "
                       f"--root {manager.root} first")
    manager.ensure_root()
    home = manager.root / "requester"
    prepare_lab_directory(home)
    demo = Demo(manager, TrustStore(home), short=short, out=out)
    print(f"firsttrust lab demo in {manager.root}", file=out, flush=True)
    try:
        asyncio.run(demo.run())
        demo.table()
    except BaseException:
        with contextlib.suppress(Exception):  # the demo's own failure is the one to report
            _clean_up(manager, keep)
        raise
    _clean_up(manager, keep)
    print("", file=out)
    print(f"all checks passed in {time.perf_counter() - started:.1f} s", file=out, flush=True)
    if keep:
        print(f"kept running: firsttrust-lab status --root {manager.root}; stop with firsttrust-lab down "
              f"--root {manager.root}", file=out)
        print(f"the pins: FIRSTTRUST_HOME={home} firsttrust pins list", file=out, flush=True)


def _clean_up(manager: Manager, keep: bool) -> None:
    if keep:
        manager.detach()
        return
    manager.destroy_all()
    left = procs.guest_processes(manager.root, ENV_VAR)
    if left:
        raise LabError(f"processes of the lab are still alive after destroying it: PIDs {left}")


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
