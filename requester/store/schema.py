"""The fleet store's schema, as numbered migrations (docs/fleet.md section 7). Each migration is
applied once, in one transaction, under an advisory lock, and recorded in schema_migrations.
Signed payloads are kept as text (the bytes verified are the bytes signed), never jsonb."""

from __future__ import annotations

# pg_advisory_xact_lock key: "firsttrust schema" (any constant; one per database)
MIGRATION_LOCK = 0x66697273747472

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE fleet (
    id text PRIMARY KEY,
    admin_certificate text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- One row per host that ever joined; `payload` is admin-signed ({kind: member, host, certificate, removed, version}).
CREATE TABLE members (
    host text PRIMARY KEY,
    pin text NOT NULL UNIQUE,
    payload text NOT NULL,
    signature bytea NOT NULL
);
-- One pinned appliance; `payload` is signed by the member (or admin) whose pin is signer_pin.
CREATE TABLE pins (
    name text PRIMARY KEY,
    signer_pin text NOT NULL,
    version bigint NOT NULL,
    payload text NOT NULL,
    signature bytea NOT NULL
);
-- The exactly-once claim on an appliance's enrollment, and its pending pin (signed by pending_host).
CREATE TABLE enrollments (
    name text PRIMARY KEY,
    holder text NOT NULL,
    lease_until timestamptz NOT NULL,
    pending_host text,
    signer_pin text,
    payload text,
    signature bytea
);
-- Which member key each appliance must authorize or revoke (fleet sync applies them).
CREATE TABLE grants (
    appliance text NOT NULL,
    member_pin text NOT NULL,
    action text NOT NULL CHECK (action IN ('authorize', 'revoke')),
    state text NOT NULL CHECK (state IN ('pending', 'applied')),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (appliance, member_pin)
);
CREATE INDEX grants_pending ON grants (appliance) WHERE state = 'pending';
CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    host text NOT NULL,
    event text NOT NULL,
    subject text NOT NULL
);
"""),
)

LATEST = MIGRATIONS[-1][0]
