"""The deploy plan: which appliances, which names, which extraConfig, what to scrub. No IO.

    plan = plan_deployment("https://vc.example/sdk", "appliance-template", appliance_names(prefix="app", count=2))
    plan.describe()                      # the plan without secret values (--dry-run)
    plan.appliances[0].extra_config      # guestinfo.firsttrust.* = values, then the VMX hardening
    scrub_status(read_back, SCRUB_KEYS)  # {"guestinfo.firsttrust.sec-a": "removed", ...}

`requester/vsphere.py` turns a plan into pyVmomi calls; everything that can be decided without a
server is decided here, so every rule is a three-line test (tests/unit/test_deployplan.py).

One appliance is one clone of the template with its own fresh secrets, carried as
`guestinfo.firsttrust.*` extraConfig keys in the clone spec itself (one task, no window in which
the VM exists without them), plus the settings that make guestinfo root-only in the guest
(deployspec.HARDENING_VMX_SETTINGS). Its secrets file is `<name>.json` under the secrets
directory: the same JSON `firsttrust secrets new` writes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from firsttrust import credentials
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import GUEST_PASSWORD, SEC_A, SEC_B, guestinfo_key
from .deploymentid import DEPLOYMENT_ID_KEY, new_deployment_id
from .deployspec import HARDENING_VMX_SETTINGS, InvalidDeploySpec, deployment_properties, user_configurable
from .profile import host_name_ok, shown_url
from .truststore import NAME_RE

# How many appliances one command deploys at most. vCenter's own limits are far above (a
# vCenter 8 manages 40 000 powered-on VMs); the cap keeps a typo (--count 100000) from
# becoming an outage, and a larger rollout can be split into commands.
MAX_COUNT = 1000

# The keys that carry a secret: removed after a successful enrollment. The certificate and the
# enrollment window are not secret and stay for the record.
SCRUB_KEYS = (guestinfo_key(SEC_A), guestinfo_key(SEC_B))
# With --ova the secrets are vApp properties (or, on vcsim 0.24, extraConfig keys) named without
# the guestinfo. prefix: the OVF ProductSection's keys (packaging/ova/descriptor.py).
OVA_SCRUB_KEYS = (SEC_A, SEC_B)

# The ways in `firsttrust deploy --way` offers (the same names as `pin-cert --embodiment`):
# SRP with the two secrets, or the guest command run through vCenter's guest operations
# (requester/guestcommand.py), with a guest account's password injected beside the secrets.
SRP_WAY, GUEST_COMMAND_WAY = "srp", "guest-command"
WAYS = (SRP_WAY, GUEST_COMMAND_WAY)

VERIFIED_VAPP = "verified (vApp properties; write-only ones by key, id and type)"

REMOVED = "removed"
NOT_REMOVED = "not removed"
# A password-typed vApp property reads back "" whatever it holds (VAppPropertyInfo.type), so its
# scrub can be sent but never read back: said as what it is. The guest side proves delivery
# (the enrollment itself; the agent's status names the source it read).
CLEARED_WRITE_ONLY = "cleared; write-only, the server cannot show it"
PASSWORD_TYPE = "password"
# DSP0243 clause 11.1 and VmConfigSpec.ovfEnvironmentTransport: the transports vCenter offers.
KNOWN_TRANSPORTS = ("com.vmware.guestInfo", "iso")
KNOWN_FIRMWARE = ("bios", "efi")


class InvalidDeployPlan(InvalidDeploySpec):
    """An input to the plan is unusable: names, count, template, vCenter URL, thumbprint,
    credentials, secrets directory. The caller's to fix (the CLI's exit 2, as InvalidDeploySpec)."""

    code = "invalid_deploy_plan"


@dataclass(frozen=True)
class AppliancePlan:
    """One appliance: its VM name, its secrets, and the extraConfig its clone or import spec carries.

    `properties` are the deployment properties by their unprefixed keys: with --ova, the import's
    PropertyMapping, the user-configurable ones only (and `extra_config` only the VMX hardening);
    with --template, `extra_config`
    carries them as guestinfo.* keys and `properties` is empty.
    """

    name: str
    secrets: EnrollmentSecrets = field(repr=False)
    extra_config: tuple[tuple[str, str], ...] = field(repr=False)
    secrets_file: str
    properties: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # The guest-command way: the guest account's password (GUEST_PASSWORD), per appliance.
    guest_password: str | None = field(default=None, repr=False)
    # Whether SEC-A and SEC-B are injected (and kept in `secrets_file`): not for the guest-command
    # way, whose appliances then never open their SRP door.
    srp: bool = True
    deployment_id: str | None = None  # requester/deploymentid.py: in the secrets file, on the VM, in the pin

    @property
    def secret_values(self) -> tuple[str, ...]:
        return (self.secrets.sec_a, self.secrets.sec_b) + ((self.guest_password,) if self.guest_password else ())

    @property
    def guest_file(self) -> str:
        """The guest account's credentials file beside the secrets file (0600)."""
        return f"{self.name}.guest.json"

    def describe(self) -> dict:
        """This appliance's plan with every secret value replaced by "<secret>"."""
        hidden = set(self.secret_values)
        described = {"name": self.name, "secrets_file": self.secrets_file, "deployment_id": self.deployment_id,
                     "extra_config": {key: "<secret>" if value in hidden else value for key, value in self.extra_config}}
        if self.properties:
            described["vapp_properties"] = {key: "<secret>" if value in hidden else value
                                            for key, value in self.properties}
        return described


