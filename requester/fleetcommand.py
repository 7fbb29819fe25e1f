"""`firsttrust store ...` and `firsttrust fleet ...` (docs/fleet.md): the fleet store's schema,
import of a file store, membership, claims, and pushing member keys to the appliances.

    firsttrust store migrate | store check | store import-files [--from HOME]
    firsttrust fleet create --host NAME [--store URL]      (on the admin's host: creates the admin key here)
    firsttrust fleet join --anchor PIN [--host NAME] [--store URL]  (on a member host: records the anchor)
    firsttrust fleet add-host NAME CERT | remove-host NAME (admin)
    firsttrust fleet hosts | pending | sync

The store URL is a libpq URL without a password (libpq's password or service file supplies it);
FIRSTTRUST_STORE wins over the one recorded in $FIRSTTRUST_HOME/fleet.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from firsttrust.common.cli import EXIT_FAILED, EXIT_OK, Subcommand, UsageError, no_arguments, one_line, table
from firsttrust.common.files import read_bounded

from .store import open_store
from .store.config import connection_options, load_profile
from .store.errors import StoreConfigError
from .truststore import PinConflict, TrustStore, default_home


def _fleet_store(url: str | None = None):
    """The PostgreSQL store this command works on: `url` if given, else the configured one."""
    from .store.pgstore import PgStore

    if url:
        return PgStore(url, default_home())
    store = open_store()
    if not isinstance(store, PgStore):
        raise StoreConfigError("no fleet store configured: set FIRSTTRUST_STORE to a postgresql:// URL (or pass "
                               "--store to `fleet create`/`fleet join`)")
    return store


# --- store ---------------------------------------------------------------------------------------


def store_migrate(args: argparse.Namespace) -> int:
    applied = _fleet_store().migrate()
    print(f"schema migrations applied: {', '.join(map(str, applied))}" if applied else "schema is up to date")
    return EXIT_OK


def store_check(args: argparse.Namespace) -> int:
    """Schema version, membership, every pin record's signature; exit 1 on any problem."""
    from .store.schema import LATEST

    store = _fleet_store()
    version = store.schema_version()
    print(f"schema version {version} (this firsttrust expects {LATEST})")
    if version != LATEST:
        print("firsttrust: error: run `firsttrust store migrate`", file=sys.stderr)
        return EXIT_FAILED
    membership = store.membership()
    print(f"fleet {membership.fleet_id}: {len(membership.current())} current members, anchor {membership.admin_pin}")
    records, problems = store.scan()
    print(f"{len(records)} pin records verified")
    for problem in problems:
        print(f"firsttrust: error: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", metavar="HOME", type=Path,
                        help="the file store to import (default: this host's $FIRSTTRUST_HOME)")


def store_import_files(args: argparse.Namespace) -> int:
    """Copy a file store's pins into the fleet store, each signed by this host. The file store's
    key stays where it is; appliances it enrolled keep authorizing this host's key only if the
    file store is this host's own (`fleet sync` then pushes the other members)."""
    store = _fleet_store()
    source = TrustStore(args.source or store.home)
    records, problems = source.scan()
    conflicts = 0
    for record in records:
        try:  # a name the fleet has pinned to another key is never replaced by an import
            store.save(record, same_key_only=True)
        except PinConflict as exc:
            conflicts += 1
            print(f"firsttrust: error: not imported {record.name} ({record.pin}): the fleet store pins it to another "
                  f"key ({exc.pin}); `firsttrust pins remove {record.name}` first if the file store's is the one to "
                  "keep", file=sys.stderr)
            continue
        print(f"imported {record.name}: {record.pin}")
    for problem in problems:
        print(f"firsttrust: error: skipped: {one_line(str(problem))}", file=sys.stderr)
    from .cli import EXIT_IDENTITY_CHANGED  # (cli imports this module)

    return EXIT_IDENTITY_CHANGED if conflicts else EXIT_FAILED if problems else EXIT_OK


# --- fleet ---------------------------------------------------------------------------------------


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True, help="this host's name in the fleet")
    parser.add_argument("--store", metavar="URL", help="postgresql:// URL (no password), recorded in fleet.json")


def fleet_create(args: argparse.Namespace) -> int:
    from .store import fleet
    from .store.config import FleetProfile, save_profile

    fleet.check_host_name(args.host, UsageError)
    if args.store:
        connection_options(args.store)
        profile = load_profile(default_home())
        save_profile(default_home(), FleetProfile(profile.anchor_pin, args.store, profile.members))
    membership = fleet.create(_fleet_store(), args.host)
    print(f"fleet {membership.fleet_id} created; its anchor (give it to every host's `fleet join`): "
          f"{membership.admin_pin}")
    return EXIT_OK


def _join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--anchor", required=True, metavar="PIN", help="the fleet admin key's pin (sha256:...)")
    parser.add_argument("--host", metavar="NAME", help="this host's name: a new key is named after it (appliances "
                                                       "tell member keys apart by subject)")
    parser.add_argument("--store", metavar="URL", help="postgresql:// URL (no password), recorded in fleet.json")


