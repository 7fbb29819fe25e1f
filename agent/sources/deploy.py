"""Which source of deploy-time configuration the agent uses, and what it says.

Precedence for `--source auto` (docs/deployment.md): the first source that holds any
`firsttrust.*` value wins whole; sources are never mixed, so a half-scrubbed guestinfo can
never pair one deployment's SEC-A with another's SEC-B.

  1. guestinfo.firsttrust.* keys (extraConfig)             source "guestinfo"
  2. the OVF environment in guestinfo.ovfEnv               source "ovfenv"
  3. the OVF environment ISO (CD-ROM labelled "OVF ENV")   source "iso:<device>"
  `--source file:PATH` reads an ovf-env.xml file (containers, tests); `vmware` = 1 then 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from firsttrust import deployment as keys
from firsttrust.common.files import read_bounded
from firsttrust.credentials import validate_secret
from firsttrust.deployment import InvalidDuration, parse_duration
from firsttrust.errors import InvalidCertificate, InvalidSecret
from firsttrust.identity import certificate_pem

from ..errors import ConfigSourceError, HypervisorUnavailable, NoConfiguration, OvfEnvError
from . import iso9660
from .encodings import decode_properties
from .guestinfo import GuestInfo
from .ovfenv import MAX_DOCUMENT_BYTES, parse_ovf_env

OVFENV_GUESTINFO_KEY = "guestinfo.ovfEnv"


class InvalidDeployConfig(ConfigSourceError):
    """The deploy-time properties are present but unusable."""

    code = "invalid_deploy_config"


@dataclass(frozen=True)
class DeployConfig:
    """What one source said, validated. repr() hides the secrets."""

    source: str
    sec_a: str | None = field(default=None, repr=False)
    sec_b: str | None = field(default=None, repr=False)
    requester_cert_pem: bytes | None = None
    enroll_window: int | None = None
    guest_password: str | None = field(default=None, repr=False)
    # How the secrets can be scrubbed from where they came from.
    scrub: str = "none"  # "guestinfo" | "ovfenv" | "impossible" | "none"
    guestinfo_keys: tuple[str, ...] = ()
    # guestinfo keys only: SEC-A or SEC-B alone, (key, value). The trace of a scrub cut off between
    # its two keys (a kill, a timeout, a refused info-set); provision() finishes that scrub if it
    # is the appliance's own provisioned secret, and refuses it (`remnant_error`) otherwise.
    remnant: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def has_secrets(self) -> bool:
        return self.sec_a is not None

    @property
    def empty(self) -> bool:
        return (self.sec_a is None and self.requester_cert_pem is None and self.guest_password is None
                and self.remnant is None)

    @property
    def remnant_error(self) -> str:
        present = self.remnant[0] if self.remnant else keys.SEC_A
        missing = keys.SEC_B if present == keys.SEC_A else keys.SEC_A
        return f"{self.source}: {present} is set but {missing} is missing"


def validate_properties(properties: dict[str, str], source: str, scrub: str,
                        guestinfo_keys: tuple[str, ...] = ()) -> DeployConfig:
    """Check decoded `firsttrust.*` properties. Empty values count as absent (a scrubbed key).

    Raises:
        InvalidDeployConfig: unknown firsttrust key, SEC-A without SEC-B (or the reverse), an
            invalid secret, certificate or window. Messages never contain a value.
    """
    values = {k: v for k, v in properties.items() if k.startswith(keys.PREFIX) and v != ""}
    unknown = sorted(set(values) - set(keys.KNOWN_KEYS))
    if unknown:
        raise InvalidDeployConfig(f"{source}: unknown property {unknown[0][:60]!r}")
    sec_a, sec_b = values.get(keys.SEC_A), values.get(keys.SEC_B)
    remnant = None
    if (sec_a is None) != (sec_b is None):
        remnant = (keys.SEC_A, sec_a) if sec_a is not None else (keys.SEC_B, sec_b)
        if scrub != "guestinfo":  # one write scrubs the others (ovfEnv) or none can (ISO, file)
            raise InvalidDeployConfig(DeployConfig(source=source, remnant=remnant).remnant_error)
        sec_a = sec_b = None
    try:
        if sec_a is not None:
            validate_secret(sec_a, keys.SEC_A)
            validate_secret(sec_b, keys.SEC_B)
            if sec_a == sec_b:
                raise InvalidSecret("SEC-A and SEC-B must differ")
        cert = values.get(keys.REQUESTER_CERT)
        cert_pem = certificate_pem(cert.encode("utf-8")) if cert is not None else None
        window = parse_duration(values[keys.ENROLL_WINDOW]) if keys.ENROLL_WINDOW in values else None
        guest_password = values.get(keys.GUEST_PASSWORD)
        if guest_password is not None:
            validate_secret(guest_password, keys.GUEST_PASSWORD)
    except InvalidSecret as exc:
        raise InvalidDeployConfig(f"{source}: {exc}") from None
    except InvalidCertificate as exc:
        raise InvalidDeployConfig(f"{source}: {keys.REQUESTER_CERT}: {exc}") from None
    except InvalidDuration as exc:
        raise InvalidDeployConfig(f"{source}: {keys.ENROLL_WINDOW}: {exc}") from None
    return DeployConfig(source=source, sec_a=sec_a, sec_b=sec_b, requester_cert_pem=cert_pem,
                        enroll_window=window, scrub=scrub, guestinfo_keys=guestinfo_keys,
                        guest_password=guest_password, remnant=remnant)


def _from_ovf_document(document: bytes, source: str, scrub: str) -> DeployConfig:
    env = parse_ovf_env(document)
    return validate_properties(decode_properties(env.properties), source, scrub)


def read_guestinfo_keys(guestinfo: GuestInfo) -> DeployConfig:
    raw: dict[str, str] = {}
    read: list[str] = []
    for key in keys.KNOWN_KEYS:
        for name in (key, key + keys.ENCODING_SUFFIX):
            value = guestinfo.get(keys.guestinfo_key(name))
            if value is not None:
                raw[name] = value
                read.append(keys.guestinfo_key(name))
    return validate_properties(decode_properties(raw), "guestinfo", "guestinfo", tuple(read))


def read_guestinfo_ovfenv(guestinfo: GuestInfo) -> DeployConfig:
    document = guestinfo.get(OVFENV_GUESTINFO_KEY)
    if not document:
        return DeployConfig(source="ovfenv")
    return _from_ovf_document(document.encode("utf-8"), "ovfenv", "ovfenv")


def read_iso(candidates: Iterable[str] | None = None) -> DeployConfig:
    device = iso9660.find_ovf_env_iso(candidates)
    if device is None:
        return DeployConfig(source="iso")
    # The CD-ROM cannot be rewritten from inside the guest: scrubbing is impossible.
    return _from_ovf_document(iso9660.read_ovf_env(device), f"iso:{device}", "impossible")


def read_file(path: Path) -> DeployConfig:
    data = read_bounded(path, MAX_DOCUMENT_BYTES, error=ConfigSourceError, too_large=OvfEnvError)
    return _from_ovf_document(data, f"file:{path}", "impossible")


def read_deploy_config(source: str = "auto", *, guestinfo: GuestInfo | None = None,
                       iso_candidates: Iterable[str] | None = None) -> DeployConfig:
    """Read the deploy-time configuration from `source` (auto | vmware | iso | file:PATH).

    Returns the first source holding firsttrust values; an empty DeployConfig (source "none")
    when `auto` finds nothing anywhere.

    Raises:
        ConfigSourceError (and subclasses): a source that exists is broken or hostile; an
            explicit source (`vmware`, `iso`, `file:`) that is unavailable or empty.
    """
    guestinfo = guestinfo or GuestInfo()
    if source.startswith("file:"):
        config = read_file(Path(source[5:]))
        if config.empty:
            raise NoConfiguration(f"{source}: no firsttrust properties in the document")
        return config
    if source not in ("auto", "vmware", "iso"):
        raise ConfigSourceError(f"unknown source {source[:60]!r} (auto, vmware, iso or file:PATH)")
    if source in ("auto", "vmware"):
        try:
            for reader in (read_guestinfo_keys, read_guestinfo_ovfenv):
                config = reader(guestinfo)
                if not config.empty:
                    return config
        except HypervisorUnavailable:
            if source == "vmware":
                raise
    if source in ("auto", "iso"):
        config = read_iso(iso_candidates)
        if not config.empty:
            return config
    if source != "auto":
        raise NoConfiguration(f"source {source}: no firsttrust properties found")
    return DeployConfig(source="none")
