"""First-boot provisioning: from deploy-time properties to an armed (or enrolled) appliance.

Steps, in this order (each a checkpoint; a crash between any two leaves a state from which a
rerun completes, see tests/unit/test_provision_crash.py):

  identity     create the key (once) and its self-signed certificate; public copy of the cert
  password     chpasswd the configured account from SEC-A (stdin only)
  sec-b        write SEC-B (0600)
  authorized   add an injected requester certificate (injected-certificate mode)
  state        write state.json: the commit point (salt + verifier, window, sha256 of sec-b)
  publish      info-set guestinfo.firsttrust.appliance-cert for the manager to read
  scrub        blank our guestinfo keys / rewrite guestinfo.ovfEnv without our properties,
               read back to verify; the result (done, failed, impossible) goes to state.json

Re-arming rule: a second run keeps the identity. Injected secrets re-arm SRP enrollment only if
they differ from the provisioned ones and the appliance is not yet enrolled; once enrolled,
injected secrets and injected requester certificates are ignored (and still scrubbed). SEC-A is
never written anywhere.
"""

from __future__ import annotations

import base64
import hmac
import socket
import time
from dataclasses import dataclass, replace
from typing import Callable

from firsttrust.common.files import clean_stale_temps, read_at_most, write_atomic
from firsttrust.deployment import APPLIANCE_CERT_GUESTINFO, DEFAULT_ENROLL_WINDOW, PREFIX, SEC_B
from firsttrust.identity import Identity, create_identity
from firsttrust.srp6a import compute_verifier, new_verifier_record

from . import audit, guestaccount
from .config import AgentConfig
from .errors import AgentError, GuestInfoError, GuestInfoValueError, HypervisorUnavailable, NoConfiguration
from .password import set_password
from .sources.deploy import OVFENV_GUESTINFO_KEY, DeployConfig, InvalidDeployConfig
from .sources.guestinfo import GuestInfo
from .sources.ovfenv import parse_ovf_env, remove_properties
from .state import AgentState, StateDir, StateError

Checkpoint = Callable[[str], None]


def _no_checkpoint(step: str) -> None:
    return None


@dataclass(frozen=True)
class ProvisionReport:
    action: str  # "armed" | "re-armed" | "unchanged" | "ignored-enrolled" | "authorized-only"
    pin: str
    state: AgentState


def _ensure_identity(store: StateDir, clock: Callable[[], float], provisioned: bool) -> Identity:
    identity = store.load_identity()
    if identity is not None:
        return identity
    key_pem = store.load_key_pem()  # a crash may have left the key without its certificate
    if key_pem is None and provisioned:
        # The key is written first, so no crash leaves a provisioned appliance without it: a new
        # one would silently end every requester's pin. Refused, never replaced.
        raise StateError(f"{store.key_path} is missing but the appliance was provisioned; refusing to replace "
                         "its identity (restore the file, or reprovision the appliance)")
    try:
        private_key = Identity(key_pem, b"").private_key if key_pem else None
    except ValueError as exc:
        raise StateError(f"{store.key_path} is corrupt ({exc}); refusing to replace it") from None
    fresh = create_identity(socket.gethostname() or "appliance", dns_names=[socket.gethostname() or "appliance"],
                            clock=clock, private_key=private_key)
    if key_pem is None:
        store.save_key(fresh.key_pem)
    store.save_certificate(fresh.cert_pem)
    return fresh


def _scrub_remnant(store: StateDir, state: AgentState | None, deploy: DeployConfig) -> bool:
    """Whether a lone SEC-A or SEC-B in guestinfo (DeployConfig.remnant) is a scrub of ours cut
    off between its two keys, for this run to finish: the appliance is enrolled (it ignores
    injected secrets anyway), or it is armed and the value is its own provisioned secret. Never
    provisioned, or another value: the input is inconsistent, and stays refused."""
    if state is None:
        return False
    if state.phase == "enrolled":
        return True
    if not state.armed or state.srp_salt is None or state.srp_verifier is None:
        return False
    key, value = deploy.remnant
    if key == SEC_B:
        return hmac.compare_digest((store.load_sec_b(state.sec_b_sha256) or "").encode(), value.encode())
    try:
        verifier = compute_verifier(value.encode("ascii"), bytes.fromhex(state.srp_salt))
    except (UnicodeEncodeError, ValueError):
        return False
    return hmac.compare_digest(verifier, bytes.fromhex(state.srp_verifier))


