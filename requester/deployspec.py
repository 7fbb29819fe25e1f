"""Deploy specs: what the requester hands the data-center manager so a new appliance can enroll.

From the enrollment secrets (and optionally the requester's certificate and an enrollment
window) `deployment_properties` builds the appliance's deployment properties, named in
`firsttrust.deployment`; `render` writes them in one of the forms in FORMATS:

  ovf-env          a complete OVF environment (DSP0243 clause 11) as vCenter delivers it in
                   guestinfo.ovfEnv or on the "OVF ENV" ISO; for the lab, tests, `--source file:`
  ovf-properties   the OVF descriptor ProductSection declaring the properties, with these values
                   as their defaults (DSP0243 clause 9.5)
  extraconfig      `guestinfo.firsttrust.* = "..."` lines as in a .vmx file, then the VMX
                   settings that make guestinfo a root-only channel inside the guest

Every rendering holds the secrets: callers write it to stdout or a 0600 file, never to argv or a
log. docs/deployment.md is the operator's guide to the same properties.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import (
    BASE64,
    ENCODING_SUFFIX,
    ENROLL_WINDOW,
    REQUESTER_CERT,
    SEC_A,
    SEC_B,
    InvalidDuration,
    encode_value,
    guestinfo_key,
    parse_duration,
)
from firsttrust.errors import FirsttrustError
from firsttrust.identity import certificate_pem
from firsttrust.ovfenv import check_key, check_value_size, serialize_ovf_env, xml_attribute, xml_text

from .deploymentid import valid_deployment_id

# The OVF descriptor (envelope) namespace, DSP0243 / DSP8023: Property's attributes are
# qualified with it (ovf:key, ovf:value, ovf:password).
OVF_ENVELOPE_NS = "http://schemas.dmtf.org/ovf/envelope/1"

# VMX settings that turn the guestinfo get/set commands into privileged ones: open-vm-tools
# accepts them only from a caller on a privileged (< 1024) port, i.e. root in the guest (open-vm-
# tools issues #288 and #690). Unprivileged guest processes then can neither read the secrets
# before the agent scrubs them nor overwrite what the agent publishes. The agent runs as root
# and uses vmtoolsd, which speaks this secure RPC; vmware-rpctool does not (issue #690).
HARDENING_VMX_SETTINGS = (
    ("guest_rpc.rpci.auth.cmd.info-get", "TRUE"),
    ("guest_rpc.rpci.auth.cmd.info-set", "TRUE"),
)

# Every property an appliance reads, as an operator sees it in a deployment wizard: label,
# description, whether the value is a password (masked, typed twice: DSP0243 ovf:password), and
# whether the person deploying may set it. The one definition: the OVA's ProductSection
# (packaging/ova/descriptor.py) declares exactly these keys, in this order, and every rendering
# below labels its properties from here.
PROPERTY_INFO: dict[str, tuple[str, str, bool]] = {
    SEC_A: ("SEC-A", "One-time enrollment secret: becomes the appliance password; proved with SRP.", True),
    SEC_B: ("SEC-B", "One-time secret the appliance proves it holds before the requester trusts it.", True),
    REQUESTER_CERT: ("Requester certificate", "Base64 of the requester's PEM certificate to authorize.", False),
    REQUESTER_CERT + ENCODING_SUFFIX: ("Requester certificate encoding", "Always base64.", False),
    ENROLL_WINDOW: ("Enrollment window", "How long enrollment stays open: seconds, or 90m, 24h, 2d.", False),
}

# The encoding is part of the format, not a choice for the person deploying: these properties
# are declared with their fixed value and ovf:userConfigurable="false".
FIXED_VALUES = {REQUESTER_CERT + ENCODING_SUFFIX: BASE64}


def user_configurable(key: str) -> bool:
    """May the person deploying set this property (DSP0243 ovf:userConfigurable)?"""
    return key not in FIXED_VALUES

# dictll.c (DictLL_MarshalLine): VMware escapes '"', '|', DEL and every control character but
# tab as '|' and two uppercase hex digits; bytes from 0x80 (UTF-8) stay as they are.
_VMX_ESCAPED = re.compile('[\x00-\x08\x0a-\x1f"|\x7f]')

SECRETS_FILE_FIELDS = ("sec_a", "sec_b")


class InvalidDeploySpec(FirsttrustError):
    """An input to a deploy spec is unusable: secrets file, enrollment window or format."""

    code = "invalid_deploy_spec"


def deployment_properties(
    secrets: EnrollmentSecrets,
    *,
    requester_cert: bytes | None = None,
    enroll_window: str | None = None,
) -> dict[str, str]:
    """The appliance's deployment properties, in the order every format writes them.

    Args:
        secrets: SEC-A and SEC-B (validated when the EnrollmentSecrets was made).
        requester_cert: the requester's certificate, PEM or DER, for the injected-certificate
            mode; written as base64 of its PEM with a `.encoding` sibling, because newlines do
            not survive every tool that handles property values.
        enroll_window: how long enrollment stays open ("24h", "90m", "2d" or seconds); the
            agent's default applies when None.

    Returns:
        key -> value: firsttrust.sec-a, firsttrust.sec-b, then the optional ones.

    Raises:
        InvalidCertificate: requester_cert is not an ECDSA P-256 X.509 certificate.
        InvalidDeploySpec: enroll_window is not a duration the agent accepts.
    """
    properties = {SEC_A: secrets.sec_a, SEC_B: secrets.sec_b}
    if requester_cert is not None:
        pem = certificate_pem(requester_cert).decode("ascii")
        properties[REQUESTER_CERT] = encode_value(pem, BASE64)
        properties[REQUESTER_CERT + ENCODING_SUFFIX] = BASE64
    if enroll_window is not None:
        try:
            parse_duration(enroll_window)
        except InvalidDuration as exc:
            raise InvalidDeploySpec(f"enrollment window: {exc}") from None
        properties[ENROLL_WINDOW] = enroll_window.strip()
    return properties


def render(properties: dict[str, str], spec_format: str) -> bytes:
    """Write properties in one of FORMATS.

    Returns:
        UTF-8 text ending in a newline. It holds the secrets.

    Raises:
        InvalidDeploySpec: unknown format, or a value a VMX file cannot carry (NUL).
        OvfEnvValueError: a key or value XML cannot carry, or over the OVF environment's caps.
    """
    renderer = FORMATS.get(spec_format)
    if renderer is None:
        raise InvalidDeploySpec(f"unknown format {spec_format[:40]!r}; expected one of {', '.join(FORMATS)}")
    return renderer(properties)


def render_ovf_env(properties: dict[str, str]) -> bytes:
    """A complete OVF environment document, as vCenter would deliver these properties."""
    return serialize_ovf_env(properties)


def render_ovf_properties(properties: dict[str, str]) -> bytes:
    """The OVF descriptor ProductSection declaring the properties, values as defaults.

    No ovf:class or ovf:instance: with them the keys in the environment would become
    `class.key.instance` (DSP0243 clause 9.5), and the agent reads exactly `firsttrust.*`.
    The namespaces are declared on the section so that the fragment is well-formed on its
    own and can be pasted into any Envelope's VirtualSystem.
    """
    lines = [
        "<!-- firsttrust deployment properties. Holds one-time secrets: keep this file private. -->",
        f'<ProductSection xmlns="{OVF_ENVELOPE_NS}" xmlns:ovf="{OVF_ENVELOPE_NS}">',
        "  <Info>firsttrust: one-time secrets for first-boot enrollment</Info>",
        "  <Category>firsttrust enrollment</Category>",
    ]
    for key, value in properties.items():
        check_key(key)
        check_value_size(key, value)
        label, description, password = PROPERTY_INFO.get(key, (key, key, False))
        configurable = "true" if user_configurable(key) else "false"
        attributes = [f"ovf:key={xml_attribute(key, 'a key')}", 'ovf:type="string"',
                      f'ovf:userConfigurable="{configurable}"']
        if password:
            attributes.append('ovf:password="true"')
        attributes.append(f"ovf:value={xml_attribute(value, f'the value of {key}')}")
        lines += [
            f"  <Property {' '.join(attributes)}>",
            f"    <Label>{xml_text(label, 'a label')}</Label>",
            f"    <Description>{xml_text(description, 'a description')}</Description>",
            "  </Property>",
        ]
    lines += ["</ProductSection>", ""]
    return "\n".join(lines).encode("utf-8")


def render_extraconfig(properties: dict[str, str]) -> bytes:
    """`guestinfo.<key> = "<value>"` lines as in a .vmx file, then HARDENING_VMX_SETTINGS.

    Lines starting with '#' are VMX comments; every other line is one setting.
    """
    lines = ["# firsttrust deployment properties as guestinfo. Holds one-time secrets: keep private."]
    lines += [vmx_line(guestinfo_key(key), value) for key, value in properties.items()]
    lines.append("# Only root in the guest may read or write guestinfo (docs/deployment.md).")
    lines += [vmx_line(name, value) for name, value in HARDENING_VMX_SETTINGS]
    return ("\n".join(lines) + "\n").encode("utf-8")


def vmx_line(name: str, value: str) -> str:
    """One .vmx setting, quoted and escaped as VMware writes it: `name = "value"`.

    Raises:
        InvalidDeploySpec: value holds NUL (the VMX keeps values as C strings).
    """
    if "\x00" in value:
        raise InvalidDeploySpec(f"the value of {name} holds NUL, which a VMX file cannot carry")
    return f'{name} = "{_VMX_ESCAPED.sub(lambda match: f"|{ord(match.group()):02X}", value)}"'


def render_govc(properties: dict[str, str]) -> bytes:
    """govc's import options document (what `govc import.spec` prints, with the firsttrust
    properties in PropertyMapping), for `govc import.ova -options=FILE`: govc reads the secrets
    from the file, so they never appear on a command line. Write it 0600 (`--out`) and delete it
    after the import. There is deliberately no `govc vm.change -e` form: it would put the secrets
    in govc's argv, readable by every user of the machine through /proc; for an existing VM use
    `firsttrust deploy`, which sets them through the vSphere API (docs/deployment.md)."""
    # Not the properties the OVA fixes (FIXED_VALUES): vCenter refuses a value for one
    # (NotUserConfigurableProperty); the OVA's default carries it.
    options = {"PropertyMapping": [{"Key": key, "Value": value} for key, value in properties.items()
                                   if user_configurable(key)]}
    return (json.dumps(options, indent=2) + "\n").encode("utf-8")


FORMATS: dict[str, Callable[[dict[str, str]], bytes]] = {
    "govc": render_govc,
    "ovf-env": render_ovf_env,
    "ovf-properties": render_ovf_properties,
    "extraconfig": render_extraconfig,
}


# --- the secrets file: {"sec_a": ..., "sec_b": ...} ---------------------------------------------


def secrets_to_json(secrets: EnrollmentSecrets, deployment_id: str | None = None) -> bytes:
    """The secrets file's content. It holds the secrets: write it 0600, never log it. `deploy`
    adds the appliance's deployment id (requester/deploymentid.py; not a secret)."""
    document = {"sec_a": secrets.sec_a, "sec_b": secrets.sec_b}
    if deployment_id is not None:
        document["deployment_id"] = deployment_id
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def secrets_from_json(data: bytes) -> EnrollmentSecrets:
    """Read a secrets file. Messages say what is wrong; the caller says which file.

    Raises:
        InvalidDeploySpec: not UTF-8 JSON, not an object with exactly sec_a and sec_b, or a
            repeated field (which of two values would be meant?).
        InvalidSecret: a secret is not usable (EnrollmentSecrets' rules).
        Messages never contain a value, not even a field name from the file.
    """
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_refuse_repeated_fields)
    except UnicodeDecodeError:
        raise InvalidDeploySpec("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidDeploySpec(f"not JSON ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, RecursionError):  # a number of more than 4300 digits; nested too deeply
        raise InvalidDeploySpec("not a secrets file (a number too long, or nested too deeply)") from None
    if not isinstance(document, dict) or sorted(set(document) - {"deployment_id"}) != sorted(SECRETS_FILE_FIELDS):
        raise InvalidDeploySpec('not a JSON object with exactly "sec_a" and "sec_b" (and a "deployment_id")')
    if "deployment_id" in document and not valid_deployment_id(document["deployment_id"]):
        raise InvalidDeploySpec('its "deployment_id" is not fd- and 16 hex digits')
    return EnrollmentSecrets(document["sec_a"], document["sec_b"])


def _refuse_repeated_fields(pairs: list[tuple[str, object]]) -> dict[str, object]:
    if len({name for name, _ in pairs}) != len(pairs):
        raise InvalidDeploySpec("a field is repeated")
    return dict(pairs)
