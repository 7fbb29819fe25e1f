"""A batch's inputs and outputs as data: its targets (read from a targets file) and its report.

    targets = read_targets("rack7.csv")                      # CSV or JSON, secrets files beside it
    outcomes = await enroll_many(targets, concurrency=64)    # requester/library.py runs the batch
    report = BatchReport(outcomes)
    report.entries()                                         # what `firsttrust enroll --targets --json` prints
    report.failed, report.identity_changed                   # what its exit code says

The `firsttrust` command prints these (requester/cli.py); a library user gets the same checks and
the same report without it. Everything here is data: nothing connects to an appliance.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from firsttrust.common.files import read_bounded
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import DEFAULT_ENROLL_PORT, MAX_DECODED_BYTES
from firsttrust.errors import FirsttrustError, InvalidSecret

from .deploymentid import deployment_id_of
from .deployspec import InvalidDeploySpec, secrets_from_json
from .enroll import parse_address
from .errors import RequesterError
from .identitycheck import IdentityChanged
from .interrupts import Interrupted
from .truststore import NAME_RE, ApplianceRecord

# A targets file lists at most this many appliances; its columns are these.
MAX_TARGETS = 10_000
TARGET_COLUMNS = ("name", "address", "secrets")
# Targets and secrets files are small (a secrets file is ~100 bytes): the cap only keeps a wrong
# path (a disk image, /dev/zero) from being read into memory. The CLI's input cap (MAX_INPUT_BYTES).
MAX_FILE_BYTES = MAX_DECODED_BYTES
# A targets file's own cap: MAX_TARGETS rows of up to 1 KiB (a name, an address, a secrets path).
MAX_TARGETS_FILE_BYTES = MAX_TARGETS * 1024


class InvalidTargets(RequesterError):
    """A targets file (or a secrets file it names) cannot be read, or is not a valid list of
    appliances. The message names the file and row, never a secret."""

    code = "invalid_targets"


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    secrets: EnrollmentSecrets = field(repr=False)
    deployment_id: str | None = None  # from the secrets file (requester/deploymentid.py), if it has one


@dataclass(frozen=True)
class Outcome:
    target: Target
    record: ApplianceRecord | None
    error: FirsttrustError | None
    seconds: float
    already_pinned: bool = False

    @property
    def ok(self) -> bool:
        return self.record is not None

    @property
    def status(self) -> str:
        """"enrolled", "already-pinned" or "failed"."""
        return "failed" if self.record is None else "already-pinned" if self.already_pinned else "enrolled"


# --- the targets file ------------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose key appears twice is refused (json keeps the last silently)."""
    row = dict(pairs)
    if len(row) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return row


def read_targets(path: str, *, warn: Callable[[str], None] | None = None) -> list[Target]:
    """The appliances of a targets file: CSV with the header `name,address,secrets`, or a JSON
    list of objects with those keys; `secrets` is a secrets file's path, relative to the targets
    file's folder.

    Args:
        path: the targets file.
        warn: called with a one-line warning for each secrets file that group or others can
            access (the batch goes on); default: quiet.

    Returns:
        One Target per row, in the file's order, each with its secrets and deployment id loaded.

    Raises:
        InvalidTargets: the file or a secrets file cannot be read or is too big; a header, column,
            name or address is wrong; a row misses a value; a name appears twice; no row, or more
            than MAX_TARGETS.
        InvalidDeploySpec, InvalidSecret: a secrets file is not one (the message names it).
    """
    data = read_bounded(path, MAX_TARGETS_FILE_BYTES, what=f"targets file {path}", error=InvalidTargets)
    base = os.path.dirname(os.path.abspath(path))
    text = data.decode("utf-8-sig", "replace")  # -sig: a spreadsheet's byte order mark is not part of "name"
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text, object_pairs_hook=_unique_keys)
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                raise ValueError("a JSON targets file is a list of objects")
            if not all(isinstance(value, str) for row in rows for value in row.values()):
                # "address": 5 connected to 0.0.0.5, a list became a secrets path: strings only
                raise ValueError("each value of a JSON targets file is a string")
            columns = {key for row in rows for key in row}
        else:
            reader = csv.DictReader(io.StringIO(text))
            columns = set(reader.fieldnames or ())
            if text.strip() and not {"name", "address", "secrets"} & columns:
                raise ValueError("its first line is not the header name,address,secrets")
            rows = list(reader)
    except (ValueError, RecursionError, csv.Error) as exc:
        raise InvalidTargets(f"targets file {path}: {str(exc).splitlines()[0][:100]}") from None
    unknown = sorted(str(column)[:40] for column in columns - set(TARGET_COLUMNS))
    if unknown:  # a typo (adress) must not pass for a missing column, nor an extra one go unread
        raise InvalidTargets(f"targets file {path}: unknown column {unknown[0]!r} (the columns are "
                             f"{','.join(TARGET_COLUMNS)})")
    if not rows:
        raise InvalidTargets(f"targets file {path} lists no appliance")
    if len(rows) > MAX_TARGETS:
        raise InvalidTargets(f"targets file {path} lists more than {MAX_TARGETS} appliances")
    targets, names = [], set()
    for number, row in enumerate(rows, 1):
        if None in row:  # csv.DictReader's key for the fields beyond the header's: never read, so refused
            raise InvalidTargets(f"targets file {path}, row {number}: more fields than the header names")
        missing = [key for key in ("name", "address", "secrets") if not row.get(key)]
        if missing:
            raise InvalidTargets(f"targets file {path}, row {number}: missing {missing[0]}")
        where = f"targets file {path}, row {number}"
        name = _in_row(where, check_name, row["name"])
        if name in names:
            raise InvalidTargets(f"{where}: name {name!r} appears twice")
        names.add(name)
        secrets_path = os.path.join(base, str(row["secrets"]))
        address = _in_row(where, check_address, str(row["address"]))
        targets.append(Target(name, address, *_in_row(where, read_secrets_file, secrets_path)))
        if warn is not None and (message := loose_secrets_warning(secrets_path)):
            warn(message)
    return targets


