"""What a `firsttrust deploy` re-run finds, and what it does about each appliance: it converges.

The same command again after a partial run (a failure, Ctrl-C, a crash) finishes the job, as
Terraform's apply or Ansible's `state: present` would: per appliance, from what exists,

    secrets file   VM of that name                    pinned with its id   ->  action
    -------------  ---------------------------------  -------------------      ---------
    absent         absent                                                      created
    absent         present                                                     refused: not ours (name_taken)
    present        absent                                                      created (with the file's secrets)
    present        carrying the file's deployment id  no, or not powered on    resumed: power on, enroll, scrub
    present        carrying the file's deployment id  yes, powered on, no      unchanged
                                                      secret key left
    present        carrying another id, or none                                refused: not ours (name_taken)
    present, no id (written before deployment ids)                             refused: cannot tell (name_taken)

`prepare` reads the secrets files (no network), `survey` reads vCenter and the trust store
(nothing changed) and raises before anything is created when a name belongs to someone else;
deployer.deploy then acts on the survey. The deployment id (requester/deploymentid.py) is what
makes a VM "ours": never a name alone. A clone task still running in vCenter from the
interrupted run is not in the inventory yet: the re-run's clone of that name then fails
(DuplicateName) and the run after it resumes the VM.

`destroy` is the way back: power off and delete a VM carrying the expected id, then forget its
pin and its secrets file (requester/destroycommand.py asks first).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from firsttrust.common.files import FileTooLarge, read_bounded
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.errors import FirsttrustError, InvalidSecret

from .deploymentid import deployment_id_of, vm_deployment_id
from .deployplan import AppliancePlan, DeployPlan, InvalidDeployPlan, current_values
from .deployspec import InvalidDeploySpec, secrets_from_json
from .store import open_store
from .truststore import TrustStore, UnknownAppliance

CREATED, RESUMED, UNCHANGED = "created", "resumed", "unchanged"
# A secrets file is ~150 bytes; the cap keeps a wrong file (an image in the directory) unread.
MAX_SECRETS_FILE = 64 * 1024


class VmNameTaken(InvalidDeployPlan):
    """A planned name belongs to a VM that is not this deployment's: the input's to change."""

    code = "name_taken"


@dataclass(frozen=True)
class Existing:
    """A secrets file the plan found: the appliance's secrets and deployment id (None: old file)."""

    secrets: EnrollmentSecrets = dataclasses.field(repr=False)
    deployment_id: str | None


@dataclass
class Found:
    """What `survey` decided for one appliance."""

    action: str  # CREATED, RESUMED, UNCHANGED
    vm: object = None
    powered_on: bool = False
    pin: str | None = None


def read_secrets_file(path: Path) -> Existing:
    """Raises: InvalidDeployPlan naming the file (never a value) when it is not a secrets file."""
    try:
        data = read_bounded(path, MAX_SECRETS_FILE, error=InvalidDeployPlan, too_large=FileTooLarge)
        return Existing(secrets_from_json(data), deployment_id_of(data))
    except FileTooLarge:
        reason = f"larger than {MAX_SECRETS_FILE} bytes"
    except InvalidDeployPlan:  # unreadable: said as such, not as "not a secrets file"
        raise
    except (InvalidDeploySpec, InvalidSecret) as exc:
        reason = str(exc)
    raise InvalidDeployPlan(f"{path} exists and is not a secrets file ({reason}); move it away") from None


def prepare(plan: DeployPlan, secrets_dir: Path) -> tuple[DeployPlan, dict[str, Existing]]:
    """The plan with each appliance whose secrets file exists switched to that file's secrets and
    deployment id, and those files by name. Reads files only.

    Raises:
        InvalidDeployPlan: the directory is missing or not a directory; a file there is not a
            secrets file, or is one from before deployment ids (nothing can tell its VM is ours).
    """
    if not secrets_dir.exists():
        raise InvalidDeployPlan(f"the secrets directory {secrets_dir} does not exist")
    if not secrets_dir.is_dir():
        raise InvalidDeployPlan(f"the secrets directory {secrets_dir} is not a directory")
    existing: dict[str, Existing] = {}
    appliances = []
    for appliance in plan.appliances:
        path = secrets_dir / appliance.secrets_file
        if os.path.lexists(path):
            found = read_secrets_file(path)
            if found.deployment_id is None:
                raise InvalidDeployPlan(f"{path} exists and has no deployment id (written before deploy "
                                        f"kept one): nothing can tell which VM it belongs to; choose other names "
                                        f"or another directory")
            existing[appliance.name] = found
            appliance = with_secrets(appliance, found.secrets, found.deployment_id)
        appliances.append(appliance)
    return dataclasses.replace(plan, appliances=tuple(appliances)), existing


def with_secrets(appliance: AppliancePlan, secrets: EnrollmentSecrets, deployment_id: str) -> AppliancePlan:
    """`appliance` carrying these secrets and this id in place of the planned ones (the planned
    values are fresh random strings, so a value match finds exactly them)."""
    swap = {appliance.secrets.sec_a: secrets.sec_a, appliance.secrets.sec_b: secrets.sec_b,
            appliance.deployment_id: deployment_id}

    def swapped(pairs):
        return tuple((key, swap.get(value, value)) for key, value in pairs)

    return dataclasses.replace(appliance, secrets=secrets, deployment_id=deployment_id,
                               extra_config=swapped(appliance.extra_config), properties=swapped(appliance.properties))