@dataclass(frozen=True)
class DeployPlan:
    """`template` (clone) or `ova` (import): exactly one is set."""

    vcenter: str
    template: str | None
    appliances: tuple[AppliancePlan, ...]
    enroll: bool = True
    ova: str | None = None
    way: str = SRP_WAY  # WAYS: how trust is established after power-on

    @property
    def scrub_keys(self) -> tuple[str, ...]:
        if self.ova:
            return OVA_SCRUB_KEYS
        if self.way == GUEST_COMMAND_WAY:
            return (guestinfo_key(GUEST_PASSWORD),)  # no SRP secrets were injected
        guest = any(a.guest_password for a in self.appliances)
        return SCRUB_KEYS + ((guestinfo_key(GUEST_PASSWORD),) if guest else ())

    def describe(self) -> dict:
        """The whole plan without secret values: what --dry-run prints."""
        source = {"ova": self.ova} if self.ova else {"template": self.template}
        return {"vcenter": self.vcenter, **source, "enroll": self.enroll,
                "steps": list(steps(self.enroll, ova=bool(self.ova))),
                "scrub_after_enroll": list(self.scrub_keys) if self.enroll else [],
                "appliances": [appliance.describe() for appliance in self.appliances]}


def steps(enroll: bool, ova: bool = False) -> tuple[str, ...]:
    """What happens to each appliance, in order."""
    head = ("write secrets file", "import OVA with vApp properties" if ova else "clone with extraConfig",
            "verify vApp properties" if ova else "verify extraConfig", "power on")
    tail = ("wait for guest IP", "enroll and pin", "remove secret keys")
    if ova:
        tail += ("remove the OVF environment",)
    return head + (tail if enroll else ())


def appliance_names(name: str | None = None, prefix: str | None = None, count: int | None = None) -> list[str]:
    """`name` alone, or `prefix`-01 .. `prefix`-NN (zero-padded so they sort; at least two digits).

    Raises:
        InvalidDeployPlan: both or neither forms, a count outside 1..MAX_COUNT, or a name the
            trust store cannot hold (1-64 letters, digits, '.', '_', '-'; it is also a file name).
    """
    if (name is None) == (prefix is None):
        raise InvalidDeployPlan("give either a name, or a name prefix and a count")
    if name is not None:
        if count not in (None, 1):
            raise InvalidDeployPlan("a single name deploys one appliance; use a name prefix for more")
        names = [name]
    else:
        if count is None or not 1 <= count <= MAX_COUNT:
            raise InvalidDeployPlan(f"the count must be between 1 and {MAX_COUNT}")
        width = max(2, len(str(count)))
        names = [f"{prefix}-{index:0{width}d}" for index in range(1, count + 1)]
    for candidate in names:
        _check_name(candidate)
    return names