def _in_row(where: str, check, value):
    """check(value), its error's message prefixed with the targets file and row it came from."""
    try:
        return check(value)
    except FirsttrustError as exc:
        raise type(exc)(f"{where}: {exc}") from None


def loose_secrets_warning(path: str) -> str | None:
    """The warning for a secrets file that group or others can access (None: it is private, or
    cannot be examined)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & 0o077:
        return f"secrets file {path} is accessible to group or others (mode {mode & 0o777:04o}); chmod 600 it"
    return None


# The checks of a row, which the `firsttrust` command applies to its arguments too: each raises
# `error` (the command passes its usage error) with a one-line message that never quotes a secret.


def read_secrets_file(path: str, error: type[FirsttrustError] = InvalidTargets) -> tuple[EnrollmentSecrets, str | None]:
    """The secrets and the deployment id (None in a file from before ids) of a secrets file.

    Raises:
        `error`: the file cannot be read or is too big. InvalidDeploySpec, InvalidSecret: it is
            not a secrets file (the message names it).
    """
    data = _read_file(path, "secrets file", error)
    try:
        return secrets_from_json(data), deployment_id_of(data)
    except (InvalidDeploySpec, InvalidSecret) as exc:
        raise type(exc)(f"secrets file {path}: {exc}") from None


def check_name(name: str, error: type[FirsttrustError] = InvalidTargets) -> str:
    """`name` if it can name a pin in the trust store (truststore.NAME_RE), else `error`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise error(f"invalid name {str(name)[:40]!r}: 1-64 letters, digits, '.', '_' or '-'")
    return name


def check_address(address: str, error: type[FirsttrustError] = InvalidTargets) -> str:
    """`address` if it is HOST or HOST:PORT, else `error`."""
    try:
        parse_address(address, DEFAULT_ENROLL_PORT)
    except (ValueError, TypeError):
        raise error(f"invalid address {str(address)[:80]!r}: expected HOST or HOST:PORT") from None
    return address


def _read_file(path: str, what: str, error: type[FirsttrustError] = InvalidTargets) -> bytes:
    return read_bounded(path, MAX_FILE_BYTES, what=f"{what} {path}", error=error)


# --- the report ------------------------------------------------------------------------------------

REPORT_COLUMNS = ("NAME", "ADDRESS", "STATUS", "PIN", "TIME")


@dataclass(frozen=True)
class BatchReport:
    """What became of each appliance of a batch, in the targets' order: one Outcome each (an
    appliance the run was stopped before finishing carries an `Interrupted` error)."""

    outcomes: Sequence[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        """The outcomes without a pin (failed or interrupted)."""
        return [o for o in self.outcomes if not o.ok]

    @property
    def already_pinned(self) -> int:
        return sum(o.status == "already-pinned" for o in self.outcomes)

    @property
    def interrupted(self) -> int:
        return sum(isinstance(o.error, Interrupted) for o in self.outcomes)

    @property
    def enrolled(self) -> int:
        return len(self.outcomes) - len(self.failed) - self.already_pinned

    @property
    def identity_changed(self) -> bool:
        """Whether an appliance pinned under its name turned out to be another one
        (requester/identitycheck.py): the CLI's exit code 3."""
        return any(isinstance(o.error, IdentityChanged) for o in self.failed)

    def entries(self) -> list[dict]:
        """One JSON-ready object per appliance: name, address, ok, status, pin, error (code and
        message, or None), seconds."""
        return [{"name": o.target.name, "address": o.target.address, "ok": o.ok, "status": status_of(o),
                 "pin": o.record.pin if o.record else None,
                 "error": {"code": o.error.code, "message": str(o.error)} if o.error else None,
                 "seconds": round(o.seconds, 3)} for o in self.outcomes]

    def rows(self) -> list[tuple[str, ...]]:
        """One text row per appliance, under REPORT_COLUMNS: the pin, or the error's code and message."""
        return [(o.target.name, o.target.address, status_of(o),
                 o.record.pin if o.record else f"{o.error.code}: {o.error}", f"{o.seconds * 1000:.0f} ms")
                for o in self.outcomes]

    def summary(self) -> str:
        """One line: how many enrolled, were already pinned, failed (and were interrupted)."""
        stopped = self.interrupted
        return (f"{self.enrolled} enrolled, {self.already_pinned} already pinned, "
                f"{len(self.failed) - stopped} failed" + (f", {stopped} interrupted" if stopped else ""))


def status_of(outcome: Outcome) -> str:
    """The report's status of one appliance: "enrolled", "already-pinned", "failed" or "interrupted"."""
    return "interrupted" if isinstance(outcome.error, Interrupted) else outcome.status