def survey(plan: DeployPlan, existing: dict[str, Existing], inventory: dict, vcenter,
           store: TrustStore | None = None) -> dict[str, Found]:
    """Per appliance, what the re-run does (the module docstring's table). Reads only.

    Raises:
        VmNameTaken (code "name_taken", exit 2 like a secrets file in the way): a VM of a planned
            name is not this deployment's (no secrets file for it, or it carries another id or
            none). Nothing was changed.
    """
    store = store or open_store()  # the configured backend (docs/fleet.md)
    found: dict[str, Found] = {}
    foreign = []
    for appliance in plan.appliances:
        vm = inventory.get(appliance.name)
        mine = existing.get(appliance.name)
        if vm is None:
            found[appliance.name] = Found(CREATED)
            continue
        config = vcenter.extra_config(vm)
        if mine is None or vm_deployment_id(config) != mine.deployment_id:
            foreign.append(appliance.name)
            continue
        on = power_state(vcenter, vm) == "poweredOn"
        pin = _pinned(store, appliance.name, mine.deployment_id)
        secrets_left = any(current_values(config).get(key) for key in plan.scrub_keys) if not plan.ova else False
        action = UNCHANGED if (pin and on and not secrets_left) else RESUMED
        found[appliance.name] = Found(action, vm, on, pin)
    if foreign:
        raise VmNameTaken(f"a virtual machine named {foreign[0]!r} exists already and is not this deployment's "
                           f"(no secrets file for it here, or it carries another deployment id)"
                          f"{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}; choose other names; "
                          f"nothing was changed")
    return found


def resume(run, found: dict[str, Found], existing: dict[str, Existing], check: bool = False) -> None:
    """Carry the survey into deployer._Run: the VMs that exist, the secrets files not to write
    again, each report's action and where its steps start (powered on: "deployed"; unchanged:
    "already-pinned", no step at all). With `check` every report is "checked"."""
    run.kept_files = set(existing)
    for appliance, report in zip(run.plan.appliances, run.reports):
        found_here = found[appliance.name]
        report.action = found_here.action
        if found_here.vm is not None:
            run.vms[appliance.name] = found_here.vm
            report.vm = run.vcenter.moid(found_here.vm)
            if found_here.action == UNCHANGED:
                report.status, report.pin = "already-pinned", found_here.pin
            elif found_here.powered_on:
                report.status = "deployed"
        if check:
            report.status = "checked"
        run.progress(appliance.name, f"{'check: would be ' if check else ''}{found_here.action}"
                                     f"{f' ({report.vm})' if report.vm else ''}")


def _pinned(store: TrustStore, name: str, deployment_id: str) -> str | None:
    try:
        record = store.get(name)
    except UnknownAppliance:
        return None
    return record.pin if record.deployment_id == deployment_id else None


def power_state(vcenter, vm) -> str:
    """"poweredOn", "poweredOff" or "suspended" (VirtualMachine.runtime.powerState)."""
    state = getattr(vcenter, "power_state", None)
    if state is not None:  # a test double
        return state(vm)
    from .vsphere import api_call
    with api_call("reading the power state"):
        return str(vm.runtime.powerState)


# --- destroy --------------------------------------------------------------------------------------


class NotOurs(FirsttrustError):
    """The VM of that name does not carry the deployment id of the secrets file: left alone."""

    code = "not_ours"


@dataclass
class Destroyed:
    name: str
    vm: str | None = None  # what was deleted ("-" when there was no VM left)
    pin: str | None = None  # the pin that was removed
    secrets_file: str | None = None  # removed
    error: FirsttrustError | None = None


def destroy_one(vcenter, inventory: dict, name: str, secrets_dir: Path, store: TrustStore) -> Destroyed:
    """Power off and delete the VM `name` if it carries the id of `secrets_dir/name.json`, then
    remove the pin (when it is this deployment's or carries no id) and the secrets file.

    Raises:
        InvalidDeployPlan: no secrets file, or one without a deployment id.
        NotOurs: the VM carries another id or none (nothing was changed).
        VsphereError: vCenter refused the power-off or the deletion.
    """
    path = secrets_dir / f"{name}.json"
    if not os.path.lexists(path):
        raise InvalidDeployPlan(f"{path} does not exist: without it nothing tells that {name} is this "
                                f"deployment's (give --secrets-dir)")
    mine = read_secrets_file(path)
    if mine.deployment_id is None:
        raise InvalidDeployPlan(f"{path} has no deployment id: nothing tells which VM it belongs to")
    result = Destroyed(name)
    vm = inventory.get(name)
    if vm is not None:
        carried = vm_deployment_id(vcenter.extra_config(vm))
        if carried != mine.deployment_id:
            raise NotOurs(f"the VM {name} carries {f'deployment {carried}' if carried else 'no deployment id'}, "
                          f"not {mine.deployment_id} of {path}: left alone")
        result.vm = vcenter.moid(vm)
        if power_state(vcenter, vm) != "poweredOff":
            _task(vcenter, vm, "PowerOffVM_Task", f"powering off {name}")
        _task(vcenter, vm, "Destroy_Task", f"deleting {name}")
    try:
        record = store.get(name)
        if record.deployment_id in (None, mine.deployment_id):
            store.remove(name)
            result.pin = record.pin
    except UnknownAppliance:
        pass
    path.unlink()
    result.secrets_file = str(path)
    return result


def _task(vcenter, vm, method: str, what: str) -> None:
    from .vsphere import api_call
    with api_call(what):
        task = getattr(vm, method)()
    vcenter.wait_task(task, what)