def _same_secrets(store: StateDir, state: AgentState, deploy: DeployConfig) -> bool:
    if not state.armed or state.srp_salt is None or state.srp_verifier is None:
        return False
    verifier = compute_verifier(deploy.sec_a.encode("ascii"), bytes.fromhex(state.srp_salt))
    same_a = hmac.compare_digest(verifier, bytes.fromhex(state.srp_verifier))
    same_b = store.load_sec_b(state.sec_b_sha256) == deploy.sec_b
    return same_a and same_b


def provision(config: AgentConfig, deploy: DeployConfig, *, guestinfo: GuestInfo | None = None,
              set_account_password: bool = True, clock: Callable[[], float] = time.time,
              checkpoint: Checkpoint | None = None) -> ProvisionReport:
    """Provision (or re-check) the appliance from `deploy`. Safe to run any number of times.

    `checkpoint`, the one crash-point hook, is called with each step's name (the module's
    docstring lists them) once the step is done; the kill tests pass one that SIGKILLs the
    process (tests/unit/test_provision_crash.py). The product passes none.

    Raises:
        NoConfiguration: nothing injected and never provisioned before.
        AgentError (subclasses): a step failed; state.json is only written once all earlier
            steps succeeded, so the appliance is never left half-armed.
    """
    step = checkpoint or _no_checkpoint
    store = StateDir(config.state_dir)
    store.ensure()
    clean_stale_temps(store.path)
    state = store.load()
    if deploy.empty and state is None:
        raise NoConfiguration("no firsttrust properties found (guestinfo, OVF environment, ISO) "
                              "and the appliance was never provisioned")

    if deploy.remnant is not None and not _scrub_remnant(store, state, deploy):
        raise InvalidDeployConfig(deploy.remnant_error)
    identity = _ensure_identity(store, clock, provisioned=state is not None)
    _write_public_certificate(config, identity)
    step("identity")

    state = state or AgentState()
    if state.phase == "enrolled" and (deploy.has_secrets or deploy.requester_cert_pem):
        # Injected secrets and certificates alike: once enrolled, what guestinfo holds at a later
        # boot may have been set from inside the guest (info-set is open to every guest user
        # unless the VM has the hardening, docs/deployment.md), and is never authorized.
        action = "ignored-enrolled"
    elif not deploy.has_secrets:
        action = "authorized-only" if deploy.requester_cert_pem else "unchanged"
    elif _same_secrets(store, state, deploy):
        action = "unchanged"
    else:
        action = "re-armed" if state.armed else "armed"

    new = replace(state)
    if action in ("armed", "re-armed"):
        assert deploy.sec_a is not None and deploy.sec_b is not None
        if set_account_password:
            set_password(config.account, deploy.sec_a)
            new.password = "set"
        else:
            new.password = "skipped"
        step("password")
        salt, verifier = new_verifier_record(deploy.sec_a.encode("ascii"))
        new.sec_b_sha256 = store.save_sec_b(deploy.sec_b)
        step("sec-b")
        now = clock()
        window = deploy.enroll_window or config.enroll_window or DEFAULT_ENROLL_WINDOW
        new.phase, new.source, new.provisioned_at = "provisioned", deploy.source, now
        new.srp_salt, new.srp_verifier = salt.hex(), verifier.hex()
        new.enroll_window, new.window_expires_at, new.failures = window, now + window, 0

    if deploy.requester_cert_pem is not None and action != "ignored-enrolled":
        pin, added = store.authorize(deploy.requester_cert_pem, name="injected", source=deploy.source, clock=clock)
        if added:
            audit.event("key-authorized", f"authorized injected requester key {pin}", pin=pin, source=deploy.source)
        if not deploy.has_secrets and new.phase != "enrolled":
            # The injected-certificate mode alone: the requester is pinned by injection, SRP enrollment never opens.
            new.phase, new.enrolled_via, new.enrolled_at, new.source = "enrolled", "injected-certificate", clock(), \
                deploy.source
    step("authorized")

    if deploy.guest_password is not None and not guestaccount.load(store.path):
        # The guest account for guest operations (agent/guestaccount.py), good until the
        # enrollment window closes; recorded once, so a re-run of first boot does not revive it.
        window = deploy.enroll_window or config.enroll_window or DEFAULT_ENROLL_WINDOW
        guestaccount.record(store.path, deploy.guest_password, expires_at=clock() + window)

    if new != state or store.load() is None:
        store.save(new)
        if action in ("armed", "re-armed", "authorized-only"):
            audit.event("provisioned", f"provisioned from {deploy.source} ({action})", source=deploy.source,
                        action=action, pin=identity.pin)
    step("state")

    guestinfo = guestinfo or GuestInfo()
    new.published = _publish(guestinfo, identity)
    step("publish")
    if not deploy.empty:
        new.scrub = _scrub(guestinfo, deploy)
        if new.scrub["result"] != "done":
            audit.event("scrub-failed", f"secrets not scrubbed from {deploy.source}: {new.scrub['detail']}",
                        source=deploy.source, outcome=new.scrub["result"])
    store.save(new)
    step("scrub")
    return ProvisionReport(action=action, pin=identity.pin, state=new)


