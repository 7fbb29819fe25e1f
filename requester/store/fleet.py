"""Fleet membership and the grants that follow it (docs/fleet.md sections 2 and 4).

The admin key lives in the admin host's $FIRSTTRUST_HOME (fleet-admin.key, 0600), never in the
database; its pin is every member's anchor (fleet.json). Membership changes are signed by it;
`sync` pushes member keys to the appliances (and revokes removed ones) through the appliances'
existing authorized-keys API, over pinned mutual TLS with this host's own key.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firsttrust.common.files import write_atomic
from firsttrust.errors import FirsttrustError
from firsttrust.identity import Identity, create_identity, load_certificate, pin_of_certificate

from ..errors import ApiError, BadResponse, ConnectionFailed, PinMismatch
from ..session import PinnedSession
from ..truststore import NAME_RE, TrustStore, TrustStoreError
from . import signing
from .config import FleetProfile, load_profile, save_profile
from .errors import NotAMember, StoreConfigError, UntrustedRecord
from .pgstore import ADMIN_CERT, ADMIN_KEY, MAX_PAYLOAD, Membership, PgStore, random_fleet_id


def admin_identity(home: Path) -> Identity:
    try:
        identity = Identity((home / ADMIN_KEY).read_bytes(), (home / ADMIN_CERT).read_bytes())
        identity.certificate  # noqa: B018 - parse now
    except FileNotFoundError:
        raise NotAMember(f"this host holds no fleet admin key ({home / ADMIN_KEY}): run it on the admin's host") \
            from None
    except ValueError:
        raise TrustStoreError(f"the fleet admin key in {home} is corrupt") from None
    return identity


HOST_NAME_RULE = "a host name is 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"


def check_host_name(name: str, error: type[FirsttrustError] = StoreConfigError) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise error(HOST_NAME_RULE)
    return name


def _seal_member(admin: Identity, fleet_id: str, host: str, certificate: str, removed: bool,
                 version: int) -> tuple[str, str, bytes]:
    pin = pin_of_certificate(certificate.encode())
    payload, signature = signing.seal(admin, {"kind": "member", "fleet": fleet_id, "host": host, "pin": pin,
                                              "certificate": certificate, "removed": removed, "version": version})
    return pin, payload, signature


def ensure_identity(home: Path, host: str) -> Identity:
    """This host's requester identity, created (if the home has none yet) with a subject that
    names the host: an appliance's TLS trust tells authorized self-signed certificates apart by
    subject first, so two members with the same subject would lock one of them out (the file
    store's default subject, CN=firsttrust-requester, is the same on every host)."""
    # The file store's own creation: both files or neither, and a damaged identity (one file
    # missing, a key that is not the certificate's) refused, never replaced.
    return TrustStore(home).identity(subject=f"firsttrust-requester {host}")


def _subject(certificate_pem: str) -> str:
    return load_certificate(certificate_pem.encode()).subject.rfc4514_string()


def create(store: PgStore, host: str) -> Membership:
    """Create the fleet: the admin key (here, 0600), the schema, the fleet row, this host as its
    first member, and the anchor in this host's profile."""
    check_host_name(host)
    home = store.home
    if (home / ADMIN_KEY).exists():
        raise StoreConfigError(f"{home / ADMIN_KEY} exists: this host already administers a fleet")
    store.migrate()
    own = ensure_identity(home, host)
    admin = create_identity("firsttrust-fleet-admin")
    fleet_id = random_fleet_id()

    def work(cursor: Any) -> None:
        cursor.execute("SELECT id, admin_certificate FROM fleet")
        rows = cursor.fetchall()
        if rows == [(fleet_id, admin.cert_pem.decode())]:
            return  # this very call's commit, whose answer was lost: replayed, already done (section 7)
        if rows:
            raise StoreConfigError("the fleet store already holds a fleet")
        cursor.execute("INSERT INTO fleet (id, admin_certificate) VALUES (%s, %s)", (fleet_id, admin.cert_pem.decode()))
        pin, payload, signature = _seal_member(admin, fleet_id, host, own.cert_pem.decode(), False, 1)
        cursor.execute("INSERT INTO members (host, pin, payload, signature) VALUES (%s, %s, %s, %s)",
                       (host, pin, payload, signature))
        cursor.execute("INSERT INTO audit (host, event, subject) VALUES (%s, 'fleet-created', %s)", (host, fleet_id))

    # The admin key is written before the row that names it, so that a crash leaves a key without
    # a fleet (create again after removing it), never a fleet nobody can administer.
    write_atomic(home / ADMIN_KEY, admin.key_pem, 0o600)
    write_atomic(home / ADMIN_CERT, admin.cert_pem, 0o644)
    store.transaction(work)
    join(home, admin.pin, load_profile(home).store)
    return store.membership()


def join(home: Path, anchor_pin: str, store_url: str | None, host: str | None = None) -> Identity | None:
    """Record the fleet's anchor (given out of band by the admin) in this host's profile; with
    `host`, create this host's identity under that name if it has none (ensure_identity)."""
    from firsttrust.identity import normalize_pin

    anchor = normalize_pin(anchor_pin)
    known = load_profile(home)
    # The high-water marks stay while the anchor does (joining again must not forget a removal).
    save_profile(home, FleetProfile(anchor, store_url, known.members if known.anchor_pin == anchor else {}))
    return ensure_identity(home, check_host_name(host)) if host else None


def add_host(store: PgStore, host: str, certificate_pem: bytes) -> str:
    """Admit a host (its certificate as `firsttrust identity` printed it), signed by the admin key;
    queue the authorization of its key on every pinned appliance. Returns its pin."""
    check_host_name(host)
    load_certificate(certificate_pem)
    certificate = certificate_pem.decode("ascii")
    admin = admin_identity(store.home)

    pin = pin_of_certificate(certificate_pem)

    def work(cursor: Any) -> str:
        membership = store._membership(cursor)
        for member in membership.members:
            if member.host == host and not member.removed:
                if member.pin == pin:
                    return pin  # admitted with this very certificate (a replay after a lost commit answer): done
                raise StoreConfigError(f"{host} is a member already")
            if not member.removed and _subject(member.certificate) == _subject(certificate):
                raise StoreConfigError(f"{host}'s certificate has the same subject as {member.host}'s "
                                       f"({_subject(certificate)}): appliances would confuse the two keys; create "
                                       f"{host}'s key with `firsttrust fleet join --host {host}` in a fresh "
                                       "FIRSTTRUST_HOME")
        # The pin is unique among all members ever, removed ones included (and rows that do not verify).
        cursor.execute("SELECT host FROM members WHERE pin = %s AND host <> %s", (pin, host))
        holder = cursor.fetchone()
        if holder is not None:
            status = "a removed member" if any(m.host == holder[0] and m.removed for m in membership.members) else \
                "a member"
            raise StoreConfigError(f"{host}'s certificate is the one of {holder[0]} ({status}): a host joins with a "
                                   f"key of its own; create {host}'s key with `firsttrust fleet join --host {host}` "
                                   "in a fresh FIRSTTRUST_HOME")
        version = max([m.version for m in membership.members if m.host == host], default=0) + 1
        _, payload, signature = _seal_member(admin, membership.fleet_id, host, certificate, False, version)
        cursor.execute("INSERT INTO members (host, pin, payload, signature) VALUES (%s, %s, %s, %s) "
                       "ON CONFLICT (host) DO UPDATE SET pin = EXCLUDED.pin, payload = EXCLUDED.payload, "
                       "signature = EXCLUDED.signature", (host, pin, payload, signature))
        cursor.execute("INSERT INTO grants (appliance, member_pin, action, state) "
                       "SELECT name, %s, 'authorize', 'pending' FROM pins "
                       "ON CONFLICT (appliance, member_pin) DO UPDATE SET action = 'authorize', state = 'pending', "
                       "updated_at = now()", (pin,))
        cursor.execute("INSERT INTO audit (host, event, subject) VALUES ('admin', 'host-added', %s)", (host,))
        return pin

    return store.transaction(work)


def remove_host(store: PgStore, host: str) -> str:
    """Remove a host: its membership re-signed as removed, every pin record it signed verified and
    re-signed by the admin key (so that it stays valid), its key queued for revocation on every
    appliance, its claims dropped. Returns its pin."""
    admin = admin_identity(store.home)

    def work(cursor: Any) -> str:
        membership = store._membership(cursor)
        # A rolled-back record (an older one written back) is removed again, with a newer version.
        current = [m for m in membership.members if m.host == host and (not m.removed or m.rolled_back)]
        if not current:
            removed = [m for m in membership.members if m.host == host]
            if removed:
                return removed[0].pin  # removed already (a replay after a lost commit answer): done
            raise NotAMember(f"{host} is not a current member of the fleet")
        member = current[0]
        cursor.execute("SELECT name, signer_pin, version, CASE WHEN octet_length(payload) <= %s THEN payload END, "
                       "signature FROM pins WHERE signer_pin = %s FOR UPDATE", (MAX_PAYLOAD, member.pin))
        # (A rolled-back member's pins were re-signed by its first removal: none verify under its key now.)
        # A row that does not verify under the member's key is left as it is: no host uses it now,
        # and none will once the member is removed. Neither it nor anything the member signed may
        # stop the removal (a member could otherwise keep itself in the fleet).
        for name, signer_pin, version, payload, signature in ([] if member.rolled_back else cursor.fetchall()):
            try:
                record = store._open_pin(membership, name, signer_pin, payload, signature)  # verified while valid
            except TrustStoreError:
                continue
            version += 1  # the row's own counter (the database's integer), never the member's signed text
            new_payload, new_signature = signing.seal(admin, store._pin_payload(membership.fleet_id, record, version))
            cursor.execute("UPDATE pins SET signer_pin = %s, version = %s, payload = %s, signature = %s "
                           "WHERE name = %s", (admin.pin, version, new_payload, new_signature, name))
        pin, payload, signature = _seal_member(admin, membership.fleet_id, host, member.certificate, True,
                                               member.version + 1)
        cursor.execute("UPDATE members SET payload = %s, signature = %s WHERE host = %s", (payload, signature, host))
        cursor.execute("UPDATE grants SET action = 'revoke', state = 'pending', updated_at = now() "
                       "WHERE member_pin = %s", (pin,))
        cursor.execute("DELETE FROM enrollments WHERE holder = %s AND pending_host IS NULL", (host,))
        cursor.execute("INSERT INTO audit (host, event, subject) VALUES ('admin', 'host-removed', %s)", (host,))
        return pin

    return store.transaction(work)


@dataclass(frozen=True)
class SyncResult:
    applied: int
    left: list[tuple[str, str, str, str]]  # (appliance, host, action, why): this host could not apply them
    waiting: list[tuple[str, str, str]]  # (appliance, host, action): for a member authorized there
    # (appliance, member pin, action): pending grant rows the admin-signed membership contradicts
    # (a revoke of a current member, an authorize of a removed or unknown key): never acted on.
    refused: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


async def sync(store: PgStore) -> SyncResult:
    """Apply pending grants and revocations with this host's key: authorize before revoke on
    each appliance (the appliance refuses to remove its last key). What cannot be applied now
    (appliance offline, this host's key not authorized there yet) stays pending, listed.

    What to do is derived from the verified, admin-signed membership, never from a grant row's
    action (rows are not signed, docs/fleet.md section 3): on every pinned appliance, authorize
    each current member and revoke each removed one, unless the grants table records exactly that
    as applied. A missing row is work; a pending row that contradicts the membership is refused."""
    def todo(cursor: Any) -> tuple[Membership, list[tuple[str, str, str, bool]], list[tuple[str, str, str]]]:
        membership = store._membership(cursor)  # the same snapshot as the grants read below
        me = store._me(membership)
        current = sorted(membership.current())
        removed = sorted(m.pin for m in membership.members if m.removed)
        # Only where this host's own key is authorized can it push (the others' turn otherwise).
        cursor.execute("SELECT p.name, m.pin, m.action, coalesce(mine.action = 'authorize' AND "
                       "mine.state = 'applied', false) FROM pins p "
                       "CROSS JOIN (SELECT unnest(%s::text[]), 'authorize' UNION ALL "
                       "SELECT unnest(%s::text[]), 'revoke') AS m (pin, action) "
                       "LEFT JOIN grants g ON g.appliance = p.name AND g.member_pin = m.pin "
                       "LEFT JOIN grants mine ON mine.appliance = p.name AND mine.member_pin = %s "
                       "WHERE g.appliance IS NULL OR g.state <> 'applied' OR g.action <> m.action "
                       "ORDER BY p.name, m.action", (current, removed, me.pin))  # 'authorize' < 'revoke'
        work = cursor.fetchall()
        cursor.execute("SELECT appliance, member_pin, action FROM grants WHERE state = 'pending' AND NOT "
                       "((action = 'authorize' AND member_pin = ANY(%s)) OR (action = 'revoke' AND "
                       "member_pin = ANY(%s))) ORDER BY appliance, member_pin", (current, removed))
        return membership, work, cursor.fetchall()

    membership, everything, refused = await asyncio.to_thread(store.transaction, todo)
    by_pin = {m.pin: m for m in membership.members}
    rows = [(name, pin, action) for name, pin, action, mine in everything if mine]
    waiting = [(name, _host(by_pin, pin), action) for name, pin, action, mine in everything if not mine]
    applied, left = 0, []
    for appliance in sorted({row[0] for row in rows}):
        work = [(pin, action) for name, pin, action in rows if name == appliance]
        try:
            record = await asyncio.to_thread(store.get, appliance)
        except TrustStoreError as exc:
            left += [(appliance, _host(by_pin, pin), action, exc.code) for pin, action in work]
            continue
        async with PinnedSession(record.address, record.api_port, record.certificate.encode(), store.key_path,
                                 store.cert_path) as api:
            for pin, action in work:
                try:
                    await _apply(api, by_pin.get(pin), pin, action)
                except (ApiError, ConnectionFailed, PinMismatch, BadResponse, UntrustedRecord) as exc:
                    left.append((appliance, _host(by_pin, pin), action, exc.code))
                    continue
                await asyncio.to_thread(_mark_applied, store, appliance, pin, action)
                applied += 1
    return SyncResult(applied, left, waiting, refused)


def _host(by_pin: dict, pin: str) -> str:
    member = by_pin.get(pin)
    return member.host if member else pin


async def _apply(api: PinnedSession, member: Any, pin: str, action: str) -> None:
    """Authorize a verified current member, or revoke a verified removed one; nothing else."""
    if action == "authorize":
        if member is None or member.removed:
            raise UntrustedRecord(f"{pin} is not a current member of the fleet")
        await api.post("/v1/authorized-keys", {"certificate": member.certificate, "name": member.host})
        return
    if member is None or not member.removed:
        raise UntrustedRecord(f"{pin} is not a removed member of the fleet: not revoked")
    try:
        await api.delete(f"/v1/authorized-keys/{pin}")
    except ApiError as exc:
        if exc.code != "unknown_key":  # already gone: revoked
            raise


def _mark_applied(store: PgStore, appliance: str, member_pin: str, action: str) -> None:
    """Record `action` as applied (the row may have been missing or said otherwise: it was derived
    from the signed membership, not from the row)."""
    store.transaction(lambda cursor: cursor.execute(
        "INSERT INTO grants (appliance, member_pin, action, state) VALUES (%s, %s, %s, 'applied') "
        "ON CONFLICT (appliance, member_pin) DO UPDATE SET action = EXCLUDED.action, state = 'applied', "
        "updated_at = now()", (appliance, member_pin, action)))
