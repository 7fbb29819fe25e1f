"""The trust store's backends (docs/fleet.md): the file store (requester.truststore.TrustStore,
the default, nothing to install) and the fleet store on PostgreSQL (requester.store.pgstore),
chosen by FIRSTTRUST_STORE or the `store` of $FIRSTTRUST_HOME/fleet.json.

Both are a TrustStore (the interface: identity, get, list, scan, save, remove, save_pending,
get_pending, promote, key_path, cert_path); the fleet store adds claim/release,
which requester.library calls through `claim_enrollment` only when the store has them.

The folder requester/store/ installs as `firsttrust.requester.store`; it imports the requester's
modules relatively (`from ..truststore import ...`).
"""

from __future__ import annotations

from pathlib import Path

from ..truststore import TrustStore, default_home
from .config import store_url


def open_store(home: Path | None = None) -> TrustStore:
    """The configured store for `home` (default $FIRSTTRUST_HOME): files unless a PostgreSQL URL is set."""
    home = Path(home) if home else default_home()
    url = store_url(home)
    if url is None:
        return TrustStore(home)
    from .pgstore import PgStore

    return PgStore(url, home)
