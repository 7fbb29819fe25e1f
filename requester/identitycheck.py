"""Is the appliance pinned under a name still the one that is there? ssh's "host identification
has changed", for appliances.

Two ways to notice a change, cheapest first:

1. The deployment ids (requester/deploymentid.py) of the secrets file in hand and of the pin
   record differ: these are another deployment's secrets. No network traffic at all.
2. Otherwise `probe` the pinned API address: a TLS 1.3 handshake that presents no client key,
   to read which key the appliance presents, then close. The pinned key: the same appliance.
   Another key: it was reset or replaced. The connection closed before TLS: the agent's API door
   closes every connection while it has authorized no requester (agent/apidoor.py), so the
   appliance there has never been enrolled: it looks redeployed or reset. Nothing answering
   (refused, timed out) proves nothing either way: the pin stands, as before.

The probe goes to the API port, never to the enrollment port: the enrollment front door counts
a connection closed before its `hello` as an offence (agent/frontdoor.py, PENALTY_SECONDS
"no_hello"), while the API door neither reads nor counts anything. One handshake per check.

A change is refused with IdentityChanged (its own exit code, cli.EXIT_IDENTITY_CHANGED), whose
message says what changed, the old and new pins or ids, and the command that replaces the pin;
`enroll --replace` enrolls the new appliance and replaces the pin in one atomic write.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from firsttrust.errors import InvalidCertificate
from firsttrust.identity import pin_of_certificate

from .errors import RequesterError
from .truststore import ApplianceRecord, UnknownAppliance

# The probe's whole budget (connect and handshake): an appliance on the same network answers in
# milliseconds; a booting one may not answer at all, which the probe reports as "unreachable".
PROBE_TIMEOUT = 5.0


class IdentityChanged(RequesterError):
    """The appliance pinned under a name is not the one there now (or these secrets belong to
    another deployment). Nothing was sent to the appliance."""

    code = "identity_changed"


@dataclass(frozen=True)
class Probe:
    """What the address showed: `pin` (the key it presented), or `closed_before_tls`, or neither
    (nothing answered: `unreachable`)."""

    pin: str | None = None
    closed_before_tls: bool = False

    @property
    def unreachable(self) -> bool:
        return self.pin is None and not self.closed_before_tls


async def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> Probe:
    """The key the TLS server at host:port presents, without presenting ours."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is trusted or sent: only the key is read
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return Probe()
    try:
        async with asyncio.timeout(timeout):
            await writer.start_tls(context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        try:
            return Probe(pin=pin_of_certificate(der)) if der else Probe(closed_before_tls=True)
        except (InvalidCertificate, ValueError):
            return Probe(pin="unreadable certificate")
    except TimeoutError:  # before OSError, its base class since Python 3.10: silence proves nothing
        return Probe()
    except (ssl.SSLError, ConnectionError, OSError, EOFError, asyncio.IncompleteReadError):
        return Probe(closed_before_tls=True)
    finally:
        writer.transport.abort()
        # Not writer.wait_closed(): after a failed start_tls the stream's protocol was swapped out
        # and never hears of the close, so that wait would never end. abort() closes at once.


def replace_command(record: ApplianceRecord, secrets_file: str | None = None) -> str:
    return (f"firsttrust enroll ADDRESS --secrets {secrets_file or 'FILE'} --name {record.name} --replace"
            f" (or `firsttrust pins remove {record.name}` to forget it)")


def different_deployment(record: ApplianceRecord, deployment_id: str | None) -> IdentityChanged | None:
    """Check 1 of the module docstring: the error to raise, or None."""
    if deployment_id and record.deployment_id and deployment_id != record.deployment_id:
        return IdentityChanged(
            f"{record.name} is pinned to deployment {record.deployment_id} ({record.pin}), but these secrets "
            f"are deployment {deployment_id}'s: the appliance was redeployed; nothing was sent. If that was "
            f"intended: {replace_command(record)}")
    return None


def other_pin(store, name: str, pin: str, how: str) -> IdentityChanged | None:
    """A certificate handed over for `name` (pin-cert, the manager's channel): the error to raise
    if `name` is pinned to another key already, or None (not pinned, or pinned to this key). `how`
    is the command that replaces the pin. Like ssh's known_hosts, a pin is never replaced silently."""
    try:
        record = store.get(name)
    except UnknownAppliance:
        return None
    if record.pin == pin:
        return None
    return IdentityChanged(
        f"{name} is pinned to {record.pin} at {record.address}:{record.api_port}, but the certificate handed "
        f"over is {pin}: another appliance, or this one reset or replaced (or someone is impersonating it); "
        f"nothing was pinned. If that was intended: {how} (or `firsttrust pins remove {name}` to forget it)")


def refuse_other_pin(store, name: str, pin: str, *, replace: bool, how: str) -> None:
    """Raise other_pin's IdentityChanged unless `replace`: the check before anything is sent."""
    refused = None if replace else other_pin(store, name, pin, how)
    if refused is not None:
        raise refused


def save_pin(store, record: ApplianceRecord, *, replace: bool, how: str) -> None:
    """Pin `record`; without `replace`, only if its name is still unpinned or pinned to this key,
    decided under the store's lock (another process may have pinned it since refuse_other_pin):
    else IdentityChanged and nothing pinned. `how` is the command that replaces the pin."""
    from .truststore import PinConflict

    try:
        store.save(record, same_key_only=not replace)
    except PinConflict as exc:
        raise IdentityChanged(f"{record.name} was pinned to another key ({exc.pin}) while this certificate "
                              f"({record.pin}) was being pinned; nothing was pinned. If that was intended: {how}"
                              ) from None


def changed(record: ApplianceRecord, seen: Probe) -> IdentityChanged | None:
    """Check 2 of the module docstring: the error to raise, or None (the same key, or no answer)."""
    where = f"{record.address}:{record.api_port}"
    if seen.pin is not None and seen.pin != record.pin:
        return IdentityChanged(
            f"{record.name}: the appliance at {where} now presents another key: pinned {record.pin}, "
            f"presented {seen.pin}; it was reset or replaced (or someone is impersonating it). If that was "
            f"intended: {replace_command(record)}")
    if seen.closed_before_tls:
        return IdentityChanged(
            f"{record.name}: the appliance at {where} closes the connection before TLS, as an appliance that "
            f"has enrolled no requester does: it looks redeployed or reset (pinned {record.pin}"
            f"{f', deployment {record.deployment_id}' if record.deployment_id else ''}). If that was intended: "
            f"{replace_command(record)}")
    return None
