"""Which store a requester uses (docs/fleet.md section 7): the file store unless a PostgreSQL URL
is set in FIRSTTRUST_STORE or in the fleet profile ($FIRSTTRUST_HOME/fleet.json)."""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from firsttrust.common.files import read_at_most, write_atomic
from firsttrust.errors import InvalidPin
from firsttrust.identity import normalize_pin

from .errors import StoreConfigError

PROFILE = "fleet.json"
MAX_PROFILE = 16 * 1024
SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class FleetProfile:
    """What a member host keeps locally, out of the database's reach: the fleet's anchor (the
    admin key's pin), optionally the store URL, and the highest version of each host's
    admin-signed membership record this host has verified (`members`, host -> version: an older
    record written back to the database is a rollback, docs/fleet.md section 3)."""

    anchor_pin: str | None = None
    store: str | None = None
    members: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        data: dict = {"anchor_pin": self.anchor_pin, "store": self.store}
        if self.members:
            data["members"] = dict(sorted(self.members.items()))
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def load_profile(home: Path) -> FleetProfile:
    path = Path(home) / PROFILE
    try:
        data, _ = read_at_most(path, MAX_PROFILE + 1)
    except FileNotFoundError:
        return FleetProfile()
    except OSError as exc:
        raise StoreConfigError(f"cannot read the fleet profile {path}: {exc.strerror}") from None
    try:
        raw = json.loads(data)
        anchor = raw.get("anchor_pin")
        store = raw.get("store")
        if anchor is not None:
            anchor = normalize_pin(anchor)
        if store is not None and not isinstance(store, str):
            raise ValueError("store must be a string")
        members = raw.get("members") or {}
        if not isinstance(members, dict) or not all(
                isinstance(host, str) and type(version) is int and version >= 0 for host, version in members.items()):
            raise ValueError("members must map host names to versions")
    except (ValueError, RecursionError, AttributeError, TypeError, InvalidPin) as exc:  # InvalidPin: anchor_pin
        raise StoreConfigError(f"the fleet profile {path} is corrupt ({(str(exc).splitlines() or [''])[0][:80]})") \
            from None
    return FleetProfile(anchor, store, dict(members))


def remember_members(home: Path, seen: dict[str, int]) -> FleetProfile:
    """Raise the profile's high-water marks to the versions in `seen` (never lower one), under a
    lock: the worker processes of a batch share the profile."""
    Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(Path(home) / ".fleet.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            profile = load_profile(home)
            merged = {**profile.members}
            for host, version in seen.items():
                merged[host] = max(version, merged.get(host, 0))
            if merged != profile.members:
                profile = replace(profile, members=merged)
                save_profile(home, profile)
            return profile
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_profile(home: Path, profile: FleetProfile) -> None:
    Path(home).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(Path(home) / PROFILE, profile.to_json(), 0o600)


def store_url(home: Path) -> str | None:
    """The configured PostgreSQL URL (FIRSTTRUST_STORE wins over the profile), or None: files.
    `FIRSTTRUST_STORE=files` forces the file store."""
    url = os.environ.get("FIRSTTRUST_STORE")
    if url is None:
        url = load_profile(home).store
    if not url or url == "files":
        return None
    return url


def connection_options(url: str) -> dict[str, str]:
    """libpq connection options for `url`, refused unless safe: no password in it (libpq's
    password or service file supply it), TLS with full verification unless a Unix socket.
    Messages never quote the URL (it might carry a password)."""
    if not url.startswith(SCHEMES):
        raise StoreConfigError("the store URL must start with postgresql:// (or set FIRSTTRUST_STORE=files)")
    from psycopg.conninfo import conninfo_to_dict

    try:
        options = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    except Exception:  # noqa: BLE001 - psycopg's parse error may echo the URL: name nothing
        raise StoreConfigError("the store URL cannot be parsed (libpq connection URI syntax)") from None
    if "password" in options:
        raise StoreConfigError("the store URL carries a password: put it in libpq's password file (~/.pgpass, "
                               "PGPASSFILE) or service file instead")
    # Unix socket only when every host is a socket directory and nothing makes libpq use TCP anyway:
    # a hostaddr (URL or PGHOSTADDR) is connected to over TCP whatever `host` says, and a service
    # file may name one. libpq reads PGHOST when the URL has no host.
    hosts = [h for h in (options.get("host") or os.environ.get("PGHOST") or "").split(",") if h]
    unix = (bool(hosts) and all(h.startswith("/") or h.startswith("@") for h in hosts)
            and not (options.get("hostaddr") or os.environ.get("PGHOSTADDR"))
            and not (options.get("service") or os.environ.get("PGSERVICE")))
    if not unix:
        sslmode = options.setdefault("sslmode", "verify-full")
        if sslmode != "verify-full":
            raise StoreConfigError(f"the store URL asks for sslmode={sslmode}: a TCP connection to the store must "
                                   "use sslmode=verify-full (or connect over a Unix socket)")
    options.setdefault("connect_timeout", "10")
    if not re.fullmatch(r"[0-9]{1,5}", options["connect_timeout"]):
        raise StoreConfigError("the store URL's connect_timeout is not a whole number of seconds")
    # A TCP peer that vanished is found dead within about 11 s of silence (libpq ignores these on a
    # Unix socket); PgStore bounds each transaction by FIRSTTRUST_STORE_DEADLINE on top.
    for key, value in (("keepalives", "1"), ("keepalives_idle", "5"), ("keepalives_interval", "2"),
                       ("keepalives_count", "3")):
        options.setdefault(key, value)
    options.setdefault("application_name", "firsttrust")
    return options