def _check_name(name: object) -> None:
    """A name the trust store can hold; it also names the secrets files (NAME.json), so nothing
    that could lead out of the secrets directory ('/', '..') passes."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidDeployPlan(f"invalid appliance name {str(name)[:70]!r}: 1-64 letters, digits, '.', '_' "
                                f"or '-', starting with a letter or digit")


def check_vcenter_url(url: str) -> str:
    """An https URL with a host: credentials are never sent over plain http.

    Raises:
        InvalidDeployPlan: anything else.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidDeployPlan(f"invalid vCenter URL {shown_url(url)!r}") from None
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise InvalidDeployPlan("the vCenter URL must be https://HOST[:PORT][/sdk], without credentials in it")
    if not host_name_ok(parts.hostname):
        raise InvalidDeployPlan(f"the vCenter URL's host {shown_url(parts.hostname)!r} is not a valid host name")
    return url


def plan_deployment(vcenter: str, template: str | None, names: Sequence[str], *, enroll: bool = True,
                    requester_cert: bytes | None = None, enroll_window: str | None = None,
                    generate: Callable[[], EnrollmentSecrets] = EnrollmentSecrets.generate,
                    ova: str | None = None, way: str = SRP_WAY, guest_account: bool = False) -> DeployPlan:
    """Plan the deployment of one appliance per name, each with fresh secrets, cloned from
    `template` or imported from the OVA at `ova` (exactly one; the file itself is checked by
    ovafile.check_ova, which does IO).

    Raises:
        InvalidDeployPlan: a bad URL, both or neither of template and OVA, an empty template
            name, a name the trust store cannot hold (as appliance_names), a repeated name.
        InvalidDeploySpec, InvalidCertificate: from deployment_properties.
    """
    check_vcenter_url(vcenter)
    if isinstance(names, (str, bytes)):
        raise InvalidDeployPlan("names must be a sequence of appliance names, not one string")
    for name in names:
        _check_name(name)
    if (template is None) == (ova is None):
        raise InvalidDeployPlan("give exactly one of a template to clone (--template) and an OVA to import (--ova)")
    if ova is not None and not ova:
        raise InvalidDeployPlan("the OVA path is empty")
    if ova is None and (not template or len(template) > 80):
        raise InvalidDeployPlan("the template name must be 1-80 characters")
    if len(set(names)) != len(names):
        raise InvalidDeployPlan("an appliance name appears twice")
    if way not in WAYS:
        raise InvalidDeployPlan(f"unknown way in {way!r}; expected one of {', '.join(WAYS)}")
    if (way == GUEST_COMMAND_WAY or guest_account) and ova is not None:
        raise InvalidDeployPlan("a guest account (the guest-command way, guest file transfers) needs a template "
                                "(--template); the OVA declares no guest account property")
    appliances = []
    for name in names:
        secrets, deployment_id = generate(), new_deployment_id()
        properties = deployment_properties(secrets, requester_cert=requester_cert, enroll_window=enroll_window)
        guest_password = None
        if way == GUEST_COMMAND_WAY or guest_account:
            # Per appliance, from the same generator as the secrets (the test suite's secret guard sees it).
            guest_password = credentials.generate_secret()
            properties[GUEST_PASSWORD] = guest_password
        if way == GUEST_COMMAND_WAY:
            # The guest account is the trust: no SRP secrets, so the SRP door never opens.
            del properties[SEC_A], properties[SEC_B]
        marked = ((DEPLOYMENT_ID_KEY, deployment_id),) + HARDENING_VMX_SETTINGS
        if ova is not None:
            # Only what the person deploying may set: vCenter refuses a value for a property the
            # OVA declares ovf:userConfigurable="false" (NotUserConfigurableProperty: "The property
            # value cannot be changed since it is not user configurable"). Those carry their fixed
            # value as the descriptor's default (deployspec.FIXED_VALUES).
            settable = tuple((key, value) for key, value in properties.items() if user_configurable(key))
            appliances.append(AppliancePlan(name=name, secrets=secrets, extra_config=marked,
                                            secrets_file=f"{name}.json", properties=settable,
                                            deployment_id=deployment_id))
            continue
        extra_config = tuple((guestinfo_key(key), value) for key, value in properties.items())
        srp = way != GUEST_COMMAND_WAY
        appliances.append(AppliancePlan(name=name, secrets=secrets, extra_config=extra_config + marked,
                                        secrets_file=f"{name}.json" if srp else f"{name}.guest.json",
                                        guest_password=guest_password, srp=srp, deployment_id=deployment_id))
    return DeployPlan(vcenter=vcenter, template=template, appliances=tuple(appliances), enroll=enroll, ova=ova,
                      way=way)


