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

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import SEC_A, SEC_B, guestinfo_key
from .deployspec import HARDENING_VMX_SETTINGS, InvalidDeploySpec, deployment_properties
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

VERIFIED_VAPP = "verified (vApp properties)"
VERIFIED_EXTRA_CONFIG = "verified (extraConfig: the server kept no vApp properties)"

REMOVED = "removed"
NOT_REMOVED = "not removed"


class InvalidDeployPlan(InvalidDeploySpec):
    """An input to the plan is unusable: names, count, template, vCenter URL, thumbprint,
    credentials, secrets directory. The caller's to fix (the CLI's exit 2, as InvalidDeploySpec)."""

    code = "invalid_deploy_plan"


@dataclass(frozen=True)
class AppliancePlan:
    """One appliance: its VM name, its secrets, and the extraConfig its clone or import spec carries.

    `properties` are the deployment properties by their unprefixed keys: with --ova, the import's
    PropertyMapping (and `extra_config` only the VMX hardening); with --template, `extra_config`
    carries them as guestinfo.* keys and `properties` is empty.
    """

    name: str
    secrets: EnrollmentSecrets = field(repr=False)
    extra_config: tuple[tuple[str, str], ...] = field(repr=False)
    secrets_file: str
    properties: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def secret_values(self) -> tuple[str, str]:
        return (self.secrets.sec_a, self.secrets.sec_b)

    def describe(self) -> dict:
        """This appliance's plan with every secret value replaced by "<secret>"."""
        hidden = set(self.secret_values)
        described = {"name": self.name, "secrets_file": self.secrets_file,
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

    @property
    def scrub_keys(self) -> tuple[str, ...]:
        return OVA_SCRUB_KEYS if self.ova else SCRUB_KEYS

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
    return head + (("wait for guest IP", "enroll and pin", "remove secret keys") if enroll else ())


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
        if not NAME_RE.fullmatch(candidate):
            raise InvalidDeployPlan(f"invalid appliance name {candidate[:70]!r}: 1-64 letters, digits, '.', '_' "
                                    f"or '-', starting with a letter or digit")
    return names


def check_vcenter_url(url: str) -> str:
    """An https URL with a host: credentials are never sent over plain http.

    Raises:
        InvalidDeployPlan: anything else.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidDeployPlan(f"invalid vCenter URL {url[:80]!r}") from None
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise InvalidDeployPlan("the vCenter URL must be https://HOST[:PORT][/sdk], without credentials in it")
    return url


def plan_deployment(vcenter: str, template: str | None, names: Sequence[str], *, enroll: bool = True,
                    requester_cert: bytes | None = None, enroll_window: str | None = None,
                    generate: Callable[[], EnrollmentSecrets] = EnrollmentSecrets.generate,
                    ova: str | None = None) -> DeployPlan:
    """Plan the deployment of one appliance per name, each with fresh secrets, cloned from
    `template` or imported from the OVA at `ova` (exactly one; the file itself is checked by
    ovafile.check_ova, which does IO).

    Raises:
        InvalidDeployPlan: a bad URL, both or neither of template and OVA, an empty template
            name, a repeated name.
        InvalidDeploySpec, InvalidCertificate: from deployment_properties.
    """
    check_vcenter_url(vcenter)
    if (template is None) == (ova is None):
        raise InvalidDeployPlan("give exactly one of a template to clone (--template) and an OVA to import (--ova)")
    if ova is not None and not ova:
        raise InvalidDeployPlan("the OVA path is empty")
    if ova is None and (not template or len(template) > 80):
        raise InvalidDeployPlan("the template name must be 1-80 characters")
    if len(set(names)) != len(names):
        raise InvalidDeployPlan("an appliance name appears twice")
    appliances = []
    for name in names:
        secrets = generate()
        properties = deployment_properties(secrets, requester_cert=requester_cert, enroll_window=enroll_window)
        if ova is not None:
            appliances.append(AppliancePlan(name=name, secrets=secrets, extra_config=HARDENING_VMX_SETTINGS,
                                            secrets_file=f"{name}.json", properties=tuple(properties.items())))
            continue
        extra_config = tuple((guestinfo_key(key), value) for key, value in properties.items())
        appliances.append(AppliancePlan(name=name, secrets=secrets, extra_config=extra_config + HARDENING_VMX_SETTINGS,
                                        secrets_file=f"{name}.json"))
    return DeployPlan(vcenter=vcenter, template=template, appliances=tuple(appliances), enroll=enroll, ova=ova)


# --- reading the VM's configuration back -----------------------------------------------------------


def missing_config(read_back: Iterable[tuple[str, str]], planned: Iterable[tuple[str, str]]) -> list[str]:
    """The planned keys whose value the VM does not hold (names only, never values).

    A key counts as held when its last entry has the planned value: vcsim appends entries
    instead of replacing them, and the last one is the current one there.
    """
    current = current_values(read_back)
    return [key for key, value in planned if current.get(key) != value]


def verify_properties(vapp_properties: Mapping[str, str], read_back: Iterable[tuple[str, str]],
                      planned: Iterable[tuple[str, str]]) -> tuple[str, list[str]]:
    """Where an imported VM holds its planned properties, and which it lacks (names only).

    Where the VM has vApp properties (vCenter, ESXi) every planned key must be one of them with
    the planned value: VERIFIED_VAPP. Where it has none at all (vcsim 0.24 turns the import's
    PropertyMapping into extraConfig keys), the extraConfig's current values are checked under
    the same keys: VERIFIED_EXTRA_CONFIG.
    """
    planned = list(planned)
    if vapp_properties:
        return VERIFIED_VAPP, [key for key, value in planned if vapp_properties.get(key) != value]
    return VERIFIED_EXTRA_CONFIG, missing_config(read_back, planned)


def vapp_scrub_status(vapp_properties: Mapping[str, str], keys: Iterable[str] = OVA_SCRUB_KEYS) -> dict[str, str]:
    """Per vApp property: REMOVED when it reads back empty or is gone (a vApp property holds
    one value, unlike vcsim's extraConfig), else NOT_REMOVED."""
    return {key: NOT_REMOVED if vapp_properties.get(key) else REMOVED for key in keys}


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
