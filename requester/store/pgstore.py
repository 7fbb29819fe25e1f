"""The trust store on PostgreSQL, for a fleet of requester hosts (docs/fleet.md).

Same interface as requester.truststore.TrustStore (it is one: the host's own key and certificate
stay in files under its $FIRSTTRUST_HOME, exactly as with the file store); the pins, pending
enrollments, membership and grants live in the database, each signed, each checked before use.
Every operation is one transaction; a lost connection is retried from the start of the
transaction until FIRSTTRUST_STORE_DEADLINE (default 30 s) has passed, then StoreUnavailable.

One module, over 450 lines, because `PgStore` is one class implementing the TrustStore interface
over one schema, every method one transaction that checks the same membership and signatures;
the schema, its connection settings, the claims and the signatures already have their own modules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from firsttrust.errors import FirsttrustError
from firsttrust.identity import Identity, pin_of_certificate

from ..truststore import MAX_RECORD_BYTES, ApplianceRecord, PinConflict, TrustStore, TrustStoreError, UnknownAppliance, \
    checked_record_json
from . import schema, signing
from .config import connection_options, load_profile, remember_members
from .errors import HeldByHost, NotAMember, StoreConfigError, StoreRefused, StoreSchemaError, StoreUnavailable, \
    UntrustedRecord

T = TypeVar("T")
DEFAULT_DEADLINE = 30.0
DEFAULT_LEASE = 600.0
MIN_ATTEMPT = 1.0  # seconds: one attempt's bound when the deadline is (nearly) spent, e.g. deadline 0
WATCHDOG_GRACE = 1.0  # seconds past the server-side timeouts before the client cuts the connection
# A signed payload read back: a record (at most MAX_RECORD_BYTES as JSON) and its envelope. A longer
# one is not read out of the database at all (SQL returns NULL for it): one junk row of 100 MB
# made every host's every transaction fetch it (members are read by all of them).
MAX_PAYLOAD = 2 * MAX_RECORD_BYTES
# pg_advisory_xact_lock's first key for a pin's name (its second: hashtext(name)). A row lock
# cannot serialize two first pins of one name (SELECT ... FOR UPDATE locks no row that is not
# there yet); this lock does, for every write of a pin.
PIN_LOCK_CLASS = 0x46545031  # "FTP1"
MAX_HOST_SHOWN = 80  # a claim's holder as an error names it: a host name is at most 63 characters
ADMIN_KEY = "fleet-admin.key"
ADMIN_CERT = "fleet-admin.crt"


def _seconds(variable: str, default: float) -> float:
    """A duration from the environment: a finite number of seconds, 0 or more, or `default` when
    unset. `nan` or `inf` made the store's retries endless, and a typo silently meant the default.

    Raises:
        StoreConfigError: set to anything else.
    """
    text = os.environ.get(variable)
    if text is None or text == "":
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 <= seconds < math.inf):
        raise StoreConfigError(f"{variable} must be a number of seconds (0 or more), not {text[:40]!r}")
    return seconds


def _deadline() -> float:
    return _seconds("FIRSTTRUST_STORE_DEADLINE", DEFAULT_DEADLINE)


def lease_seconds() -> float:
    return _seconds("FIRSTTRUST_FLEET_LEASE", DEFAULT_LEASE)


@dataclass(frozen=True)
class Member:
    host: str
    pin: str
    certificate: str
    removed: bool
    version: int
    # An admin-signed record older than the newest this host verified (written back to the
    # database): counted as removed, its key revoked, never authorized (docs/fleet.md section 3).
    rolled_back: bool = False


@dataclass(frozen=True)
class Membership:
    """The verified membership: the fleet id, the admin's certificate, every member ever."""

    fleet_id: str
    admin_certificate: str
    admin_pin: str
    members: tuple[Member, ...]

    def current(self) -> dict[str, Member]:
        """Current members by pin."""
        return {m.pin: m for m in self.members if not m.removed}

    def signer_certificate(self, pin: str) -> str | None:
        if pin == self.admin_pin:
            return self.admin_certificate
        member = self.current().get(pin)
        return member.certificate if member else None


