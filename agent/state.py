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
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from firsttrust import limits
from firsttrust.common.files import ensure_private_dir, read_at_most, read_bounded, write_atomic
from firsttrust.identity import Identity, certificate_pem, load_certificate, pin_of_certificate

from .errors import AgentError

STATE_VERSION = 1
MAX_STATE_FILE = 1024 * 1024
MAX_SEC_B_FILE = 1024  # what load_sec_b reads of the file at most; a longer one fails its digest
MAX_IDENTITY_FILE = limits.MAX_IDENTITY_FILE  # identity.key, identity.crt: why, in firsttrust/limits.py


class StateError(AgentError):
    """The state directory is unreadable or its content is corrupt."""

    code = "state"


# The phases state.json may hold (AgentState.phase).
PHASES = frozenset({"unprovisioned", "provisioned", "enrolled"})


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

# The types state.json's fields may have, as json.loads makes them: exact types, so a bool (an
# int subclass) is no number and no count. Checked in one loop over what the file holds (a field
# it leaves out keeps its default); `phase` is also checked against PHASES.
_NUMBER_OR_NONE = (int, float, type(None))
_STR_OR_NONE = (str, type(None))
_DICT_OR_NONE = (dict, type(None))
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "phase": (str,),
    "source": (str,),
    "provisioned_at": _NUMBER_OR_NONE,
    "enroll_window": (int, type(None)),
    "window_expires_at": _NUMBER_OR_NONE,
    "srp_salt": _STR_OR_NONE,
    "srp_verifier": _STR_OR_NONE,
    "sec_b_sha256": _STR_OR_NONE,
    "failures": (int,),
    "password": (str,),
    "scrub": (dict,),
    "published": (dict,),
    "enrolled_at": _NUMBER_OR_NONE,
    "enrolled_via": _STR_OR_NONE,
    "enrollment": _DICT_OR_NONE,
    "repaired": _DICT_OR_NONE,
    "version": (int,),
}
assert set(_FIELD_TYPES) == set(_STATE_FIELDS), "every AgentState field has its accepted types"
# Inside the object fields (when not null), the keys the agent reads and their types: `status`,
# `provision` and agent/grant.py index them. A key left out is null, so optional keys accept None.
# The fields that hold bytes as lowercase hex (bytes.hex()), when not null.
_HEX_FIELDS = ("srp_salt", "srp_verifier", "sec_b_sha256")
_HEX_RE = re.compile(r"(?:[0-9a-f]{2})+")
_FIELD_SHAPES: tuple[tuple[str, tuple[tuple[str, tuple[type, ...]], ...]], ...] = (
    ("scrub", (("result", (str,)), ("detail", (str,)))),
    ("published", (("result", (str,)), ("detail", (str,)))),
    ("enrollment", (("pin", (str,)), ("name", (str,)), ("certificate", (str,)), ("ssh_key", _STR_OR_NONE),
                    ("account", _STR_OR_NONE))),
    ("repaired", (("at", _NUMBER_OR_NONE), ("actions", (list,)))),
)


def read_identity_file(path: Path) -> bytes | None:
    """identity.key or identity.crt: its content, or None if it does not exist.

    Raises:
        StateError: it cannot be read, or is larger than MAX_IDENTITY_FILE (read no further).
    """
    try:
        return read_bounded(path, MAX_IDENTITY_FILE, too_large=StateError)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


_JSON_TYPE_NAMES = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                    list: "an array", dict: "an object"}


def _wrong_type(path: Path, name: str, value: Any) -> StateError:
    """`PATH is corrupt (NAME must be ..., not ...)`: types only, never the value (a verifier)."""
    accepted = _FIELD_TYPES[name]
    expected = [_JSON_TYPE_NAMES[t] for t in accepted if not (t is int and float in accepted)]
    return StateError(f"{path} is corrupt ({name} must be {' or '.join(expected)}, not "
                      f"{_JSON_TYPE_NAMES.get(type(value), type(value).__name__)}); refusing to guess")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN in window_expires_at would keep the window open forever