# --- reading the VM's configuration back -----------------------------------------------------------


def missing_config(read_back: Iterable[tuple[str, str]], planned: Iterable[tuple[str, str]]) -> list[str]:
    """The planned keys whose value the VM does not hold (names only, never values).

    A key counts as held when its last entry has the planned value: vcsim appends entries
    instead of replacing them, and the last one is the current one there.
    """
    current = current_values(read_back)
    return [key for key, value in planned if current.get(key) != value]


def verify_properties(vapp_properties: Mapping[str, tuple[str, str]],
                      planned: Iterable[tuple[str, str]]) -> tuple[str, list[str]]:
    """Whether an imported VM holds its planned properties: VERIFIED_VAPP and the planned keys
    it lacks (names and reasons, never values).

    `vapp_properties` is id -> (type, value) as the server shows them. A planned secret
    (deployspec.PROPERTY_INFO's password flag) must be a "password" property, whose value always
    reads "" (VAppPropertyInfo.type: "a write-only property"): it is checked by id and type only,
    and one that is not write-only is refused, since anyone who may read the VM's configuration
    would read it. Every other property is checked by its value.
    """
    from .deployspec import PROPERTY_INFO

    missing = []
    for key, value in planned:
        held = vapp_properties.get(key)
        secret = PROPERTY_INFO.get(key, (None, None, False))[2]
        if held is None:
            missing.append(key)
        elif secret and held[0] != PASSWORD_TYPE:
            missing.append(f"{key} (type {held[0]!r}, not write-only)")
        elif not secret and held[1] != value:
            missing.append(key)
    return VERIFIED_VAPP, missing


def vapp_scrub_status(vapp_properties: Mapping[str, tuple[str, str]],
                      keys: Iterable[str] = OVA_SCRUB_KEYS) -> dict[str, str]:
    """Per vApp property, after its value was set to "": CLEARED_WRITE_ONLY for a password
    property (nothing to read back), REMOVED when a readable one reads back empty or is gone,
    else NOT_REMOVED."""
    status = {}
    for key in keys:
        kind, value = vapp_properties.get(key, ("", ""))
        status[key] = CLEARED_WRITE_ONLY if kind == PASSWORD_TYPE else NOT_REMOVED if value else REMOVED
    return status


def check_import_spec(planned: Iterable[tuple[str, str]], spec_properties: Mapping[str, str],
                      transports: Sequence[str], firmware: str, descriptor_firmware: str) -> list[str]:
    """What the target cannot honour, found in OvfManager.CreateImportSpec's answer before
    ImportVApp creates anything (an empty list: go ahead).

    `spec_properties` is id -> type of the vApp properties the import spec would create; every
    planned property must be among them (else the server would drop its value), a planned
    secret as a "password" one. `transports` must include one the agent reads
    (KNOWN_TRANSPORTS), or the secrets never reach the guest. The firmware the descriptor asks
    for (vmw:Config firmware) must be the one the spec sets, or the appliance does not boot.
    """
    from .deployspec import PROPERTY_INFO

    problems = []
    planned = list(planned)
    dropped = [key for key, _ in planned if key not in spec_properties]
    if dropped:
        problems.append(f"the target keeps no vApp property {', '.join(dropped)}"
                        + (" (it keeps no vApp properties at all)" if not spec_properties else ""))
    readable = [key for key, _ in planned if PROPERTY_INFO.get(key, (None, None, False))[2]
                and key in spec_properties and spec_properties[key] != PASSWORD_TYPE]
    if readable:
        problems.append(f"the target would make {', '.join(readable)} readable (type not password)")
    if not set(transports) & set(KNOWN_TRANSPORTS):
        problems.append(f"the target offers no OVF environment transport the agent reads "
                        f"({', '.join(transports) or 'none'}; needs {' or '.join(KNOWN_TRANSPORTS)})")
    if descriptor_firmware and descriptor_firmware != (firmware or "bios"):
        problems.append(f"the OVA asks for {descriptor_firmware} firmware, the target would set {firmware or 'bios'}")
    return problems


