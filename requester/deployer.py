"""Deploy appliances through the vSphere API and enroll them: the library behind `firsttrust deploy`.

    access = VcenterAccess.from_environment(url, pinned_context(thumbprint))   # or credentials file
    plan = plan_deployment(url, "appliance-template", appliance_names(prefix="app", count=10))
    reports = deploy(plan, access, Path("secrets"), concurrency=8)

Per appliance, in this order (deployplan.steps): write `<name>.json` (0600, before the VM exists,
so a crash never leaves a VM whose secrets are lost); clone the template with the secrets in the
clone spec's extraConfig, or (plan.ova) import the OVA with the secrets as its vApp properties;
read the config back and check every planned key; power on. With
enrollment: wait for VMware Tools to report an IP, enroll all of them with bounded concurrency
(library.enroll_many), then remove the secret keys through the API and read back whether they
are gone. One appliance's failure never stops the others: each gets an ApplianceReport.

The pyVmomi calls are all in requester/vsphere.py; the decisions in requester/deployplan.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from firsttrust.errors import FirsttrustError

from .deployplan import (
    OVA_SCRUB_KEYS,
    AppliancePlan,
    DeployPlan,
    InvalidDeployPlan,
    missing_config,
    scrub_status,
    vapp_scrub_status,
    verify_properties,
)
from .deployspec import secrets_to_json
from .library import Target, enroll_many
from .truststore import TrustStore, fsync_directory

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
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(MAX_CREDENTIALS_BYTES + 1)
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials file {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise CredentialsError(f"credentials file {path} is accessible to group or others "
                               f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    try:
        document = json.loads(data.decode("utf-8")) if len(data) <= MAX_CREDENTIALS_BYTES else None
    except (UnicodeDecodeError, ValueError):
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
    status: str = "planned"  # planned -> deployed -> enrolled | already-pinned; or failed
    vm: str | None = None  # the managed object ID, e.g. vm-42
    ip: str | None = None
    pin: str | None = None
    extra_config: str = "not checked"  # "verified" once read back; --ova: "verified (vApp properties)" or
    # "verified (extraConfig: ...)", where the server kept the properties (deployplan.verify_properties)
    scrub: dict[str, str] = field(default_factory=dict)
    error: FirsttrustError | None = None
    failed_step: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "vm": self.vm, "ip": self.ip, "pin": self.pin,
                "secrets_file": self.secrets_file, "extra_config": self.extra_config, "scrub": self.scrub,
                "error": None if self.error is None else {"code": self.error.code, "message": str(self.error),
                                                          "step": self.failed_step},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def check_secrets_dir(plan: DeployPlan, secrets_dir: Path) -> None:
    """Before anything is touched: the directory exists and holds none of the plan's files.

    Raises:
        InvalidDeployPlan: it does not exist, or a secrets file is already there (never replaced:
            it may hold the only copy of another appliance's secrets).
    """
    if not secrets_dir.is_dir():
        raise InvalidDeployPlan(f"the secrets directory {secrets_dir} does not exist")
    for appliance in plan.appliances:
        if os.path.lexists(secrets_dir / appliance.secrets_file):
            raise InvalidDeployPlan(f"{secrets_dir / appliance.secrets_file} already exists; "
                                    f"choose other names or another directory")


def write_secrets_file(path: Path, appliance: AppliancePlan) -> None:
    """The appliance's secrets, as `firsttrust secrets new` writes them: a new file, 0600 from
    creation, fsynced with its directory. Never replaces a file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets_to_json(appliance.secrets))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def deploy(plan: DeployPlan, access: VcenterAccess, secrets_dir: Path, *, concurrency: int = DEFAULT_CONCURRENCY,
           ip_timeout: float = DEFAULT_IP_TIMEOUT, store: TrustStore | None = None,
           progress: Progress = lambda name, event: None, datastore: str | None = None) -> list[ApplianceReport]:
    """Carry out `plan` (see the module docstring), one report per appliance in plan order.
    With plan.ova, `datastore` names the datastore to import to (default: vsphere.import_target's).

    Raises (before any VM or file is created):
        InvalidDeployPlan: the secrets directory is missing or already holds a plan's file; the
            OVA is unreadable or not an OVA.
        VsphereError: vCenter unreachable, untrusted or refusing the login; the template, or
            the OVA's target, is missing; a planned name is already taken in the inventory.
    """
    from .ovafile import check_ova
    from .vsphere import VsphereError, connect  # pyVmomi is needed here only

    check_secrets_dir(plan, secrets_dir)
    ova = check_ova(plan.ova) if plan.ova else None
    vcenter = connect(access.url, access.user, access.password, access.context)
    try:
        inventory = vcenter.virtual_machines()
        if ova is not None:
            target = vcenter.import_target(datastore)
        else:
            template = inventory.get(plan.template)
            if template is None:
                raise VsphereError(f"no virtual machine or template named {plan.template[:80]!r}", code="not_found")
        taken = [a.name for a in plan.appliances if a.name in inventory]
        if taken:
            raise VsphereError(f"a virtual machine named {taken[0]!r} exists already"
                               f"{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''}", code="name_taken")
        reports = [ApplianceReport(a.name, str(secrets_dir / a.secrets_file)) for a in plan.appliances]
        vms: dict[str, object] = {}

        def bring_up(appliance: AppliancePlan, report: ApplianceReport) -> None:
            step = "write secrets file"
            try:
                write_secrets_file(secrets_dir / appliance.secrets_file, appliance)
                if ova is not None:
                    step = "import OVA"
                    vm = _timed(report, "import", lambda: vcenter.import_ova(
                        ova, appliance.name, appliance.properties, appliance.extra_config, target,
                        on_upload=lambda path, size: progress(appliance.name, f"uploaded {path} ({size} bytes)")))
                    vms[appliance.name], report.vm = vm, vcenter.moid(vm)
                    progress(appliance.name, f"imported as {report.vm}")
                    step = "verify vApp properties"
                    vapp = {key: value for key, (_, value) in vcenter.vapp_properties(vm).items()}
                    entries = vcenter.extra_config(vm)
                    held, missing = verify_properties(vapp, entries, appliance.properties)
                    missing += missing_config(entries, appliance.extra_config)
                    if missing:
                        raise VsphereError(f"the imported VM lacks {', '.join(missing)}", code="extra_config")
                    report.extra_config = held
                else:
                    step = "clone"
                    vm = _timed(report, "clone", lambda: vcenter.clone(template, appliance.name,
                                                                       appliance.extra_config))
                    vms[appliance.name], report.vm = vm, vcenter.moid(vm)
                    progress(appliance.name, f"cloned as {report.vm}")
                    step = "verify extraConfig"
                    missing = missing_config(vcenter.extra_config(vm), appliance.extra_config)
                    if missing:
                        raise VsphereError(f"the clone's extraConfig lacks {', '.join(missing)}", code="extra_config")
                    report.extra_config = "verified"
                step = "power on"
                _timed(report, "power_on", lambda: vcenter.power_on(vm))
                report.status = "deployed"
                progress(appliance.name, "powered on")
                if plan.enroll:
                    step = "wait for guest IP"
                    report.ip = _timed(report, "wait_ip", lambda: vcenter.wait_for_ip(vm, ip_timeout))
                    progress(appliance.name, f"guest IP {report.ip}")
            except (FirsttrustError, OSError) as exc:
                _fail(report, step, exc, appliance)
                progress(appliance.name, f"failed at {step}: {report.error}")

        _in_threads(concurrency, bring_up, plan.appliances, reports)
        if plan.enroll:
            _enroll_and_scrub(plan, reports, vms, vcenter, concurrency, store, progress)
        return reports
    finally:
        vcenter.close()