@dataclass(frozen=True)
class PendingClaim:
    """Who holds an appliance's enrollment (fleet pending)."""

    name: str
    holder: str
    lease_until: float
    pending_host: str | None
    pin: str | None


class PgStore(TrustStore):
    """The fleet store. `url` is a libpq URL (checked by connection_options)."""

    remote = True  # network round trips: the library calls it off the event loop

    def __init__(self, url: str, home: Path | None = None) -> None:
        super().__init__(home)
        self._options = connection_options(url)
        self._conn: Any = None
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._took_over: dict[str, str] = {}  # appliance -> the dead holder whose pending pin was left
        self.queries = 0  # transactions run, for the bench's requests per appliance

    def __repr__(self) -> str:  # never the URL
        return f"PgStore(home={str(self.home)!r})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_conn"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._pid = os.getpid()

    # -- connections and transactions --------------------------------------------------------------

    def _connect(self, remaining: float) -> Any:
        import psycopg

        if self._conn is not None and self._pid != os.getpid():
            self._conn = None  # inherited across fork: the parent's; never close it from here
            self._pid = os.getpid()
        if self._conn is None or self._conn.closed:
            # libpq's connect_timeout: whole seconds, 2 at least; never more than the URL's own.
            # tcp_user_timeout: a TCP connection whose data the server does not acknowledge is dropped by
            # the kernel within the bound (the keepalives in connection_options find an idle one dead).
            timeout = min(int(self._options.get("connect_timeout", "10") or 10), max(2, math.ceil(remaining)))
            self._conn = psycopg.connect(**{"tcp_user_timeout": str(math.ceil(remaining * 1000)), **self._options,
                                            "connect_timeout": str(timeout)}, autocommit=False)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def transaction(self, work: Callable[[Any], T]) -> T:
        """Run `work(cursor)` in one transaction; on a lost connection, again from the start on a
        new connection until the deadline. Nothing half-done survives a failed attempt."""
        import psycopg

        deadline = time.monotonic() + _deadline()
        delay = 0.1
        while True:
            with self._lock:
                try:
                    # Every attempt is bounded by what is left of the deadline, at least MIN_ATTEMPT:
                    # by the server (a statement, a lock wait, an idle transaction) and, for a server
                    # that answers nothing at all (stopped, partitioned), by the watchdog here.
                    bound = max(deadline - time.monotonic(), MIN_ATTEMPT)
                    conn = self._connect(bound)
                    with _Watchdog(conn, bound + WATCHDOG_GRACE), conn.transaction(), conn.cursor() as cursor:
                        milliseconds = str(math.ceil(bound * 1000))
                        cursor.execute("SELECT set_config('statement_timeout', %s, true), "
                                       "set_config('lock_timeout', %s, true), "
                                       "set_config('idle_in_transaction_session_timeout', %s, true)",
                                       (milliseconds, milliseconds, milliseconds))
                        self.queries += 1
                        return work(cursor)
                except psycopg.errors.UndefinedTable:
                    raise StoreSchemaError("the fleet store has no schema yet: run `firsttrust store migrate`") \
                        from None
                except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction,
                        psycopg.errors.DatatypeMismatch) as exc:
                    raise StoreSchemaError(f"the fleet store's schema is not the one this firsttrust expects "
                                           f"({_one_line(exc)}): run `firsttrust store migrate`") from None
                except (psycopg.OperationalError,  # QueryCanceled and LockNotAvailable included
                        # The store's own idle timeout (work between statements outlived the
                        # bound), and a server that came back read-only (a standby after a
                        # failover): as a lost connection, tried again until the deadline.
                        psycopg.errors.IdleInTransactionSessionTimeout, psycopg.errors.ReadOnlySqlTransaction,
                        psycopg.InterfaceError) as exc:
                    reason = _one_line(exc)
                    if self._conn is not None:
                        try:
                            self._conn.close()
                        except Exception:  # noqa: BLE001 - already broken
                            pass
                    self._conn = None
                except psycopg.Error as exc:  # anything else the server refused: typed, one line, nothing written
                    raise StoreRefused(f"the fleet store refused the operation ({_one_line(exc)}); nothing was "
                                       "written by it") from None
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(f"the fleet store is unreachable or did not answer in time ({reason}); nothing "
                                       "was written by the failed operation") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- schema ------------------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply the migrations not applied yet; the versions applied."""

        def work(cursor: Any) -> list[int]:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (schema.MIGRATION_LOCK,))
            cursor.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
            cursor.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cursor.fetchall()}
            applied = []
            for version, sql in schema.MIGRATIONS:
                if version not in done:
                    cursor.execute(sql)
                    cursor.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                    applied.append(version)
            return applied

        return self.transaction(work)

    def schema_version(self) -> int:
        def work(cursor: Any) -> int:
            cursor.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not cursor.fetchone()[0]:
                return 0
            cursor.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            return int(cursor.fetchone()[0])

        return self.transaction(work)

    # -- membership --------------------------------------------------------------------------------

    def anchor_pin(self) -> str:
        anchor = load_profile(self.home).anchor_pin
        if anchor is None:
            raise NotAMember(f"this host has not joined a fleet: no anchor in {self.home / 'fleet.json'} "
                             "(firsttrust fleet join --anchor PIN)")
        return anchor

    def _membership(self, cursor: Any) -> Membership:
        """Every member whose record the admin key signed, the admin key being the one whose pin
        is this host's local anchor. Unsigned or mis-signed rows are ignored (not members); a
        signed record older than the newest this host verified for that host is a rollback: that
        member counts as removed (rolled_back). Newer versions raise the local high-water marks."""
        anchor = self.anchor_pin()
        newest = load_profile(self.home).members
        cursor.execute("SELECT id, admin_certificate FROM fleet")
        rows = cursor.fetchall()
        if len(rows) != 1:
            raise UntrustedRecord("the fleet store holds no fleet (or more than one): run `firsttrust fleet create`")
        fleet_id, admin_certificate = rows[0]
        try:
            admin_pin = pin_of_certificate(admin_certificate.encode())
        except Exception:  # noqa: BLE001 - any unparsable certificate is simply not the anchor
            admin_pin = ""
        if admin_pin != anchor:
            raise UntrustedRecord(f"the fleet store's admin key ({admin_pin or 'unreadable'}) is not this host's "
                                  f"fleet anchor ({anchor}): nothing in it is used")
        cursor.execute("SELECT host, pin, CASE WHEN octet_length(payload) <= %s THEN payload END, signature "
                       "FROM members", (MAX_PAYLOAD,))
        members, seen = [], {}
        for host, pin, payload, signature in cursor.fetchall():
            record = signing.opened(admin_certificate, payload, signature)
            if (record is None or record.get("kind") != "member" or record.get("fleet") != fleet_id
                    or record.get("host") != host or record.get("pin") != pin):
                continue
            version = record.get("version")
            if type(version) is not int or not 0 < version < 2 ** 62 or not isinstance(record.get("certificate"), str):
                continue  # signed by the admin key, but not a record this firsttrust writes
            if version < newest.get(host, 0):  # an older signed record written back: a rollback
                members.append(Member(host, pin, record["certificate"], True, newest[host], rolled_back=True))
                continue
            seen[host] = version
            members.append(Member(host, pin, record["certificate"], bool(record["removed"]), version))
        if any(version > newest.get(host, 0) for host, version in seen.items()):
            remember_members(self.home, seen)
        return Membership(fleet_id, admin_certificate, admin_pin, tuple(members))

    def membership(self) -> Membership:
        return self.transaction(self._membership)

    def _me(self, membership: Membership) -> Member:
        pin = self.identity().pin
        member = membership.current().get(pin)
        if member is None:
            raise NotAMember(f"this host's key ({pin}) is not a current member of the fleet")
        return member

    # -- pin records -------------------------------------------------------------------------------

    def _pin_payload(self, fleet_id: str, record: ApplianceRecord, version: int) -> dict[str, Any]:
        data = dataclasses.asdict(record)
        data["ssh_host_keys"] = list(record.ssh_host_keys)
        return {"kind": "pin", "fleet": fleet_id, "version": version, "record": data}

    def _open_pin(self, membership: Membership, name: str, signer_pin: str, payload: str,
                  signature: bytes) -> ApplianceRecord:
        certificate = membership.signer_certificate(signer_pin)
        opened = signing.opened(certificate, payload, signature) if certificate else None
        signed = opened.get("record") if opened is not None else None
        if (opened is None or not isinstance(signed, dict)
                or opened.get("kind") != "pin"  # a signed pending pin or member record is not a pin record
                or opened.get("fleet") != membership.fleet_id  # another fleet's record (same server, same key)
                or signed.get("name") != name):  # another appliance's record, moved to this name
            raise UntrustedRecord(f"the fleet store's record for {name!r} is not signed by a member of the fleet: "
                                  "not used")
        return ApplianceRecord.from_json(json.dumps(opened["record"]).encode(), Path(f"fleet store: {name}"))

    def _check_name(self, name: str) -> str:
        self._record_path(name)  # the file store's name rule, same message
        return name

    def save(self, record: ApplianceRecord, *, same_key_only: bool = False) -> None:
        """As TrustStore.save; `same_key_only` decided under the name's lock."""
        checked_record_json(record, Path(f"fleet store: {record.name}"))
        identity = self.identity()

        def work(cursor: Any) -> None:
            membership = self._membership(cursor)
            self._me(membership)
            self._upsert_pin(cursor, membership, identity, record, same_key_only=same_key_only)

        self.transaction(work)

    def _upsert_pin(self, cursor: Any, membership: Membership, identity: Identity, record: ApplianceRecord, *,
                    same_key_only: bool = False) -> None:
        self._check_name(record.name)
        cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (PIN_LOCK_CLASS, record.name))
        cursor.execute("SELECT version, CASE WHEN octet_length(payload) <= %s THEN payload END FROM pins "
                       "WHERE name = %s FOR UPDATE", (MAX_PAYLOAD, record.name))
        row = cursor.fetchone()
        if same_key_only and row is not None:
            try:  # the same key, as the file store compares: a re-issued certificate of it is no conflict
                other = pin_of_certificate(_pinned_certificate(row[1]).encode())
            except (AttributeError, ValueError, FirsttrustError):  # an unreadable pin is another key too
                other = "an unreadable pin"
            if other != record.pin:
                raise PinConflict(record.name, other)
        version = (row[0] if row else 0) + 1
        # Re-pinned to another appliance (--replace, a redeployment with a new certificate): that
        # appliance has authorized none of the other members yet, whatever their grants said.
        repinned = row is not None and _pinned_certificate(row[1]) != record.certificate
        payload, signature = signing.seal(identity, self._pin_payload(membership.fleet_id, record, version))
        cursor.execute("INSERT INTO pins (name, signer_pin, version, payload, signature) VALUES (%s, %s, %s, %s, %s) "
                       "ON CONFLICT (name) DO UPDATE SET signer_pin = EXCLUDED.signer_pin, version = EXCLUDED.version, "
                       "payload = EXCLUDED.payload, signature = EXCLUDED.signature",
                       (record.name, identity.pin, version, payload, signature))
        # The other members' keys are to be authorized on this appliance (fleet sync pushes them);
        # the signer's own key was authorized by the enrollment (or by the manager: injected-certificate or guest-command mode).
        for member in membership.current().values():
            state = "applied" if member.pin == identity.pin else "pending"
            cursor.execute("INSERT INTO grants (appliance, member_pin, action, state) VALUES (%s, %s, 'authorize', %s) "
                           "ON CONFLICT (appliance, member_pin) DO UPDATE SET action = 'authorize', "
                           "state = CASE WHEN grants.action = 'authorize' AND grants.state = 'applied' AND NOT %s "
                           "THEN 'applied' ELSE EXCLUDED.state END, updated_at = now()",
                           (record.name, member.pin, state, repinned))
        cursor.execute("INSERT INTO audit (host, event, subject) VALUES (%s, 'pinned', %s)",
                       (self._host_name(membership, identity.pin), record.name))

    @staticmethod
    def _host_name(membership: Membership, pin: str) -> str:
        member = membership.current().get(pin)
        return member.host if member else ("admin" if pin == membership.admin_pin else pin)

    def get(self, name: str) -> ApplianceRecord:
        self._check_name(name)

        def work(cursor: Any) -> ApplianceRecord:
            cursor.execute("SELECT signer_pin, CASE WHEN octet_length(payload) <= %s THEN payload END, signature "
                           "FROM pins WHERE name = %s", (MAX_PAYLOAD, name))
            row = cursor.fetchone()
            membership = self._membership(cursor)
            self._me(membership)  # a removed host uses nothing from the fleet
            if row is None:
                raise UnknownAppliance(f"no pinned appliance named {name!r} in the fleet store")
            return self._open_pin(membership, name, *row)

        return self.transaction(work)

    def scan(self) -> tuple[list[ApplianceRecord], list[TrustStoreError]]:
        def work(cursor: Any) -> tuple[list[ApplianceRecord], list[TrustStoreError]]:
            membership = self._membership(cursor)
            self._me(membership)
            cursor.execute("SELECT name, signer_pin, CASE WHEN octet_length(payload) <= %s THEN payload END, "
                           "signature FROM pins ORDER BY name", (MAX_PAYLOAD,))
            records, problems = [], []
            for name, signer_pin, payload, signature in cursor.fetchall():
                try:
                    records.append(self._open_pin(membership, name, signer_pin, payload, signature))
                except TrustStoreError as exc:
                    problems.append(exc)
            return records, problems

        return self.transaction(work)

    def remove(self, name: str) -> None:
        self._check_name(name)

        def work(cursor: Any) -> None:
            membership = self._membership(cursor)
            me = self._me(membership)
            cursor.execute("DELETE FROM pins WHERE name = %s", (name,))
            cursor.execute("DELETE FROM grants WHERE appliance = %s", (name,))
            cursor.execute("INSERT INTO audit (host, event, subject) VALUES (%s, 'removed', %s)", (me.host, name))

        self.transaction(work)

    # -- the exactly-once claim and pending pins (docs/fleet.md sections 5 and 6) ------------------

    def claim(self, name: str) -> str | None:
        """Take the enrollment of `name` for this host, or raise HeldByHost naming the live holder.
        Returns the host whose pending pin this host takes over (its lease expired), or None."""
        self._check_name(name)
        lease = lease_seconds()

        def work(cursor: Any) -> str | None:
            me = self._me(self._membership(cursor))
            cursor.execute("SELECT holder, lease_until > now(), pending_host FROM enrollments WHERE name = %s "
                           "FOR UPDATE", (name,))
            row = cursor.fetchone()
            if row is None:
                cursor.execute("INSERT INTO enrollments (name, holder, lease_until) VALUES "
                               "(%s, %s, now() + make_interval(secs => %s)) ON CONFLICT (name) DO NOTHING",
                               (name, me.host, lease))
                if cursor.rowcount == 0:  # inserted by another host since our SELECT: its claim
                    cursor.execute("SELECT holder FROM enrollments WHERE name = %s", (name,))
                    holder = str(cursor.fetchone()[0])[:MAX_HOST_SHOWN]  # unsigned text: bounded
                    raise HeldByHost(f"{name}: host {holder} holds this appliance's enrollment", holder)
                cursor.execute("INSERT INTO audit (host, event, subject) VALUES (%s, 'claimed', %s)", (me.host, name))
                return None
            holder, live, pending_host = row
            if holder != me.host and live:
                holder = str(holder)[:MAX_HOST_SHOWN]  # unsigned text: bounded (the CLI escapes it)
                raise HeldByHost(f"{name}: host {holder} holds this appliance's enrollment (lease live); "
                                 "it finishes it, or its lease expires and another host takes over", holder)
            cursor.execute("UPDATE enrollments SET holder = %s, lease_until = now() + make_interval(secs => %s) "
                           "WHERE name = %s", (me.host, lease, name))
            if holder != me.host:
                cursor.execute("INSERT INTO audit (host, event, subject) VALUES (%s, 'took-over', %s)",
                               (me.host, name))
            return pending_host if pending_host not in (None, me.host) else None

        taken_from = self.transaction(work)
        if taken_from:
            self._took_over[name] = taken_from
        else:
            self._took_over.pop(name, None)
        return taken_from

    def renew(self, name: str) -> None:
        """Before each retry of an enrollment that waits (an appliance still booting, a busy
        one): this host's claim on `name` gets its full lease again, so that no other host takes
        the appliance over while this one still works on it (a --deadline may outlast the lease).

        Raises:
            HeldByHost: this host no longer holds the claim (its lease expired and another host
                took it over): nothing more is sent.
        """
        self._check_name(name)
        lease = lease_seconds()

        def work(cursor: Any) -> None:
            me = self._me(self._membership(cursor))
            cursor.execute("UPDATE enrollments SET lease_until = now() + make_interval(secs => %s) "
                           "WHERE name = %s AND holder = %s", (lease, name, me.host))
            if cursor.rowcount == 0:
                cursor.execute("SELECT holder FROM enrollments WHERE name = %s", (name,))
                row = cursor.fetchone()
                holder = str(row[0])[:MAX_HOST_SHOWN] if row else "none"
                raise HeldByHost(f"{name}: this host's claim lapsed while it waited for the appliance, and host "
                                 f"{holder} holds this appliance's enrollment now; nothing more was sent", holder)

        self.transaction(work)

    def took_over_from(self, name: str) -> str | None:
        """The host whose pending enrollment of `name` this host's last claim took over."""
        return self._took_over.get(name)

    def release(self, name: str) -> None:
        """Give the claim up after a failure: the row goes, unless a pending pin is in it (then its
        holder gets it back, lease expired, so that host or any other can resume)."""

        def work(cursor: Any) -> None:
            me = self._me(self._membership(cursor))
            cursor.execute("SELECT holder, pending_host FROM enrollments WHERE name = %s FOR UPDATE", (name,))
            row = cursor.fetchone()
            if row is None or row[0] != me.host:
                return
            if row[1] is None:
                cursor.execute("DELETE FROM enrollments WHERE name = %s", (name,))
            else:
                cursor.execute("UPDATE enrollments SET holder = pending_host, lease_until = now() WHERE name = %s",
                               (name,))

        self.transaction(work)

    def save_pending(self, record: ApplianceRecord) -> None:
        checked_record_json(record, Path(f"fleet store: {record.name}"))
        identity = self.identity()

        def work(cursor: Any) -> None:
            membership = self._membership(cursor)
            me = self._me(membership)
            payload, signature = signing.seal(identity, {**self._pin_payload(membership.fleet_id, record, 0),
                                                         "kind": "pending"})
            cursor.execute("INSERT INTO enrollments (name, holder, lease_until, pending_host, signer_pin, payload, "
                           "signature) VALUES (%s, %s, now() + make_interval(secs => %s), %s, %s, %s, %s) "
                           "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, "
                           "lease_until = EXCLUDED.lease_until, pending_host = EXCLUDED.pending_host, "
                           "signer_pin = EXCLUDED.signer_pin, payload = EXCLUDED.payload, "
                           "signature = EXCLUDED.signature",
                           (record.name, me.host, lease_seconds(), me.host, identity.pin, payload, signature))

        self.transaction(work)

    def get_pending(self, name: str) -> ApplianceRecord | None:
        """This host's own pending pin for `name` (another host's cannot be confirmed with this
        host's key, docs/fleet.md section 6)."""
        self._check_name(name)
        my_pin = self.identity().pin

        def work(cursor: Any) -> ApplianceRecord | None:
            cursor.execute("SELECT signer_pin, CASE WHEN octet_length(payload) <= %s THEN payload END, signature "
                           "FROM enrollments WHERE name = %s AND "
                           "signer_pin = %s AND payload IS NOT NULL", (MAX_PAYLOAD, name, my_pin))
            row = cursor.fetchone()
            if row is None:
                return None
            membership = self._membership(cursor)
            certificate = membership.signer_certificate(row[0])
            opened = signing.opened(certificate, row[1], row[2]) if certificate else None
            if (opened is None or opened.get("kind") != "pending" or opened.get("fleet") != membership.fleet_id
                    or not isinstance(opened.get("record"), dict) or opened["record"].get("name") != name):
                raise UntrustedRecord(f"the fleet store's pending enrollment of {name!r} is not signed by this host: "
                                      "not used")
            return ApplianceRecord.from_json(json.dumps(opened["record"]).encode(), Path(f"fleet store: {name}"))

        return self.transaction(work)

    def promote(self, record: ApplianceRecord, *, same_key_only: bool = False) -> None:
        """Pin `record` (signed), queue the other members' grants and drop the claim, in one
        transaction. `same_key_only` as in `save` (PinConflict, and the claim and pending pin stay)."""
        checked_record_json(record, Path(f"fleet store: {record.name}"))
        identity = self.identity()

        def work(cursor: Any) -> None:
            membership = self._membership(cursor)
            self._me(membership)
            self._upsert_pin(cursor, membership, identity, record, same_key_only=same_key_only)
            cursor.execute("DELETE FROM enrollments WHERE name = %s", (record.name,))

        self.transaction(work)
        self._took_over.pop(record.name, None)

    def claims(self) -> list[PendingClaim]:
        """Every claim: which host holds which enrollment, and whose pending pin it has."""
        def work(cursor: Any) -> list[PendingClaim]:
            cursor.execute("SELECT name, holder, extract(epoch FROM lease_until), pending_host, "
                           "CASE WHEN octet_length(payload) <= %s THEN payload END "
                           "FROM enrollments ORDER BY name", (MAX_PAYLOAD,))
            claims = []
            for name, holder, lease_until, pending_host, payload in cursor.fetchall():
                pin = None
                if payload:
                    try:
                        pin = json.loads(payload)["record"]["pin"]
                    except (ValueError, RecursionError, KeyError, TypeError):
                        pin = None
                    pin = pin if isinstance(pin, str) else None  # unsigned text: shown, never used
                claims.append(PendingClaim(name, holder, float(lease_until), pending_host, pin))
            return claims

        return self.transaction(work)


