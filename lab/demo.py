"""`firsttrust-lab demo`: all three ways in, and two attacks that fail, end to end on loopback.

The demo plays the bring-up script (the requester) against the lab's data center (lab.datacenter:
govmomi's vCenter simulator with the lab's models, its hosts booting what it powers on, and its
guest operations acting on the appliances), with a trust store of its own under the lab root,
using only what a real bring-up script would use, all through the vSphere API: the deployer
behind `firsttrust deploy` (requester.deployer), the requester library, and vCenter's guest
operations (requester.guestcommand).

    app-srp-1, app-srp-2   srp: `firsttrust deploy` does the whole job: clone with fresh secrets
                           in guestinfo.* extraConfig, power on, wait for the guest's IP, enroll
                           and pin, remove the secrets through the API
    app-cert               injected-certificate: the requester's certificate injected (no SRP
                           secrets) with a one-job guest account; the appliance's certificate
                           fetched by guest file transfer (verified against the host's
                           certificate), the first pinned call made, pinned
    app-guest              guest-command: `firsttrust deploy --embodiment guest-command` does the
                           whole job: a one-job guest account injected (no SRP secrets), then
                           through guest operations the requester's certificate uploaded,
                           `firsttrust-agent authorize --expect-pin` run and its exit code read,
                           the appliance's certificate fetched, the first pinned call, pinned,
                           the guest password removed through the API
    app-attacked           first a relay that forwards SRP and terminates TLS itself: caught on
                           both sides, nothing authorized, nothing pinned; then a wrong SEC-A:
                           refused (auth_failed), counted, nothing authorized

app-cert and app-attacked are deployed with `--no-enroll` (the deployer stops after power-on).
Each appliance listens on an address of its own (127.0.0.2, ...) at the standard ports, which the
bring-up script learns from the guest's IP through the API. The four trusted appliances then
answer GET /v1/identity over pinned mutual TLS with the key that was pinned, and the secrets are
gone from what the API shows of the VMs' configuration. Every check raises DemoFailure when it
does not hold.

The guest account of app-cert and app-guest is good until their enrollment window closes
(GUEST_WINDOW): their agents record it at first boot (agent/guestaccount.py); no SRP secrets are
injected into either, so their SRP door never opens.

One module, over 450 lines, because the demo is one script meant to be read top to bottom: `Demo`'s
steps in the order they run and print, each with the checks that make it fail loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import DEFAULT_API_PORT, GUEST_ACCOUNT, GUEST_PASSWORD, guestinfo_key
from firsttrust.errors import FirsttrustError, PeerRefused
from firsttrust.identity import pin_of_certificate
from firsttrust.requester.deployer import ApplianceReport
from firsttrust.requester.deployplan import (
    GUEST_COMMAND_WAY,
    SCRUB_KEYS,
    DeployPlan,
    current_values,
    plan_deployment,
)
from firsttrust.requester.deployspec import secrets_from_json
from firsttrust.requester.guestcommand import FILE_TRANSFER, GuestLogin, read_appliance_certificate, verify_and_pin
from firsttrust.requester.library import enroll_appliance, known_hosts_lines, open_session
from firsttrust.requester.truststore import TrustStore, UnknownAppliance

from . import procs
from .datacenter import TEMPLATE, DataCenter
from .errors import LabError
from .manager import Appliance, Manager, prepare_lab_directory
from .relay import TlsTerminatingRelay
from .vmware_emulator import ENV_VAR

SRP, INJECTED, GUEST = "srp", "injected-certificate", "guest-command"
# Where a lab appliance's agent writes its certificate (its /etc/firsttrust/appliance.crt).
APPLIANCE_CERT_FILE = "appliance.crt"
# How long the guest account of app-cert and app-guest is good for (their enrollment window).
GUEST_WINDOW = "10m"
# The srp appliances' window: long enough for a slow demo, short enough to be obviously temporary.
SRP_WINDOW = "10m"
# Between the steps of the narrated demo, so a person can follow; --short skips it.
PACE_SECONDS = 0.4
# The appliance handles the relayed connection's end a moment after the relay sees it; its
# state is read after this pause (and must show nothing authorized).
SETTLE_SECONDS = 0.2


class DemoFailure(LabError):
    """A check of the demo did not hold."""

    code = "demo_failed"


def without_srp_secrets(plan: DeployPlan) -> DeployPlan:
    """The plan without SEC-A and SEC-B in the VMs' configuration: an appliance trusted another
    way gets no SRP secrets, so its SRP door never opens."""
    appliances = tuple(dataclasses.replace(a, extra_config=tuple((k, v) for k, v in a.extra_config
                                                                  if k not in SCRUB_KEYS)) for a in plan.appliances)
    return dataclasses.replace(plan, appliances=appliances)


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
    def __init__(self, manager: Manager, datacenter: DataCenter, store: TrustStore, secrets_dir: Path, *,
                 short: bool, out: TextIO) -> None:
        self.manager, self.datacenter, self.store, self.out = manager, datacenter, store, out
        self.secrets_dir = secrets_dir
        self._say_lock = threading.Lock()
        self.pace = 0.0 if short else PACE_SECONDS
        self.rows: list[Row] = []
        self.ellipsis = "…" if _can_encode(out, "…") else "..."

    def say(self, text: str) -> None:
        with self._say_lock:  # the deployer reports progress from its threads: whole lines only
            self.out.write(text + "\n")
            self.out.flush()

    async def step(self) -> None:
        if self.pace:
            await asyncio.sleep(self.pace)

    # -- the story -------------------------------------------------------------------------------

    async def run(self) -> None:
        identity = self.store.identity()
        vcsim = self.datacenter.vcsim
        self.say(f"requester identity {self.short_pin(identity.pin)} (trust store {self.store.home})")
        self.say(f"vCenter: govmomi's simulator at {vcsim.url}, thumbprint {vcsim.thumbprint_sha1[:14]}"
                 f"{self.ellipsis} (pinned), template {TEMPLATE}")
        await self.step()
        srp = await self.srp_way()
        self.known_hosts("app-srp-1")
        await self.step()

        start = time.perf_counter()
        plan = self.no_enroll_plan(identity.cert_pem)
        self.say(f"deploy  firsttrust deploy --no-enroll {', '.join(a.name for a in plan.appliances)}")
        await asyncio.to_thread(self.deploy, plan)
        # app-cert got no SRP secrets (see the module docstring): its secrets file holds unused ones.
        (self.secrets_dir / "app-cert.json").unlink()
        apps = {name: await self.appliance(name) for name in ("app-cert", "app-attacked")}
        self.say(f"  deployed, booted, IPs reported after {time.perf_counter() - start:.1f} s")
        await self.step()

        await self.injected_certificate_way(apps["app-cert"], next(a for a in plan.appliances if a.name == "app-cert"))
        await self.step()
        await self.guest_command_way()
        await self.step()
        await self.verify_identities(["app-srp-1", "app-srp-2", "app-cert", "app-guest"])
        attacked = secrets_from_json((self.secrets_dir / "app-attacked.json").read_bytes())
        self.verify_no_secret_left({**srp, "app-attacked": attacked})
        await self.step()
        await self.relay_attack(apps["app-attacked"], attacked)
        await self.step()
        await self.wrong_secret(apps["app-attacked"], attacked)

    def deploy(self, plan: DeployPlan) -> list[ApplianceReport]:
        def progress(name: str, event: str) -> None:
            if event.startswith("enrolled: "):
                event = f"enrolled, pinned {self.short_pin(event.split(': ', 1)[1])}"
            elif event.startswith("authorized by guest command"):
                head, _, pin = event.rpartition(": ")
                event = f"{head}: pinned {self.short_pin(pin)}"
            self.say(f"  {name}: {event}")

        reports = self.datacenter.deploy(plan, self.secrets_dir, store=self.store, progress=progress)
        for report in reports:
            if not report.ok:
                raise DemoFailure(f"{report.name}: deployment failed at {report.failed_step}: "
                                  f"{report.error.code}: {report.error}")
        return reports

    async def srp_way(self) -> dict[str, EnrollmentSecrets]:
        names = ["app-srp-1", "app-srp-2"]
        self.say(f"{SRP}  the two secrets: firsttrust deploy {', '.join(names)}: clone with fresh secrets in "
                 "guestinfo.*, power on, wait for the guest's IP, enroll, pin, remove the secrets")
        start = time.perf_counter()
        plan = plan_deployment(self.datacenter.vcsim.url, TEMPLATE, names, enroll_window=SRP_WINDOW)
        reports = await asyncio.to_thread(self.deploy, plan)
        for report in reports:
            check(report.status == "enrolled", f"{report.name}: the deployer reports {report.status}, not enrolled")
            record = self.store.get(report.name)
            check(record.address == report.ip and record.api_port == DEFAULT_API_PORT,
                  f"{report.name}: pinned at {record.address} port {record.api_port}, but the guest reported "
                  f"{report.ip} and the API is on port {DEFAULT_API_PORT}")
            app = self.manager.appliance(report.name)
            check(app.host == report.ip, f"{report.name}: the guest reported {report.ip}, it listens on {app.host}")
            self.rows.append(Row(report.name, SRP, report.pin, report.seconds.get("enroll", 0.0), "ok"))
        self.say(f"  deployed, booted, enrolled, secrets removed after {time.perf_counter() - start:.1f} s")
        return {a.name: a.secrets for a in plan.appliances}

    def no_enroll_plan(self, requester_cert: bytes) -> DeployPlan:
        """app-cert (the requester's certificate and a guest account), app-attacked."""
        url = self.datacenter.vcsim.url
        cert = plan_deployment(url, TEMPLATE, ["app-cert"], requester_cert=requester_cert, enroll=False,
                               enroll_window=GUEST_WINDOW, guest_account=True)
        # The injected-certificate way takes no SRP secrets: the certificate alone is the trust.
        # Both attacks, one after the other: the relay costs the appliance no failed guess
        # (SRP itself succeeds through it), so the wrong SEC-A meets no back-off.
        attacked = plan_deployment(url, TEMPLATE, ["app-attacked"], enroll_window=SRP_WINDOW, enroll=False)
        return DeployPlan(vcenter=url, template=TEMPLATE, enroll=False,
                          appliances=(*without_srp_secrets(cert).appliances, *attacked.appliances))

    async def appliance(self, name: str) -> Appliance:
        """The appliance at the IP its guest reports through the API, as a bring-up script finds it."""
        ip = await asyncio.to_thread(self.datacenter.guest_ip, name)
        app = self.manager.appliance(name)
        check(app.host == ip, f"{name}: the guest reported {ip}, it listens on {app.host}")
        self.say(f"  {name:<12}  guest IP {ip:<11} enrollment {app.enroll_address:<16} API {app.api_address}")
        return app

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

    async def injected_certificate_way(self, app: Appliance, planned) -> None:
        self.say(f"{INJECTED}  {app.name} got the requester's certificate at deployment; its own "
                 "certificate comes back by guest file transfer")
        start = time.perf_counter()
        vc = self.datacenter.vc
        vm = await asyncio.to_thread(vc.find_vm, app.name)
        guest = GuestLogin(GUEST_ACCOUNT, planned.guest_password)
        certificate, channel = await asyncio.to_thread(read_appliance_certificate, vc, vm, app.name, guest=guest,
                                                       guest_path=str(app.directory / APPLIANCE_CERT_FILE))
        check(channel == FILE_TRANSFER, f"{app.name}: the certificate came by {channel}, not by guest file transfer")
        self.say("  InitiateFileTransferFromGuest: the agent's certificate over HTTPS to the VM's host, "
                 "verified against HostSystem.config.certificate")
        record = await asyncio.to_thread(verify_and_pin, app.name, app.api_address, certificate,
                                         embodiment=INJECTED, store=self.store)
        self.rows.append(Row(app.name, INJECTED, record.pin, time.perf_counter() - start, "ok"))
        self.say(f"  first pinned call GET /v1/identity answered with that key; pinned {self.short_pin(record.pin)} "
                 f"(channel: {channel})")

    async def guest_command_way(self) -> None:
        name = "app-guest"
        self.say(f"{GUEST}  firsttrust deploy --embodiment guest-command {name}: a one-job guest account "
                 "injected; vCenter's guest operations run firsttrust-agent authorize in the guest")
        start = time.perf_counter()
        plan = plan_deployment(self.datacenter.vcsim.url, TEMPLATE, [name], enroll_window=GUEST_WINDOW,
                               way=GUEST_COMMAND_WAY)
        [report] = await asyncio.to_thread(self.deploy, plan)  # no SRP secrets: the guest account is the trust
        check(report.status == "enrolled", f"{name}: the deployer reports {report.status}, not pinned")
        record = self.store.get(name)
        check(record.embodiment == GUEST and record.pin == report.pin,
              f"{name}: pinned as {record.embodiment}, expected {GUEST}")
        check(report.scrub.get(guestinfo_key(GUEST_PASSWORD)) == "removed",
              f"{name}: the guest password was not removed from the VM's configuration")
        self.rows.append(Row(name, GUEST, record.pin, time.perf_counter() - start, "ok"))
        state = await self.status(name)
        check(state["authorized_keys"] == 1, f"{name}: {state['authorized_keys']} keys authorized, expected 1")
        check(state["phase"] != "provisioned", f"{name}: its SRP door is armed, but no secrets were injected")

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

    def verify_no_secret_left(self, secrets: dict[str, EnrollmentSecrets]) -> None:
        """Through the API, the VMs' configuration shows no secret any more (the agents' scrub;
        for the enrolled ones the deployer's removal too); the agents never logged one."""
        kept = 0
        for name, pair in secrets.items():
            entries = self.datacenter.extra_config(name)
            current = current_values(entries)  # what a reader of the VM sees
            log_text = self.manager.appliance(name).log_path.read_text(errors="replace")
            for label, secret in (("SEC-A", pair.sec_a), ("SEC-B", pair.sec_b)):
                check(secret not in current.values(), f"{name}: {label} is still in the VM's configuration")
                check(secret not in log_text, f"{name}: {label} appears in the agent's log")
            for key in SCRUB_KEYS:
                # vCenter removes a key set to "" ("Keys with empty values will be removed"), and so
                # does the lab's vCenter (lab/go/vcsim/extraconfig.go): scrubbed is gone.
                check(not current.get(key), f"{name}: the API shows {key} still set, not scrubbed")
            kept += sum(1 for _, value in entries if value in (pair.sec_a, pair.sec_b))
        check(kept == 0, f"the VMs' configuration still lists {kept} secret entries")
        self.say(f"check   through the API the {len(secrets)} VMs' configuration shows the secret keys empty "
                 "(removed: the agents' scrub; the deployer's removal); no secret in a log")

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
        async with TlsTerminatingRelay(app.host, app.enroll_port, workdir) as relay:
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
    """Run the demo in the lab root: start the data center (vcsim), deploy, enroll, attack;
    destroy the appliances afterwards unless `keep`. The simulator stops either way (the
    appliances do not need it after first boot).

    Raises:
        LabError (DemoFailure for a check that did not hold; VcsimError when the simulator cannot
        be built or started), FirsttrustError: the demo failed; its appliances are destroyed all
        the same.
    """
    out = out or sys.stdout
    started = time.perf_counter()
    manager = Manager(root)
    running = manager.running()
    if running:
        raise LabError(f"{manager.root} runs {len(running)} appliance(s) already; run firsttrust-lab down "
                       f"--root {manager.root} first")
    manager.ensure_root()
    home, secrets_dir = manager.root / "requester", manager.root / "secrets"
    prepare_lab_directory(home)
    prepare_lab_directory(secrets_dir)
    print(f"firsttrust lab demo in {manager.root}", file=out, flush=True)
    try:
        datacenter = DataCenter.start(manager)
        try:
            demo = Demo(manager, datacenter, TrustStore(home), secrets_dir, short=short, out=out)
            asyncio.run(demo.run())
            demo.table()
        finally:
            datacenter.stop()
    except BaseException:
        with contextlib.suppress(Exception):  # the demo's own failure is the one to report
            _clean_up(manager, keep)
        raise
    _clean_up(manager, keep)
    print("", file=out)
    print(f"all checks passed in {time.perf_counter() - started:.1f} s", file=out, flush=True)
    if keep:
        print("kept running (the simulator stopped with the demo; the appliances need it no more): "
              f"firsttrust-lab status --root {manager.root}; stop with firsttrust-lab down --root {manager.root}",
              file=out)
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
