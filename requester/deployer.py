"""Deploy appliances through the vSphere API and enroll them: the library behind `firsttrust deploy`.

    access = VcenterAccess.from_environment(url, pinned_context(thumbprint))   # or credentials file
    plan = plan_deployment(url, "appliance-template", appliance_names(prefix="app", count=10))
    reports = deploy(plan, access, Path("secrets"), concurrency=8)

Per appliance, in this order (deployplan.steps): write `<name>.json` (0600, before the VM exists,
so a crash never leaves a VM whose secrets are lost); clone the template with the secrets in the
clone spec's extraConfig, or (plan.ova) import the OVA with the secrets as its vApp properties
(uploaded once: the other appliances of the run are clones of the first, each with its own
values); read the config back and check every planned key (a write-only secret by id and type);
power on. With enrollment: wait for VMware Tools to report an IP, enroll all of them with
bounded concurrency (library.enroll_many), then remove the secret keys through the API and read
back what can be read back, and (plan.ova) remove the OVF environment from the VM. One
appliance's failure never stops the others: each gets an ApplianceReport. Before anything is
created: the placement (placement.choose_placement, each automatic choice reported), and for an
OVA its descriptor and what the target would make of it (deployplan.check_descriptor,
check_import_spec).

The pyVmomi calls are all in requester/vsphere.py; the decisions in requester/deployplan.py and
requester/placement.py.

One module, over 450 lines, because every step here writes the same per-appliance report through
the same failure, timing and redaction helpers (_fail, _timed, _redact: where no progress line may
echo a secret), and splitting the steps from them would put that promise in two places.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from firsttrust.common.files import FileTooLarge, read_bounded_stat, write_new
from firsttrust.errors import FirsttrustError

from firsttrust.deployment import GUEST_ACCOUNT

from .deployplan import (
    GUEST_COMMAND_WAY,
    OVA_SCRUB_KEYS,
    AppliancePlan,
    DeployPlan,
    InvalidDeployPlan,
    check_descriptor,
    check_import_spec,
    missing_config,
    scrub_status,
    vapp_scrub_status,
    verify_properties,
)
from .placement import PlacementRequest
from .deployspec import secrets_to_json
from .converge import prepare, resume, survey
from .interrupts import Interrupted, StopSignal, run_coroutine, run_each, run_stoppable
from .library import Target, enroll_many
from .truststore import TrustStore

USER_ENV = "FIRSTTRUST_VSPHERE_USER"
PASSWORD_ENV = "FIRSTTRUST_VSPHERE_PASSWORD"
# A credentials file is {"user": ..., "password": ...}; small, so a wrong path is not read whole.
MAX_CREDENTIALS_BYTES = 4096

DEFAULT_CONCURRENCY = 8  # clones in flight; vCenter queues more anyway (8 per host by default)
DEFAULT_IP_TIMEOUT = 600.0  # first boot of an appliance, VMware Tools started, DHCP answered

Progress = Callable[[str, str], None]


class CredentialsError(FirsttrustError):
    """No usable vCenter credentials: not in the environment, or a bad credentials file."""

    code = "vsphere_credentials"


@dataclass(frozen=True)
class VcenterAccess:
    """Where vCenter is, whom to trust there (an SSLContext from vcenter_tls), who we are."""

    url: str
    context: object = field(repr=False)
    user: str
    password: str = field(repr=False)

    @classmethod
    def load(cls, url: str, context, credentials_file: str | None = None,
             environ: Mapping[str, str] = os.environ) -> "VcenterAccess":
        """Credentials from `credentials_file` (0600 JSON {"user", "password"}) if given, else from
        FIRSTTRUST_VSPHERE_USER and FIRSTTRUST_VSPHERE_PASSWORD. Never from argv.

        Raises:
            CredentialsError: neither, or the file is unreadable, readable by others, or malformed.
        """
        if credentials_file is not None:
            user, password = _read_credentials_file(credentials_file)
        else:
            user, password = environ.get(USER_ENV, ""), environ.get(PASSWORD_ENV, "")
            if not user or not password:
                raise CredentialsError(f"vCenter credentials: set {USER_ENV} and {PASSWORD_ENV}, or give "
                                       f"--credentials FILE (0600 JSON with user and password)")
        return cls(url=url, context=context, user=user, password=password)


def _read_credentials_file(path: str) -> tuple[str, str]:
    def private(mode: int) -> None:
        if stat.S_IMODE(mode) & 0o077:
            raise CredentialsError(f"credentials file {path} is accessible to group or others "
                                   f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")

    try:
        data, _ = read_bounded_stat(path, MAX_CREDENTIALS_BYTES, what=f"credentials file {path}",
                                    error=CredentialsError, too_large=FileTooLarge, check=private)
        # An object with a repeated key reads as None: which "password" was meant is not ours to pick.
        document = json.loads(data.decode("utf-8"),
                              object_pairs_hook=lambda pairs: dict(pairs) if len(dict(pairs)) == len(pairs) else None)
    except (FileTooLarge, UnicodeDecodeError, ValueError, RecursionError):  # too large: not one, whatever it holds
        document = None
    if (not isinstance(document, dict) or sorted(document) != ["password", "user"]
            or not all(isinstance(document[k], str) and document[k] for k in document)):
        raise CredentialsError(f'credentials file {path} is not a JSON object with exactly "user" and "password"')
    return document["user"], document["password"]


@dataclass
class ApplianceReport:
    """What happened to one appliance. `to_json()` is its entry in `deploy --json`."""

    name: str
    secrets_file: str
    status: str = "planned"  # planned -> deployed -> enrolled | already-pinned; or failed, interrupted
    vm: str | None = None  # the managed object ID, e.g. vm-42
    ip: str | None = None
    pin: str | None = None
    extra_config: str = "not checked"  # "verified" once read back; --ova: "verified (vApp properties)" or
    # "verified (extraConfig: ...)", where the server kept the properties (deployplan.verify_properties)
    scrub: dict[str, str] = field(default_factory=dict)
    environment: str = "not removed"  # --ova: what remove_environment read back after enrollment
    error: FirsttrustError | None = None
    failed_step: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    task: str | None = None  # interrupted: the vCenter task that was in flight (the re-run finds its VM)
    action: str = "created"  # converge.py: created, resumed or unchanged (with check: what a run would do)

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "interrupted")

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "vm": self.vm, "ip": self.ip, "pin": self.pin,
                "secrets_file": self.secrets_file, "extra_config": self.extra_config, "scrub": self.scrub,
                "environment": self.environment,
                "error": None if self.error is None else {"code": self.error.code, "message": str(self.error),
                                                          "step": self.failed_step},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "task": self.task,
                "action": self.action}


def check_secrets_dir(plan: DeployPlan, secrets_dir: Path) -> None:
    """Before anything is touched: the directory exists and holds none of the plan's files.

    Raises:
        InvalidDeployPlan: it does not exist, or a secrets file is already there (never replaced:
            it may hold the only copy of another appliance's secrets).
    """
    if not secrets_dir.is_dir():
        raise InvalidDeployPlan(f"the secrets directory {secrets_dir} does not exist")
    for appliance in plan.appliances:
        for file_name in (appliance.secrets_file, appliance.guest_file):
            if os.path.lexists(secrets_dir / file_name):
                raise InvalidDeployPlan(f"{secrets_dir / file_name} already exists; "
                                        f"choose other names or another directory")


def write_secrets_file(path: Path, appliance: AppliancePlan) -> None:
    """The appliance's secrets, as `firsttrust secrets new` writes them: a new file, 0600 from
    creation, fsynced with its directory. Never replaces a file. With a guest account, its
    credentials too, in `appliance.guest_file` (the same way; the only file of the guest-command
    way, which injects no SRP secrets), so a re-run (`firsttrust pin-cert NAME --vcenter ...
    --embodiment guest-command --guest-credentials FILE`) can finish."""
    if appliance.srp:
        write_new(path, secrets_to_json(appliance.secrets, appliance.deployment_id), 0o600)
    if appliance.guest_password is not None:
        try:
            write_new(path.parent / appliance.guest_file, guest_credentials_json(appliance.guest_password), 0o600)
        except BaseException:
            if appliance.srp:
                path.unlink(missing_ok=True)
            raise


def guest_credentials_json(password: str, user: str = GUEST_ACCOUNT) -> bytes:
    return (json.dumps({"user": user, "password": password}, indent=2) + "\n").encode("utf-8")


def deploy(plan: DeployPlan, access: VcenterAccess, secrets_dir: Path | str, *, concurrency: int = DEFAULT_CONCURRENCY,
           ip_timeout: float = DEFAULT_IP_TIMEOUT, store: TrustStore | None = None,
           progress: Progress = lambda name, event: None, datastore: str | None = None,
           placement: PlacementRequest | None = None, remove_vapp: bool = False,
           vcenter=None, stop: StopSignal | None = None, check: bool = False) -> list[ApplianceReport]:
    """Carry out `plan` (see the module docstring), one report per appliance in plan order.

    `placement` chooses datacenter, folder, pool or cluster, host, datastore and network
    (requester/placement.py; `datastore` is the older spelling of placement.datastore). A clone
    without any placement option lands beside its template; an import, and a clone with one,
    where choose_placement says, each automatic choice reported through `progress("placement",
    ...)` before anything is created. With plan.ova, after enrollment the OVF environment is
    removed from the VM (the transport emptied, or with `remove_vapp` the whole vApp
    configuration; its CD-ROM disconnected). `vcenter` reuses a logged-in requester.vsphere.Vcenter
    (it is not closed); by default one is opened from `access` and closed at the end. Once `stop`
    is set (requester/interrupts.py: SIGINT, SIGTERM) no step starts, every vCenter wait ends
    within a second, and the reports come back at once: the appliances not done are
    "interrupted", with the step and the vCenter task that was in flight, if any; a stop before
    the inventory was read raises Interrupted (there is no report yet).

    A re-run converges (requester/converge.py): an appliance whose secrets file is there and whose
    VM carries that file's deployment id is resumed (power-on, enrollment, scrub as needed) or
    left unchanged; each report's `action` says which. With `check`, nothing is created or
    written: every report is "checked" and its action is what a run would do.

    Raises (before any VM or file is created):
        InvalidDeployPlan: the secrets directory is missing or already holds a plan's file; the
            OVA is unreadable, not an OVA, or its descriptor cannot carry the secrets;
            PlacementError: a placement option names nothing usable.
        VsphereError: vCenter unreachable, untrusted or refusing the login; the template
            missing; a planned name already taken in the inventory; the target would not honour
            the OVA's properties, transports or firmware (code "ova_refused").
        Interrupted: `stop` was set before the inventory was read.
    """
    from .vsphere import connect  # pyVmomi is needed here only

    request = _placement_request(placement, datastore)
    secrets_dir = Path(secrets_dir)
    plan, existing = prepare(plan, secrets_dir)
    ova, facts = _checked_ova(plan)
    own = vcenter is None
    stop = stop or StopSignal()
    if own:  # the login and the survey in a thread of their own: a stalled vCenter does not hold a stop
        vcenter = run_stoppable("the login to vCenter", lambda: connect(
            access.url, access.user, access.password, access.context), stop)
    stop.on_stop(vcenter.interrupt)
    try:
        run = run_stoppable("the inventory read", lambda: _survey(
            plan, existing, vcenter, secrets_dir, store, request, progress, ova, facts, ip_timeout, stop, check), stop)
        if not check:
            _carry_out(_steps(run, concurrency, store, remove_vapp), run.reports, plan.enroll, stop)
        return run.reports
    finally:
        if own and not stop.is_set():  # after a stop the process ends at once; the server drops the session
            with contextlib.suppress(Interrupted):
                run_stoppable("the logout", vcenter.close, stop)


def _placement_request(placement: PlacementRequest | None, datastore: str | None) -> PlacementRequest:
    """deploy's `placement`, with the older `datastore` spelling folded in."""
    request = placement or PlacementRequest()
    if datastore is not None:
        request = dataclasses.replace(request, datastore=datastore)
    return request


def _checked_ova(plan: DeployPlan):
    """(plan.ova opened, its descriptor's facts), or (None, None) for a clone; before vCenter is
    asked anything, an OVA whose descriptor cannot carry the plan's properties is refused.

    Raises:
        InvalidDeployPlan: the OVA is unreadable, not an OVA, or its descriptor cannot carry them.
    """
    from .ovafile import check_ova

    ova = check_ova(plan.ova) if plan.ova else None
    facts = ova.facts() if ova is not None else None
    if facts is not None:
        problems = check_descriptor(facts.transports, facts.firmware, facts.properties,
                                    plan.appliances[0].properties)
        if problems:
            raise InvalidDeployPlan(f"OVA {plan.ova}: {'; '.join(problems)}")
    return ova, facts


def _survey(plan: DeployPlan, existing, vcenter, secrets_dir: Path, store: TrustStore | None,
            request: PlacementRequest, progress: Progress, ova, facts, ip_timeout: float, stop: StopSignal,
            check: bool) -> "_Run":
    """Everything before the first VM is made: the template found (a clone), what a previous run
    made found and resumed or left as it is (converge.py), the placement chosen, and (an OVA) the
    import spec checked. Returns the run, its reports filled in for what exists.

    Raises:
        VsphereError: the template is missing; the target would not honour the OVA (see deploy).
    """
    from .vsphere import VsphereError

    inventory = vcenter.virtual_machines()
    template = None
    if ova is None:
        template = inventory.get(plan.template)
        if template is None:
            raise VsphereError(f"no virtual machine or template named {plan.template[:80]!r}", code="not_found")
    found = survey(plan, existing, inventory, vcenter, store)
    where = None
    if ova is not None or request != PlacementRequest():
        where = vcenter.placement(request)
        for note in where.notes:
            progress("placement", note)
    run = _Run(plan, vcenter, secrets_dir, progress, template, where, ova, facts, ip_timeout, stop)
    if ova is not None:
        run.check_import(plan.appliances[0])
    resume(run, found, existing, check)
    return run


def _steps(run: "_Run", concurrency: int, store: TrustStore | None,
           remove_vapp: bool) -> list[tuple[str, Callable[[], None]]]:
    """The run's steps for every appliance at once, in order, each under the name a stop during
    it is reported with: create, power on, and with enrollment wait for guest IP, enroll (which
    removes the secret keys afterwards)."""
    plan, stop = run.plan, run.stop
    steps = [("create", lambda: run.create_all(concurrency)),
             ("power on", lambda: _in_threads(concurrency, run.start, plan.appliances, run.reports, stop))]
    if plan.enroll:
        steps += [("wait for guest IP", lambda: _in_threads(concurrency, run.wait_for_ip, plan.appliances,
                                                             run.reports, stop)),
                  ("enroll", lambda: _enroll_and_scrub(plan, run.reports, run.vms, run.vcenter, concurrency, store,
                                                       run.progress, remove_vapp, stop,
                                                       tools_timeout=run.ip_timeout))]
    return steps


def _carry_out(steps: list[tuple[str, Callable[[], None]]], reports: list[ApplianceReport], enroll: bool,
               stop: StopSignal) -> None:
    """Each step in turn; once `stop` is set none starts, and the appliances not at their end are
    marked interrupted at the step that was running."""
    for step, carry_out in steps:
        if not stop.is_set():
            carry_out()
        if stop.is_set():
            _mark_interrupted(reports, step, enroll)
            break


class _Run:
    """One deploy's appliances through their steps; each step records its failure in the report."""

    def __init__(self, plan: DeployPlan, vcenter, secrets_dir: Path, progress: Progress, template,
                 where, ova, facts, ip_timeout: float = DEFAULT_IP_TIMEOUT, stop: StopSignal | None = None) -> None:
        self.plan, self.vcenter, self.secrets_dir, self.progress = plan, vcenter, secrets_dir, progress
        self.stop = stop or StopSignal()
        self.template, self.where, self.ova, self.facts = template, where, ova, facts
        self.ip_timeout = ip_timeout
        self.reports = [ApplianceReport(a.name, str(secrets_dir / a.secrets_file)) for a in plan.appliances]
        self.vms: dict[str, object] = {}  # by name; converge.resume fills in the VMs that exist
        self.kept_files: set[str] = set()  # names whose secrets file a previous run wrote
        self.spec = None

    def check_import(self, appliance: AppliancePlan) -> None:
        """CreateImportSpec for the first appliance; refuse before anything exists what the target
        would not honour (deployplan.check_import_spec)."""
        from .vsphere import VsphereError

        self.spec = self.vcenter.import_spec(self.ova, appliance.name, appliance.properties, appliance.extra_config,
                                             self.where, self.facts.networks)
        spec, _ = self.spec
        problems = check_import_spec(appliance.properties, self.vcenter.spec_vapp_properties(spec),
                                     self.vcenter.spec_transports(spec), self.vcenter.spec_firmware(spec),
                                     self.facts.firmware)
        if problems:
            raise VsphereError(f"importing {self.plan.ova} is refused before anything was created: "
                               f"{'; '.join(problems)}", code="ova_refused")

    def create_all(self, concurrency: int) -> None:
        """Every VM made and verified. An OVA is uploaded once: the first appliance is imported,
        the others are cloned from it (before it is powered on) with their own property values."""
        appliances, reports = list(self.plan.appliances), self.reports
        if self.ova is None or len(appliances) == 1:
            _in_threads(concurrency, self.create, appliances, reports, self.stop)
            return
        _in_threads(1, self.create, appliances[:1], reports[:1], self.stop)
        if self.stop.is_set():
            return
        source = self.vms.get(appliances[0].name)
        if source is None:
            for appliance, report in zip(appliances[1:], reports[1:]):
                report.status, report.failed_step = "failed", "clone the imported appliance"
                report.error = FirsttrustError(f"not created: the import of {appliances[0].name}, which the others "
                                               f"are cloned from, failed", code="source_failed")
            return
        keys = {pid: prop.key for pid, prop in self.vcenter.vapp_properties(source).items()}
        _in_threads(concurrency, lambda a, r: self.create(a, r, source=source, keys=keys), appliances[1:], reports[1:],
                    self.stop)

    def create(self, appliance: AppliancePlan, report: ApplianceReport, source=None, keys=None) -> None:
        from .vsphere import VsphereError

        vcenter, progress = self.vcenter, self.progress
        if appliance.name in self.vms:  # it exists: resumed or unchanged (converge.py)
            return
        step = "write secrets file"
        try:
            if appliance.name not in self.kept_files:
                write_secrets_file(self.secrets_dir / appliance.secrets_file, appliance)
            if source is not None:
                step = "clone the imported appliance"
                values = [(keys[k], v) for k, v in appliance.properties if k in keys]
                placement = dataclasses.replace(self.where, network=None)  # the source's NICs are mapped already
                vm = _timed(report, "clone", lambda: vcenter.clone(source, appliance.name, appliance.extra_config,
                                                                   placement, vapp_values=values))
                progress(appliance.name, f"cloned from {self.plan.appliances[0].name} as {vcenter.moid(vm)}")
            elif self.ova is not None:
                step = "import OVA"
                spec = self.spec if appliance is self.plan.appliances[0] else vcenter.import_spec(
                    self.ova, appliance.name, appliance.properties, appliance.extra_config, self.where,
                    self.facts.networks)
                vm = _timed(report, "import", lambda: vcenter.import_ova(
                    self.ova, appliance.name, spec, self.where,
                    on_upload=lambda path, size: progress(appliance.name, f"uploaded {path} ({size} bytes)")))
                progress(appliance.name, f"imported as {vcenter.moid(vm)}")
            else:
                step = "clone"
                vm = _timed(report, "clone", lambda: vcenter.clone(self.template, appliance.name,
                                                                   appliance.extra_config, self.where))
                progress(appliance.name, f"cloned as {vcenter.moid(vm)}")
            self.vms[appliance.name], report.vm = vm, vcenter.moid(vm)
            if self.ova is not None:
                step = "verify vApp properties"
                vapp = {pid: (prop.type, prop.value) for pid, prop in vcenter.vapp_properties(vm).items()}
                held, missing = verify_properties(vapp, appliance.properties)
                missing += missing_config(vcenter.extra_config(vm), appliance.extra_config)
                if missing:
                    raise VsphereError(f"the VM does not hold {', '.join(missing)}", code="extra_config")
                report.extra_config = held
            else:
                step = "verify extraConfig"
                missing = missing_config(vcenter.extra_config(vm), appliance.extra_config)
                if missing:
                    raise VsphereError(f"the clone's extraConfig lacks {', '.join(missing)}", code="extra_config")
                report.extra_config = "verified"
        except (FirsttrustError, OSError) as exc:
            _fail(report, step, exc, appliance)
            progress(appliance.name, f"failed at {step}: {report.error}")

    def start(self, appliance: AppliancePlan, report: ApplianceReport) -> None:
        if not report.ok or report.status != "planned":  # failed, or on already (converge.py)
            return
        try:
            _timed(report, "power_on", lambda: self.vcenter.power_on(self.vms[appliance.name]))
        except FirsttrustError as exc:
            _fail(report, "power on", exc, appliance)
            self.progress(appliance.name, f"failed at power on: {report.error}")
            return
        report.status = "deployed"
        self.progress(appliance.name, "powered on")

    def wait_for_ip(self, appliance: AppliancePlan, report: ApplianceReport) -> None:
        if not report.ok or report.status != "deployed":
            return
        try:
            report.ip = _timed(report, "wait_ip", lambda: self.vcenter.wait_for_ip(self.vms[appliance.name],
                                                                                  self.ip_timeout))
        except FirsttrustError as exc:
            _fail(report, "wait for guest IP", exc, appliance)
            self.progress(appliance.name, f"failed at wait for guest IP: {report.error}")
            return
        self.progress(appliance.name, f"guest IP {report.ip}")


def _trust_by_guest_command(plan: DeployPlan, reports: list[ApplianceReport], vms: dict, vcenter, concurrency: int,
                            store: TrustStore | None, progress: Progress, tools_timeout: float) -> None:
    """The guest-command way (requester/guestcommand.py) for every appliance that has an IP."""
    from .guestcommand import GuestLogin, trust_by_guest_command

    def trust(appliance: AppliancePlan, report: ApplianceReport) -> None:
        if not (report.ok and report.ip):
            return
        try:
            outcome = _timed(report, "guest_command", lambda: trust_by_guest_command(
                vcenter, vms[appliance.name], appliance.name, report.ip,
                guest=GuestLogin(GUEST_ACCOUNT, appliance.guest_password), store=store, tools_timeout=tools_timeout))
        except FirsttrustError as exc:
            _fail(report, "guest command", exc, appliance)
            progress(appliance.name, f"failed at guest command: {report.error}")
            return
        report.status, report.pin = "enrolled", outcome.pin
        progress(appliance.name, f"authorized by guest command, appliance certificate by {outcome.channel}, "
                                 f"first pinned call verified: {report.pin}")

    _in_threads(concurrency, trust, plan.appliances, reports)


def _enroll_and_scrub(plan: DeployPlan, reports: list[ApplianceReport], vms: dict, vcenter, concurrency: int,
                      store: TrustStore | None, progress: Progress, remove_vapp: bool = False,
                      stop: StopSignal | None = None, tools_timeout: float = DEFAULT_IP_TIMEOUT) -> None:
    """The enroll step: every appliance with an IP enrolled (or, the guest-command way, trusted by
    guest command), then, unless stopped, its secret keys removed from its VM."""
    stop = stop or StopSignal()
    by_name = {a.name: a for a in plan.appliances}
    ready = [r for r in reports if r.ok and r.ip]
    if plan.way == GUEST_COMMAND_WAY:
        _trust_by_guest_command(plan, reports, vms, vcenter, concurrency, store, progress, tools_timeout)
        ready = []
    _record_enrollments(ready, by_name, _enroll_ready(ready, by_name, concurrency, store, stop), progress)
    if not stop.is_set():
        _in_threads(concurrency, lambda appliance, report: _scrub(plan, vms, vcenter, progress, remove_vapp,
                                                                  appliance, report),
                    plan.appliances, reports, stop)


def _enroll_ready(ready: list[ApplianceReport], by_name: dict[str, AppliancePlan], concurrency: int,
                  store: TrustStore | None, stop: StopSignal) -> dict[str, object]:
    """Enroll the appliances that have an IP (library.enroll_many): their outcomes by name, as
    far as they ended before a stop."""
    targets = [Target(r.name, r.ip, by_name[r.name].secrets, by_name[r.name].deployment_id) for r in ready]
    done: dict[str, object] = {}  # what ended before a stop, as it ended
    if targets:
        outcomes = run_coroutine(lambda: enroll_many(targets, concurrency=concurrency, store=store,
                                                     on_done=lambda o: done.setdefault(o.target.name, o)), stop)
        if outcomes is not None:  # all of them ended (None: stopped, `done` has what ended before)
            done = {outcome.target.name: outcome for outcome in outcomes}
    return done


def _record_enrollments(ready: list[ApplianceReport], by_name: dict[str, AppliancePlan], done: dict[str, object],
                        progress: Progress) -> None:
    """Each outcome into its appliance's report: pinned, or failed at enroll."""
    for report in ready:
        outcome = done.get(report.name)
        if outcome is None:
            continue  # interrupted: marked so by the caller
        report.seconds["enroll"] = outcome.seconds
        if outcome.ok:
            report.status, report.pin = outcome.status, outcome.record.pin
            progress(report.name, f"{outcome.status}: {report.pin}")
        else:
            _fail(report, "enroll", outcome.error, by_name[report.name])
            progress(report.name, f"failed at enroll: {report.error}")


def _scrub(plan: DeployPlan, vms: dict, vcenter, progress: Progress, remove_vapp: bool, appliance: AppliancePlan,
           report: ApplianceReport) -> None:
    """An enrolled appliance's secret keys removed from its VM and read back, and (an OVA) its OVF
    environment removed. A failure is reported, never fails the appliance: it is pinned."""
    if report.status not in ("enrolled", "already-pinned") or report.action == "unchanged":
        return
    vm = vms[appliance.name]
    try:
        if plan.ova:
            report.scrub = _timed(report, "scrub", lambda: scrub_imported(vcenter, vm))
        else:
            _timed(report, "scrub", lambda: vcenter.set_extra_config(vm, [(key, "") for key in plan.scrub_keys]))
            report.scrub = scrub_status(vcenter.extra_config(vm), plan.scrub_keys)
        progress(appliance.name, "secret keys: " + ", ".join(f"{k} {v}" for k, v in report.scrub.items()))
    except FirsttrustError as exc:  # enrolled and pinned all the same: say so, do not fail it
        report.scrub = {key: f"not removed ({exc.code})" for key in plan.scrub_keys}
        progress(appliance.name, f"secret keys not removed: {_redact(str(exc), appliance)}")
    if plan.ova:
        try:
            report.environment = _timed(report, "remove_environment",
                                        lambda: remove_environment(vcenter, vm, remove_vapp))
        except FirsttrustError as exc:
            report.environment = f"not removed ({exc.code}): {_redact(str(exc), appliance)}"
        progress(appliance.name, f"OVF environment: {report.environment}")


def scrub_imported(vcenter, vm) -> dict[str, str]:
    """An OVA-deployed VM's secret properties set to "" (ReconfigVM_Task, a vAppConfig edit by
    integer key) and read back as deployplan.vapp_scrub_status says: a write-only (password)
    property as CLEARED_WRITE_ONLY, since no read can show it.

    Raises:
        VsphereError (code "extra_config"): the VM has none of the secret properties.
    """
    from .vsphere import VsphereError

    vapp = vcenter.vapp_properties(vm)
    keys = [vapp[key].key for key in OVA_SCRUB_KEYS if key in vapp]
    if not keys:
        raise VsphereError("the VM has no secret vApp property to clear", code="extra_config")
    vcenter.clear_vapp_properties(vm, keys)
    return vapp_scrub_status({pid: (p.type, p.value) for pid, p in vcenter.vapp_properties(vm).items()})


def remove_environment(vcenter, vm, remove_vapp: bool = False) -> str:
    """Remove the OVF environment from the VM (Vcenter.remove_ovf_environment) and say what the
    read-back shows, in one phrase for the report.

    Raises:
        VsphereError (code "environment"): the read-back still shows a transport or a connected
            environment CD-ROM.
    """
    from .vsphere import VsphereError

    vcenter.remove_ovf_environment(vm, remove_vapp=remove_vapp)
    transports, drives, has_vapp = vcenter.ovf_environment_state(vm)
    left = [t for t in transports if t]
    if left or drives or (remove_vapp and has_vapp):
        what = ([f"transport {' '.join(left)}"] if left else []) + ([f"CD-ROM {', '.join(drives)} connected"]
                                                                    if drives else [])
        raise VsphereError(f"the VM still has {', '.join(what) or 'a vApp configuration'}", code="environment")
    return ("vApp configuration removed" if remove_vapp else "transport removed") + "; no ISO CD-ROM connected"


def _in_threads(concurrency: int, work, appliances, reports, stop: StopSignal | None = None) -> None:
    """`work(appliance, report)` for each, `concurrency` at once (interrupts.run_each: none starts
    after a stop). A wait cut short by the stop records the vCenter task it was waiting on."""
    from .vsphere_wait import WaitInterrupted

    def guarded(appliance: AppliancePlan, report: ApplianceReport) -> None:
        try:
            work(appliance, report)
        except WaitInterrupted as exc:
            report.task = getattr(exc, "task", None) or report.task
            raise

    run_each(guarded, list(zip(appliances, reports)), concurrency, stop or StopSignal())


def _mark_interrupted(reports: list[ApplianceReport], step: str, enroll: bool) -> None:
    """After a stop during `step`: every appliance not at its end is "interrupted", at the step it
    had reached (what the re-run starts from)."""
    for report in reports:
        if step == "enroll" and report.status in ("enrolled", "already-pinned") and not report.scrub:
            report.status, report.failed_step = "interrupted", "remove the secret keys"  # pinned; the re-run scrubs
            report.error = Interrupted("stopped after enrollment, before the secret keys were removed from the VM")
            continue
        if report.status == "planned":
            reached = "power on" if report.vm else "create"
        elif report.status == "deployed" and enroll:
            reached = "enroll" if report.ip else "wait for guest IP"
        else:
            continue
        report.status, report.failed_step = "interrupted", reached
        in_flight = f"; vCenter task {report.task} was in flight (the re-run finds what it made)" \
            if report.task else ""
        report.error = Interrupted(f"stopped before {reached} ended{in_flight}")


def _timed(report: ApplianceReport, what: str, call):
    started = time.perf_counter()
    try:
        return call()
    finally:
        report.seconds[what] = time.perf_counter() - started


def _fail(report: ApplianceReport, step: str, exc: BaseException, appliance: AppliancePlan) -> None:
    if not isinstance(exc, FirsttrustError):
        exc = FirsttrustError(f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}", code="io")
    report.status, report.failed_step = "failed", step
    report.error = FirsttrustError(_redact(str(exc), appliance), code=exc.code)


def _redact(text: str, appliance: AppliancePlan) -> str:
    """No server message is trusted not to echo what it was sent."""
    for value in appliance.secret_values:
        text = text.replace(value, "<secret>")
    return text