def _enroll_and_scrub(plan: DeployPlan, reports: list[ApplianceReport], vms: dict, vcenter, concurrency: int,
                      store: TrustStore | None, progress: Progress) -> None:
    by_name = {a.name: a for a in plan.appliances}
    ready = [r for r in reports if r.ok and r.ip]
    targets = [Target(r.name, r.ip, by_name[r.name].secrets) for r in ready]
    outcomes = asyncio.run(enroll_many(targets, concurrency=concurrency, store=store)) if targets else []
    for report, outcome in zip(ready, outcomes):
        report.seconds["enroll"] = outcome.seconds
        if outcome.ok:
            report.status, report.pin = outcome.status, outcome.record.pin
            progress(report.name, f"{outcome.status}: {report.pin}")
        else:
            _fail(report, "enroll", outcome.error, by_name[report.name])
            progress(report.name, f"failed at enroll: {report.error}")

    def scrub(appliance: AppliancePlan, report: ApplianceReport) -> None:
        if report.status not in ("enrolled", "already-pinned"):
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

    _in_threads(concurrency, scrub, plan.appliances, reports)


def scrub_imported(vcenter, vm) -> dict[str, str]:
    """An OVA-deployed VM's secret properties set to "", where the VM holds them, and read back:
    its vApp properties (ReconfigVM_Task with a vAppConfig edit by integer key) if it has any,
    else the extraConfig keys vcsim 0.24 made of the PropertyMapping."""
    vapp = vcenter.vapp_properties(vm)
    if vapp:
        vcenter.clear_vapp_properties(vm, [vapp[key][0] for key in OVA_SCRUB_KEYS if key in vapp])
        return vapp_scrub_status({key: value for key, (_, value) in vcenter.vapp_properties(vm).items()})
    vcenter.set_extra_config(vm, [(key, "") for key in OVA_SCRUB_KEYS])
    return scrub_status(vcenter.extra_config(vm), OVA_SCRUB_KEYS)


def _in_threads(concurrency: int, work, appliances, reports) -> None:
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(appliances)))) as pool:
        for future in [pool.submit(work, a, r) for a, r in zip(appliances, reports)]:
            future.result()


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
