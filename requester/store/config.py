"""Which store a requester uses (docs/fleet.md section 7): the file store unless a PostgreSQL URL
is set in FIRSTTRUST_STORE or in the fleet profile ($FIRSTTRUST_HOME/fleet.json)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from firsttrust.common.files import read_at_most, write_atomic
from firsttrust.identity import normalize_pin

from .errors import StoreConfigError

PROFILE = "fleet.json"
MAX_PROFILE = 16 * 1024
SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class FleetProfile:
    """What a member host keeps locally, out of the database's reach: the fleet's anchor (the
    admin key's pin) and, optionally, the store URL."""

    anchor_pin: str | None = None
    store: str | None = None

    def to_json(self) -> bytes:
        return json.dumps({"anchor_pin": self.anchor_pin, "store": self.store}, indent=2, sort_keys=True).encode() + b"\n"


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
    except (ValueError, RecursionError, AttributeError, TypeError) as exc:
        raise StoreConfigError(f"the fleet profile {path} is corrupt ({str(exc).splitlines()[0][:80]})") from None
    return FleetProfile(anchor, store)


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
    hosts = [h for h in options.get("host", "").split(",") if h]
    unix = bool(hosts) and all(h.startswith("/") or h.startswith("@") for h in hosts)
    if not unix:
        sslmode = options.setdefault("sslmode", "verify-full")
        if sslmode != "verify-full":
            raise StoreConfigError(f"the store URL asks for sslmode={sslmode}: a TCP connection to the store must "
                                   "use sslmode=verify-full (or connect over a Unix socket)")
    options.setdefault("connect_timeout", "10")
    options.setdefault("application_name", "firsttrust")
    return options