# json.loads, less NaN, Infinity and -Infinity (which Python's json reads and no JSON has): a
# decoder made once, as framing.py's (json.loads with any option builds one per call).
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


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
        """Create the directory 0700, or make it so; refuse one another user owns
        (common.files.ensure_private_dir), before its mode is touched.

        Raises:
            StateError: it cannot be made, or another user owns it.
        """
        try:
            ensure_private_dir(self.path)
        except OSError as exc:
            raise StateError(f"cannot use the state directory {self.path}: {exc.strerror}; "
                             "refusing to keep secrets there") from None

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
            return _STRICT_JSON.decode(data.decode("utf-8"))
        except (ValueError, RecursionError):
            raise StateError(f"{path} is corrupt (not JSON); refusing to guess") from None

    def load(self) -> AgentState | None:
        raw = self._read_json(self.state_path)
        if raw is None:
            return None
        try:
            state = AgentState(**raw)
        except TypeError:
            raise StateError(f"{self.state_path} has unknown or missing fields") from None
        # The types, then the shapes of the objects, then the phase: ~2 us in all for a provisioned
        # state.json (plain loops over the tables; load runs three times per enrollment).
        for name, value in raw.items():  # every key is a field: AgentState(**raw) took them
            if type(value) not in _FIELD_TYPES[name]:
                raise _wrong_type(self.state_path, name, value)
        for name, shape in _FIELD_SHAPES:
            value = raw.get(name)
            if value is not None:
                for key, accepted in shape:
                    if type(value.get(key)) not in accepted:
                        raise StateError(f"{self.state_path} is corrupt ({name}.{key} is missing or of the "
                                         "wrong type); refusing to guess")
        for name in _HEX_FIELDS:  # bytes.fromhex of these would be a ValueError far from here
            value = raw.get(name)
            if value is not None and not _HEX_RE.fullmatch(value):
                raise StateError(f"{self.state_path} is corrupt ({name} is not hex); refusing to guess")
        if state.repaired is not None and not all(type(action) is str for action in state.repaired["actions"]):
            raise StateError(f"{self.state_path} is corrupt (repaired.actions holds a non-string); "
                             "refusing to guess")
        if state.version != STATE_VERSION:
            raise StateError(f"{self.state_path} is version {state.version}, this agent reads {STATE_VERSION}")
        if state.phase not in PHASES:
            raise StateError(f"{self.state_path} is corrupt (phase is none of {', '.join(sorted(PHASES))}); "
                             "refusing to guess")
        return state

    def save(self, state: AgentState) -> None:
        # A flat dict of the fields, not dataclasses.asdict: asdict deep-copies every nested dict
        # (~60 us, twice per enrollment: the charge and the commit) for json.dumps to read once.
        data = {name: getattr(state, name) for name in _STATE_FIELDS}
        # One line: with `indent` json.dumps runs its pure-Python encoder (its closures are a
        # reference cycle per call), without it the C one.
        write_atomic(self.state_path, json.dumps(data, sort_keys=True).encode() + b"\n", 0o600)

    # -- identity -----------------------------------------------------------------------------

    def load_identity_pem(self) -> tuple[bytes, bytes] | None:
        """identity.key and identity.crt as they are on disk, unparsed; None if either is missing.

        Raises:
            StateError: one cannot be read, or is larger than MAX_IDENTITY_FILE.
        """
        key_pem = read_identity_file(self.key_path)
        cert_pem = read_identity_file(self.cert_path) if key_pem is not None else None
        if key_pem is None or cert_pem is None:
            return None
        return key_pem, cert_pem

    def load_identity(self) -> Identity | None:
        pems = self.load_identity_pem()
        if pems is None:
            return None
        identity = Identity(*pems)
        try:
            # Compare pins, not key objects: cryptography 38 (Debian 12) has no key equality.
            if pin_of_certificate(identity.certificate) != _pin_of_key(identity.private_key):
                return None
        except ValueError as exc:
            raise StateError(f"the identity key or certificate in {self.path} is corrupt ({exc})") from None
        return identity

    def load_key_pem(self) -> bytes | None:
        return read_identity_file(self.key_path)

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
        if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list) or not all(
                isinstance(entry, dict) and isinstance(entry.get("pin"), str)
                and isinstance(entry.get("certificate"), str) for entry in raw["keys"]):
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