class _Watchdog:
    """Cuts `conn`'s socket (shutdown, so that libpq's wait ends with a lost connection, retried or
    StoreUnavailable) if the block it guards is still running after `seconds`: a server that is
    stopped or behind a silent partition answers nothing, not even its own statement_timeout.
    Disarmed, under its lock, before the block ends: it never touches a socket it did not guard."""

    def __init__(self, conn: Any, seconds: float) -> None:
        self._conn, self._seconds = conn, seconds
        self._guard = threading.Lock()
        self._armed = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "_Watchdog":
        self._fd = self._conn.fileno()
        self._armed = True
        self._timer = threading.Timer(self._seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()
        return self

    def _cut(self) -> None:
        with self._guard:
            if not self._armed:
                return
            try:
                sock = socket.socket(fileno=os.dup(self._fd))
            except OSError:
                return
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.close()

    def __exit__(self, *exc_info: object) -> None:
        with self._guard:
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()


def _pinned_certificate(payload: str) -> str | None:
    """The certificate a stored pin payload names (unverified: it only decides whether the other
    members' grants are queued again, which a forged payload can at worst cause once more)."""
    try:
        certificate = json.loads(payload)["record"]["certificate"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return None
    return certificate if isinstance(certificate, str) else None


def _one_line(exc: BaseException) -> str:
    """An OperationalError's reason without anything from the URL: libpq's message names the host
    and the socket path, never the password (which never is in the URL anyway)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def random_fleet_id() -> str:
    return secrets.token_hex(8)
