"""The agent's state directory: what provisioning and enrollment leave behind.

    <state_dir>/            0700
      identity.key          0600  the appliance's private key (PEM, PKCS#8)
      identity.crt          0644  its self-signed certificate
      sec-b                 0600  SEC-B while enrollment is armed; removed once consumed
      state.json            0600  phase, SRP salt + verifier, window, counters, scrub result
      authorized.json       0600  the requester certificates allowed on the API

state.json is the commit point of provisioning: it is written last, atomically, and names the
SHA-256 of the sec-b file it goes with, so a crash between the two is detected, not trusted.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from firsttrust.common.files import ensure_private_dir, read_at_most, write_atomic
from firsttrust.identity import Identity, certificate_pem, load_certificate, pin_of_certificate

from .errors import AgentError

STATE_VERSION = 1
MAX_STATE_FILE = 1024 * 1024
MAX_SEC_B_FILE = 1024  # what load_sec_b reads of the file at most; a longer one fails its digest


class StateError(AgentError):
    """The state directory is unreadable or its content is corrupt."""

    code = "state"


@dataclass
class AgentState:
    phase: str = "unprovisioned"  # "provisioned" (SRP armed) | "enrolled"
    source: str = ""
    provisioned_at: float | None = None
    enroll_window: int | None = None
    window_expires_at: float | None = None
    srp_salt: str | None = None  # hex; None once consumed
    srp_verifier: str | None = None
    sec_b_sha256: str | None = None
    failures: int = 0
    password: str = "not-set"  # "set" | "skipped" | "not-set"
    scrub: dict[str, str] = field(default_factory=lambda: {"result": "not-needed", "detail": ""})
    published: dict[str, str] = field(default_factory=lambda: {"result": "not-attempted", "detail": ""})
    enrolled_at: float | None = None
    enrolled_via: str | None = None
    # The SRP enrollment's grant, recorded by the one write that commits it (agent/grant.py):
    # pin, name, certificate (PEM), ssh_key, account. Applied outside state.json afterwards.
    enrollment: dict[str, Any] | None = None
    # What the last start found half-done and finished (agent/grant.py repair_at_start).
    repaired: dict[str, Any] | None = None
    version: int = STATE_VERSION

    @property
    def armed(self) -> bool:
        return self.phase == "provisioned" and self.srp_verifier is not None


_STATE_FIELDS = tuple(f.name for f in fields(AgentState))


def _pin_of_key(key) -> str:
    from cryptography.hazmat.primitives import serialization

    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    # The files' paths are joined once per directory, not at each use: a pathlib join is a few
    # microseconds, and the agent looks these up a dozen times per enrollment (issue 29).
    @property
    def path(self) -> Path:
        return self._path

    @path.setter
    def path(self, value: Path) -> None:
        self._path = value = Path(value)
        self.key_path = value / "identity.key"
        self.cert_path = value / "identity.crt"
        self.sec_b_path = value / "sec-b"
        self.state_path = value / "state.json"
        self.authorized_path = value / "authorized.json"

    def ensure(self) -> None:
        ensure_private_dir(self.path)

    # -- state.json ---------------------------------------------------------------------------

    def _read_json(self, path: Path) -> Any:
        try:
            data, _ = read_at_most(path, MAX_STATE_FILE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from None
        try:
            if len(data) > MAX_STATE_FILE:
                raise ValueError
            return json.loads(data)
        except ValueError:
            raise StateError(f"{path} is corrupt (not JSON); refusing to guess") from None

    def load(self) -> AgentState | None:
        raw = self._read_json(self.state_path)
        if raw is None:
            return None
        try:
            state = AgentState(**raw)
        except TypeError:
            raise StateError(f"{self.state_path} has unknown or missing fields") from None
        if state.version != STATE_VERSION:
            raise StateError(f"{self.state_path} is version {state.version}, this agent reads {STATE_VERSION}")
        return state

    def save(self, state: AgentState) -> None:
        # A flat dict of the fields, not dataclasses.asdict: asdict deep-copies every nested dict
        # (~60 us, twice per enrollment: the charge and the commit) for json.dumps to read once.
        data = {name: getattr(state, name) for name in _STATE_FIELDS}
        # One line: with `indent` json.dumps runs its pure-Python encoder (its closures are a
        # reference cycle per call), without it the C one.
        write_atomic(self.state_path, json.dumps(data, sort_keys=True).encode() + b"\n", 0o600)

    # -- identity -----------------------------------------------------------------------------

    def load_identity(self) -> Identity | None:
        try:
            key_pem = self.key_path.read_bytes()
            cert_pem = self.cert_path.read_bytes()
        except FileNotFoundError:
            return None
        identity = Identity(key_pem, cert_pem)
        try:
            # Compare pins, not key objects: cryptography 38 (Debian 12) has no key equality.
            if pin_of_certificate(identity.certificate) != _pin_of_key(identity.private_key):
                return None
        except ValueError:
            raise StateError("the identity key or certificate is corrupt") from None
        return identity

    def load_key_pem(self) -> bytes | None:
        try:
            return self.key_path.read_bytes()
        except FileNotFoundError:
            return None

    def save_key(self, key_pem: bytes) -> None:
        write_atomic(self.key_path, key_pem, 0o600)

    def save_certificate(self, cert_pem: bytes) -> None:
        write_atomic(self.cert_path, cert_pem, 0o644)

    # -- SEC-B --------------------------------------------------------------------------------

    def save_sec_b(self, sec_b: str) -> str:
        data = sec_b.encode("ascii")
        write_atomic(self.sec_b_path, data, 0o600)
        return hashlib.sha256(data).hexdigest()

    def load_sec_b(self, expected_sha256: str | None) -> str | None:
        """SEC-B if the file exists and is the one state.json names, else None."""
        try:
            data, _ = read_at_most(self.sec_b_path, MAX_SEC_B_FILE)
        except FileNotFoundError:
            return None
        if expected_sha256 is None or hashlib.sha256(data).hexdigest() != expected_sha256:
            return None
        return data.decode("ascii")

    def remove_sec_b(self) -> None:
        # No directory fsync: state.json (already durable) no longer names a sec-b digest, so a
        # file that a crash brings back is ignored by load_sec_b and removed at the next chance.
        self.sec_b_path.unlink(missing_ok=True)

    # -- authorized requesters ---------------------------------------------------------------------

    def authorized(self) -> list[dict[str, Any]]:
        raw = self._read_json(self.authorized_path)
        if raw is None:
            return []
        if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
            raise StateError(f"{self.authorized_path} is corrupt")
        return raw["keys"]

    def authorize(self, cert: bytes, *, name: str, source: str, clock=time.time,
                  rebuilt_at_start: bool = False) -> tuple[str, bool]:
        """Add a requester certificate (PEM or DER). Returns (pin, added); idempotent by pin.

        `rebuilt_at_start`: the caller re-applies this from a durable record at every start
        (agent/grant.py apply_grant), so the rename need not be made durable here (one fsync
        fewer on the enrollment path)."""
        pem = certificate_pem(cert)
        pin = pin_of_certificate(load_certificate(pem))
        entries = self.authorized()
        if any(entry.get("pin") == pin for entry in entries):
            return pin, False
        entries.append({"pin": pin, "name": name, "source": source, "added_at": clock(),
                        "certificate": pem.decode("ascii")})
        self._save_authorized(entries, sync_directory=not rebuilt_at_start)
        return pin, True

    def deauthorize(self, pin: str) -> bool:
        entries = self.authorized()
        kept = [entry for entry in entries if entry.get("pin") != pin]
        if len(kept) == len(entries):
            return False
        self._save_authorized(kept)
        return True

    def _save_authorized(self, entries: list[dict[str, Any]], sync_directory: bool = True) -> None:
        write_atomic(self.authorized_path, json.dumps({"keys": entries}).encode() + b"\n", 0o600,
                     sync_directory=sync_directory)
