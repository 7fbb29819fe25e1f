"""The requester's trust store: its own identity and one pinned record per appliance.

    $FIRSTTRUST_HOME (default $XDG_DATA_HOME/firsttrust, i.e. ~/.local/share/firsttrust)  0700
      identity.key    0600  the requester's private key, created once per home
      identity.crt    0644  its self-signed certificate (what appliances authorize)
      appliances/     0700  NAME.json per appliance: name, address, pin, certificate, SSH host
                            keys, API port, how and when it was enrolled
      pending/        0700  NAME.json per SRP enrollment that sent `finish` but has not seen
                            `enrolled` yet: the appliance it verified, kept to recover from
      .lock                 flock serialising writers across threads and processes

Records are written atomically (temp file, fsync, rename, fsync the directory: write_atomic in
common/files.py, the writer the agent uses too) under the lock, one file per appliance, so
parallel enrollments in many processes never lose or tear a record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from firsttrust import limits
from firsttrust.errors import FirsttrustError
from firsttrust.common.files import ensure_private_dir, fsync_directory, read_at_most, read_bounded, write_atomic
from firsttrust.identity import Identity, create_identity, load_certificate, normalize_pin, pin_of_certificate

from .errors import RequesterError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_RECORD_BYTES = 256 * 1024
MAX_IDENTITY_FILE = limits.MAX_IDENTITY_FILE  # identity.key, identity.crt: why, in firsttrust/limits.py
_thread_lock = threading.Lock()  # flock is per open file description; threads need their own


class TrustStoreError(RequesterError):
    """The trust store is unreadable, corrupt, or has no such appliance."""

    code = "trust_store"


class PinConflict(TrustStoreError):
    """The name is pinned to another key already (save with same_key_only): `pin` is that key."""

    def __init__(self, name: str, pin: str) -> None:
        super().__init__(f"{name} is pinned to another key ({pin})")
        self.name, self.pin = name, pin


class UnknownAppliance(TrustStoreError):
    code = "unknown_appliance"


@dataclass(frozen=True)
class ApplianceRecord:
    name: str
    address: str
    pin: str
    certificate: str  # PEM
    api_port: int
    ssh_host_keys: tuple[str, ...] = ()
    embodiment: str = "srp"  # "srp" | "injected-certificate" | "guest-command"
    enrolled_at: float = field(default_factory=time.time)
    deployment_id: str | None = None  # requester/deploymentid.py; None in records from before it existed

    def to_json(self) -> bytes:
        # The fields one level deep (asdict deep-copies), on one line (json.dumps with `indent`
        # runs the pure-Python encoder, whose closures are a reference cycle per call).
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["ssh_host_keys"] = list(self.ssh_host_keys)
        return json.dumps(data, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, source: Path) -> "ApplianceRecord":
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
            keys = raw.get("ssh_host_keys", ())
            if not isinstance(keys, list | tuple) or not all(isinstance(k, str) and k.strip() for k in keys):
                raise ValueError("ssh_host_keys must be a list of keys")
            raw["ssh_host_keys"] = tuple(keys)
            record = cls(**raw)
            _check_fields(record)
            if normalize_pin(record.pin) != pin_of_certificate(record.certificate.encode()):
                raise ValueError("pin does not match certificate")
        except (ValueError, RecursionError, TypeError, KeyError, AttributeError, FirsttrustError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:80]
            raise TrustStoreError(f"{source} is corrupt ({reason})") from None
        return record


def _check_fields(record: ApplianceRecord) -> None:
    """Each field of a record read back has its type and range (ValueError naming the field): a
    hand-edited or damaged record is refused as corrupt, not met later as a TypeError."""
    if not isinstance(record.pin, str) or not isinstance(record.certificate, str):
        raise ValueError("pin and certificate must be strings")
    if not isinstance(record.name, str) or not NAME_RE.fullmatch(record.name):
        raise ValueError("name is not a trust-store name")
    if not isinstance(record.address, str) or not record.address or not record.address.isprintable() \
            or " " in record.address:
        raise ValueError("address is not a host")
    if type(record.api_port) is not int or not 0 < record.api_port < 65536:
        raise ValueError("api_port is not a port")
    if type(record.enrolled_at) not in (int, float) or not math.isfinite(record.enrolled_at) \
            or not 0 <= record.enrolled_at < 1e11:
        raise ValueError("enrolled_at is not a time")
    if not isinstance(record.embodiment, str) or not record.embodiment.isprintable() or len(record.embodiment) > 40:
        raise ValueError("embodiment is not a name")
    if record.deployment_id is not None and (not isinstance(record.deployment_id, str)
                                             or not record.deployment_id.isprintable()
                                             or len(record.deployment_id) > 100):
        raise ValueError("deployment_id is not an id")


def checked_record_json(record: ApplianceRecord, where: Path) -> bytes:
    """`record` as stored, checked as a read will check it (its certificate, every field, its
    size): a pin written is a pin that can be read back, by any store.

    Raises:
        TrustStoreError: it would not read back (naming `record`'s name).
    """
    data = record.to_json()
    if len(data) > MAX_RECORD_BYTES:
        raise TrustStoreError(f"the record of {record.name!r} would be larger than {MAX_RECORD_BYTES} bytes")
    ApplianceRecord.from_json(data, where)
    load_certificate(record.certificate.encode())
    return data


def _spki(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _named(record: ApplianceRecord, name: str, path: Path) -> ApplianceRecord:
    """A record read from NAME.json must be NAME's: a copy under another name (a backup,
    app-01-old.json) would otherwise be shown, used and removed as the appliance it names."""
    if record.name != name:
        raise TrustStoreError(f"{path} is corrupt (it holds the record of {str(record.name)[:80]!r}, "
                              f"not of {name!r})")
    return record


def default_home() -> Path:
    if os.environ.get("FIRSTTRUST_HOME"):
        return Path(os.environ["FIRSTTRUST_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "firsttrust"


# Present while the identity's two files are being created (TrustStore.identity).
CREATING = ".identity.creating"


class TrustStore:
    remote = False  # a store over the network (PgStore): the library calls it off the event loop
    def __init__(self, home: Path | None = None) -> None:
        self.home = Path(home) if home else default_home()
        self.appliances = self.home / "appliances"
        self.pending = self.home / "pending"
        self.key_path = self.home / "identity.key"
        self.cert_path = self.home / "identity.crt"

    _checked = False  # the directories' owner and mode, once per TrustStore: every locked() comes here

    def _ensure(self) -> None:
        if self._checked and all(os.path.isdir(d) for d in (self.home, self.appliances, self.pending)):
            return
        if self.home.exists() and not self.home.is_dir():
            raise TrustStoreError(f"the trust store {self.home} is not a directory (FIRSTTRUST_HOME)")
        for directory in (self.home, self.appliances, self.pending):
            # 0700 and ours: a directory another user owns, or one others may write, could hold
            # pins and a key they planted (ensure_private_dir refuses the one, tightens the other).
            try:
                ensure_private_dir(directory)
            except OSError as exc:
                raise TrustStoreError(f"cannot use the trust store directory {directory}: "
                                      f"{exc.strerror or type(exc).__name__}") from None
        self._checked = True

    def _remove_stale_temps(self) -> None:
        """Temp files a killed writer left (write_atomic's names), of the files written under
        this lock only: every such writer holds it from creating its temp file to renaming it,
        so none is in flight. In the home, only the identity's: other files there (fleet.json)
        are written under another lock, and their writers' temp files may be in flight."""
        for directory in (self.appliances, self.pending):
            for leftover in directory.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
        for name in (self.key_path.name, self.cert_path.name, CREATING):
            for leftover in self.home.glob(f".{name}.*.tmp"):
                leftover.unlink(missing_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self._ensure()
        with _thread_lock, open(self.home / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the requester's own identity ------------------------------------------------------------

    def identity(self, subject: str = "firsttrust-requester") -> Identity:
        """The requester's identity, created on first use (once, even under concurrency), with
        `subject` as its certificate's common name (a fleet host's names the host).

        Its two files are written one after the other under a marker (CREATING): a creation
        killed between them left the marker, so the half it left was never handed to anyone and
        is made again. Without the marker, half an identity is damage, refused (never replaced)."""
        with self.locked():
            creating = self.home / CREATING
            if os.path.lexists(creating):  # a creation killed before it finished: nothing used it yet
                for path in (self.key_path, self.cert_path):
                    path.unlink(missing_ok=True)
                creating.unlink()
                fsync_directory(self.home)
            self._remove_stale_temps()
            try:
                identity = Identity(self._read_identity_file(self.key_path), self._read_identity_file(self.cert_path))
                identity.certificate  # noqa: B018 - parse now, fail clearly if corrupt
                if _spki(identity.private_key.public_key()) != _spki(identity.certificate.public_key()):
                    raise TrustStoreError(f"{self.key_path} is not the key of {self.cert_path}: the requester identity "
                                          "is refused, never replaced; restore both files from one backup")
                return identity
            except FileNotFoundError:
                # Created only when neither file is there: a key without its certificate (or the
                # reverse) is this requester's identity damaged, and a new key would silently
                # end every appliance's trust in it.
                present = [path for path in (self.key_path, self.cert_path) if os.path.lexists(path)]
                if present:
                    (missing,) = {self.key_path, self.cert_path} - set(present)
                    raise TrustStoreError(f"{missing} is missing but {present[0].name} is there: the requester "
                                          "identity is refused, never replaced; restore it from a backup") from None
            except (ValueError, TypeError, AssertionError):  # cryptography's refusals; not an EC key
                raise TrustStoreError(f"the requester identity in {self.home} is corrupt") from None
            identity = create_identity(subject)
            write_atomic(creating, b"", 0o600)
            write_atomic(self.key_path, identity.key_pem, 0o600)
            write_atomic(self.cert_path, identity.cert_pem, 0o644)
            creating.unlink()
            fsync_directory(self.home)
            return identity

    @staticmethod
    def _read_identity_file(path: Path) -> bytes:
        """identity.key or identity.crt, read no further than MAX_IDENTITY_FILE.

        Raises:
            FileNotFoundError: there is none (the caller creates the identity).
            TrustStoreError: it cannot be read, or is larger than MAX_IDENTITY_FILE (naming it).
        """
        try:
            return read_bounded(path, MAX_IDENTITY_FILE, too_large=TrustStoreError)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise TrustStoreError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None

    # -- appliance records ---------------------------------------------------------------------

    def _record_path(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise TrustStoreError("an appliance name is 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
        return self.appliances / f"{name}.json"

    def save(self, record: ApplianceRecord, *, same_key_only: bool = False) -> None:
        """Pin `record`. `same_key_only`: only if its name is unpinned or pinned to the same key,
        decided under the lock (a compare-and-set: of two processes pinning one name to two keys,
        one gets PinConflict), else PinConflict and nothing written."""
        self._write(self._record_path(record.name), record, check=self._same_key(record) if same_key_only else None)

    def _same_key(self, record: ApplianceRecord) -> Callable[[], None]:
        """The compare-and-set's compare, run under the lock: PinConflict unless `record`'s name
        is unpinned or pinned to `record`'s key."""
        def check() -> None:
            try:
                current = self.get(record.name)
            except UnknownAppliance:
                return
            if current.pin != record.pin:
                raise PinConflict(record.name, current.pin)
        return check

    def _write(self, path: Path, record: ApplianceRecord, *, then_remove: Path | None = None,
               check: Callable[[], None] | None = None) -> None:
        """Write `record` to `path`, then remove `then_remove`, both under the lock (after
        `check`, if given). The record is checked as `get` will read it (its certificate, every
        field, its size) first: a pin written is a pin that can be read back.

        Raises:
            TrustStoreError: the record would not read back, or the file cannot be written (naming it).
        """
        data = checked_record_json(record, path)
        with self.locked():
            if check is not None:
                check()
            try:
                write_atomic(path, data, 0o600)
                if then_remove is not None:
                    then_remove.unlink(missing_ok=True)
            except OSError as exc:
                raise TrustStoreError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None

    def get(self, name: str) -> ApplianceRecord:
        path = self._record_path(name)
        try:
            data, _ = read_at_most(path, MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            raise UnknownAppliance(f"no pinned appliance named {name!r} in {self.home}") from None
        except OSError as exc:  # a directory where the record belongs, a FIRSTTRUST_HOME that is a file
            raise TrustStoreError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        return _named(ApplianceRecord.from_json(data, path), name, path)

    def list(self) -> list[ApplianceRecord]:
        """Every readable record; corrupt ones are skipped (`scan` names them)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[ApplianceRecord], list[TrustStoreError]]:
        """Every record, and one error (naming the file) per record that cannot be read."""
        if self.home.exists() and not self.home.is_dir():
            raise TrustStoreError(f"the trust store {self.home} is not a directory (FIRSTTRUST_HOME)")
        if not self.appliances.is_dir():
            if self.appliances.exists():  # not "nothing pinned": the records' place is something else
                raise TrustStoreError(f"{self.appliances} is not a directory: the trust store is damaged")
            return [], []
        records, problems = [], []
        try:  # glob swallows EACCES: an unreadable appliances/ listed as "no pinned appliances"
            names = sorted(entry.name for entry in os.scandir(self.appliances) if entry.name.endswith(".json"))
        except OSError as exc:
            raise TrustStoreError(f"cannot read {self.appliances}: {exc.strerror or type(exc).__name__}") from None
        for file_name in names:
            path = self.appliances / file_name
            try:
                records.append(self.get(file_name[:-len(".json")]))
            except TrustStoreError as exc:  # each one names its file (a name the store refuses did not)
                problems.append(exc if str(path) in str(exc) else TrustStoreError(f"{path}: {exc}"))
        return records, problems

    def remove(self, name: str) -> None:
        path = self._record_path(name)
        with self.locked():
            path.unlink(missing_ok=True)

    # -- pending enrollments (docs/protocol.md, recovery) ---------------------------------------

    def _pending_path(self, name: str) -> Path:
        return self.pending / self._record_path(name).name

    def save_pending(self, record: ApplianceRecord) -> None:
        """Keep a verified appliance whose `enrolled` has not arrived yet (before `finish`)."""
        self._write(self._pending_path(record.name), record)

    def get_pending(self, name: str) -> ApplianceRecord | None:
        path = self._pending_path(name)
        try:
            data, _ = read_at_most(path, MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TrustStoreError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        return _named(ApplianceRecord.from_json(data, path), name, path)

    def promote(self, record: ApplianceRecord, *, same_key_only: bool = False) -> None:
        """Pin `record` and drop its pending entry, under one lock: the pin is written first, so
        a crash in between leaves a pin plus a pending entry that the next run removes.
        `same_key_only` as in `save` (PinConflict, and the pending entry stays)."""
        self._write(self._record_path(record.name), record, then_remove=self._pending_path(record.name),
                    check=self._same_key(record) if same_key_only else None)