def _write_public_certificate(config: AgentConfig, identity: Identity) -> None:
    path = config.public_certificate
    try:
        # One byte more than the certificate, at most: a longer file differs, and is replaced
        # (never read whole: the path is configurable, and a file there may be anything).
        if read_at_most(path, len(identity.cert_pem) + 1)[0] == identity.cert_pem:
            return
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc.strerror}") from None
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomic(path, identity.cert_pem, 0o644)


def _publish(guestinfo: GuestInfo, identity: Identity) -> dict[str, str]:
    value = base64.b64encode(identity.cert_pem).decode("ascii")
    try:
        guestinfo.set(APPLIANCE_CERT_GUESTINFO, value)
        if guestinfo.get(APPLIANCE_CERT_GUESTINFO) != value:
            return {"result": "failed", "detail": "read-back differs"}
    except HypervisorUnavailable:
        return {"result": "impossible", "detail": "no VMware hypervisor channel"}
    except (GuestInfoError, GuestInfoValueError) as exc:
        return {"result": "failed", "detail": str(exc)}
    return {"result": "done", "detail": APPLIANCE_CERT_GUESTINFO}


def _scrub(guestinfo: GuestInfo, deploy: DeployConfig) -> dict[str, str]:
    """Remove our secrets from where they came from, and check that they are gone."""
    if deploy.scrub == "impossible":
        return {"result": "impossible",
                "detail": f"{deploy.source} is read-only from the guest; detach it after enrollment"}
    try:
        if deploy.scrub == "guestinfo":
            for key in deploy.guestinfo_keys:
                guestinfo.set(key, "")
            leftover = [k for k in deploy.guestinfo_keys if guestinfo.get(k)]
            if leftover:
                return {"result": "failed", "detail": f"{leftover[0]} still set after scrubbing"}
        elif deploy.scrub == "ovfenv":
            document = guestinfo.get(OVFENV_GUESTINFO_KEY) or ""
            cleaned = remove_properties(document.encode("utf-8"), PREFIX).decode("utf-8")
            guestinfo.set(OVFENV_GUESTINFO_KEY, cleaned)
            after = guestinfo.get(OVFENV_GUESTINFO_KEY) or ""
            if any(secret and secret in after for secret in (deploy.sec_a, deploy.sec_b)) or _our_properties(after):
                return {"result": "failed", "detail": "guestinfo.ovfEnv still holds firsttrust properties"}
    except HypervisorUnavailable:
        return {"result": "failed", "detail": "the VMware channel went away before scrubbing"}
    except (GuestInfoError, AgentError) as exc:
        return {"result": "failed", "detail": str(exc)}
    return {"result": "done", "detail": deploy.source}


def _our_properties(document: str) -> bool:
    """Whether an OVF environment read back after the scrub still holds any firsttrust.*
    property (the guest password and the requester certificate as well as the secrets), or
    no longer parses (then nothing says it does not)."""
    if not document:
        return False
    try:
        return any(key.startswith(PREFIX) for key in parse_ovf_env(document.encode("utf-8")).properties)
    except AgentError:
        return True
