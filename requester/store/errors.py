"""The fleet store's typed errors (docs/fleet.md). Each has a stable code, listed in
docs/requester.md's troubleshooting table; messages are one line and never carry a URL's
password, a key or a secret."""

from __future__ import annotations

from ..truststore import TrustStoreError


class StoreConfigError(TrustStoreError):
    """The store URL or the fleet profile is not usable (a password in the URL, TLS not verified,
    an unknown scheme, a corrupt fleet.json)."""

    code = "store_config"


class StoreUnavailable(TrustStoreError):
    """The database could not be reached, or the connection kept failing, within the deadline.
    Nothing half-written: an operation is one transaction."""

    code = "store_unavailable"


class StoreSchemaError(TrustStoreError):
    """The database's schema is not the one this firsttrust expects (run `firsttrust store migrate`)."""

    code = "store_schema"


class StoreRefused(TrustStoreError):
    """The database refused an operation for a reason other than a lost connection or the schema
    (a permission, a value out of range in a row someone wrote by hand): one transaction, nothing
    of it written."""

    code = "store_refused"


class UntrustedRecord(TrustStoreError):
    """A record in the database is not signed by a key the fleet trusts: not used."""

    code = "fleet_untrusted_record"


class NotAMember(TrustStoreError):
    """This host is not (or no longer) a member of the fleet."""

    code = "fleet_not_member"


class HeldByHost(TrustStoreError):
    """Another fleet host holds this appliance's enrollment (`holder` names it)."""

    code = "held_by_host"

    def __init__(self, message: str, holder: str = "") -> None:
        super().__init__(message)
        self.holder = holder