def fleet_join(args: argparse.Namespace) -> int:
    from firsttrust.identity import normalize_pin

    from .store import fleet

    normalize_pin(args.anchor)  # InvalidPin: exit 2, before anything is recorded
    if args.host is not None:
        fleet.check_host_name(args.host, UsageError)
    if args.store:
        connection_options(args.store)
    home = default_home()
    fleet.join(home, args.anchor, args.store or load_profile(home).store, args.host)
    identity = TrustStore(home).identity()
    print(f"anchor recorded in {home / 'fleet.json'}; have the admin run `firsttrust fleet add-host NAME CERT` "
          "with this certificate:", file=sys.stderr)
    sys.stdout.write(identity.cert_pem.decode("ascii"))
    return EXIT_OK


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", metavar="NAME")
    parser.add_argument("cert", metavar="CERT", type=Path, help="the host's certificate (`firsttrust identity`)")


def fleet_add_host(args: argparse.Namespace) -> int:
    from .store import fleet

    fleet.check_host_name(args.host, UsageError)
    pem = read_bounded(args.cert, 64 * 1024, what=f"certificate {args.cert}", error=UsageError)
    pin = fleet.add_host(_fleet_store(), args.host, pem)
    print(f"added {args.host}: {pin} (`firsttrust fleet sync` authorizes it on the appliances)")
    return EXIT_OK


def _host_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", metavar="NAME")


def fleet_remove_host(args: argparse.Namespace) -> int:
    from .store import fleet

    pin = fleet.remove_host(_fleet_store(), args.host)
    print(f"removed {args.host}: {pin} (`firsttrust fleet sync` revokes it on the appliances)")
    return EXIT_OK


def fleet_hosts(args: argparse.Namespace) -> int:
    membership = _fleet_store().membership()
    rows = [(m.host, "rolled-back" if m.rolled_back else "removed" if m.removed else "member", m.pin)
            for m in sorted(membership.members, key=lambda m: m.host)]
    print(table(("HOST", "STATUS", "PIN"), rows))
    return EXIT_OK


def fleet_pending(args: argparse.Namespace) -> int:
    claims = _fleet_store().claims()
    now = time.time()
    # holder, pending_host and the pin are the database's unsigned text: shown on one line, bounded
    rows = [(c.name, _shown(c.holder), f"{max(0, int(c.lease_until - now))}s" if c.lease_until > now else "expired",
             _shown(c.pending_host or "-"), _shown(c.pin or "-")) for c in claims]
    if rows:
        print(table(("APPLIANCE", "HOLDER", "LEASE", "PENDING PIN OF", "PIN"), rows))
    else:
        print("no enrollment is held", file=sys.stderr)
    return EXIT_OK


def fleet_sync(args: argparse.Namespace) -> int:
    from .store import fleet

    result = asyncio.run(fleet.sync(_fleet_store()))
    print(f"applied {result.applied}")
    for appliance, host, action, why in result.left:
        print(f"pending {appliance}: {action} {host} ({one_line(why)})")
    for appliance, host, action in result.waiting:
        print(f"waiting {appliance}: {action} {host} (for a member whose key {appliance} authorizes: its sync)")
    for appliance, pin, action in result.refused:  # a grant row the admin-signed membership contradicts
        print(f"firsttrust: error: refused {_shown(appliance)}: {_shown(action)} {_shown(pin)} (fleet_untrusted_record: "
              "not what the admin-signed membership says; not applied)", file=sys.stderr)
    return EXIT_FAILED if result.left or result.refused else EXIT_OK


def subcommands(row=Subcommand):
    """The rows cli.SUBCOMMANDS adds."""
    none = no_arguments
    return (
        row(("store", "migrate"), "apply the fleet store's schema migrations", none, store_migrate),
        row(("store", "check"), "check the fleet store's schema and every record's signature", none, store_check),
        row(("store", "import-files"), "copy a file store's pins into the fleet store", _import_arguments,
            store_import_files),
        row(("fleet", "create"), "create a fleet: its admin key here, this host its first member", _create_arguments,
            fleet_create),
        row(("fleet", "join"), "record the fleet's anchor on this host; print the certificate to admit",
            _join_arguments, fleet_join),
        row(("fleet", "add-host"), "admit a host (admin)", _add_arguments, fleet_add_host),
        row(("fleet", "remove-host"), "remove a host (admin); sync revokes it on the appliances", _host_argument,
            fleet_remove_host),
        row(("fleet", "hosts"), "list the fleet's hosts", none, fleet_hosts),
        row(("fleet", "pending"), "which host holds which enrollment", none, fleet_pending),
        row(("fleet", "sync"), "authorize members and revoke removed hosts on the appliances", none, fleet_sync),
    )


def _shown(text: object, limit: int = 80) -> str:
    """A database column no signature covers, as the operator sees it: one line, escapes for
    control characters, at most `limit` characters."""
    shown = one_line(str(text))
    return shown if len(shown) <= limit else shown[:limit] + "..."