def check_descriptor(transports: Sequence[str], firmware: str, declared: Mapping[str, bool],
                     planned: Iterable[tuple[str, str]]) -> list[str]:
    """What is wrong with an OVA's descriptor for firsttrust, before any server is asked.
    `declared` is its ProductSection, key -> ovf:password."""
    from .deployspec import FIXED_VALUES, PROPERTY_INFO

    problems = []
    keys = [key for key, _ in planned]
    # A fixed property (its value the descriptor's default, not planned) goes with the planned key
    # it qualifies: firsttrust.requester-cert.encoding with firsttrust.requester-cert.
    keys += [fixed for fixed in FIXED_VALUES if fixed.rpartition(".")[0] in keys]
    undeclared = [key for key in keys if key not in declared]
    if undeclared:
        problems.append(f"the OVA declares no property {', '.join(undeclared)}")
    open_secrets = [key for key in declared if PROPERTY_INFO.get(key, (None, None, False))[2] and not declared[key]]
    if open_secrets:
        problems.append(f"the OVA declares {', '.join(open_secrets)} without ovf:password=\"true\"")
    unknown = [t for t in transports if t not in KNOWN_TRANSPORTS]
    if unknown or not transports:
        problems.append(f"the OVA's transports {' '.join(transports) or '(none)'} are not "
                        f"{' and/or '.join(KNOWN_TRANSPORTS)}")
    if firmware and firmware not in KNOWN_FIRMWARE:
        problems.append(f"the OVA asks for firmware {firmware[:20]!r}, not {' or '.join(KNOWN_FIRMWARE)}")
    return problems


def scrub_status(read_back: Iterable[tuple[str, str]], keys: Iterable[str] = SCRUB_KEYS) -> dict[str, str]:
    """Per key: REMOVED when no entry for it holds a value, else NOT_REMOVED.

    Strict on purpose: ESXi and vCenter delete a key set to "" (nothing remains: REMOVED); vcsim
    0.24 appends the empty entry after the old one, so the old value is still there to be read
    by anyone with the VM's config and the answer is NOT_REMOVED, even though a reader taking the
    last entry would see "" (docs/deployment.md, "Removing the secrets").
    """
    entries = list(read_back)
    return {key: NOT_REMOVED if any(k == key and v for k, v in entries) else REMOVED for key in keys}


def current_values(entries: Iterable[tuple[str, str]]) -> Mapping[str, str]:
    """Key -> its current value: the last entry wins. ESXi holds one entry per key; vcsim 0.24
    appends one on every change, and its last entry is the one set last. An empty value is
    what a delete leaves there (the lab's guest channel reads it as unset, lab/vsphere_channel.py)."""
    current: dict[str, str] = {}
    for key, value in entries:
        current[key] = value
    return current


def usable_guest_ip(addresses: Iterable[str | None]) -> str | None:
    """The first address the requester can enroll at, from what VMware Tools reports (the primary
    `guest.ipAddress`, then every NIC's addresses), or None yet.

    Link-local addresses (169.254/16, fe80::/10) are skipped: a guest reports them while DHCP
    or SLAAC is still under way, and they are not routable to the requester. Loopback is kept:
    the lab's appliances live on 127.0.0.0/8.
    """
    for address in addresses:
        try:
            parsed = ipaddress.ip_address((address or "").split("%")[0])
        except ValueError:
            continue
        if not (parsed.is_link_local or parsed.is_unspecified or parsed.is_multicast):
            return address
    return None
