"""Audit events: one structured record per thing that matters (provisioned, scrub-failed, ...).

Every event has a stable name (FIRSTTRUST_EVENT), a stable journal MESSAGE_ID, and fields; never
a secret. With journald (agent/systemd_glue.setup_logging attaches a JournalHandler to this
logger) each field also becomes a journal field, so

    journalctl -t firsttrust-agent MESSAGE_ID=ea17a7ca10464565ae3c3d2404e0033d   # enroll-failed
    journalctl -t firsttrust-agent FIRSTTRUST_EVENT=enrolled FIRSTTRUST_PEER=10.0.0.5:51234

select events without parsing text. Without journald the events go to stderr as one
`firsttrust-agent: MESSAGE [event=NAME key=value ...]` line each.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from typing import Any

from firsttrust.common.cli import one_line

log = logging.getLogger("firsttrust.audit")
# Audit events are INFO or above: never dropped by a default WARNING level when a handler is attached.
log.setLevel(logging.INFO)

# The journal's MESSAGE_ID for each event: 128-bit, generated once (uuid4) and never changed,
# since operators filter and alert on them (sd-id128(3), "journalctl MESSAGE_ID=..."). A new
# event gets a new row with a new random ID; a renamed event keeps its ID.
MESSAGE_IDS: dict[str, str] = {
    "provisioned": "d239307abe9344cfafc3c2c249135cac",
    "enroll-attempt": "e9644ba42afb4a65b71e1f1865fa3686",
    "enroll-failed": "ea17a7ca10464565ae3c3d2404e0033d",
    "locked-out": "4f4f37c1f47f4e84bc3323d7bb7690c2",
    "enrolled": "77e7f7168897430ab5efa69b366b83eb",
    "key-authorized": "d5fc7f98a6a4432da7af6f7b18273bd0",
    "key-removed": "3325e06adfeb4472b2af74c4b9e2c120",
    "rotated": "a1066a6a271e46ca967b098106f2930a",
    "scrub-failed": "24f90ff41a5545ea9b6f8944c69f0c3e",
    "repaired": "3562f6f22a484540a6443dca12e430e2",
    "door-summary": "46af7ce5aa7b40ff843d582bfc348187",
}
EVENTS = tuple(MESSAGE_IDS)

# Events an operator should see without asking: journal PRIORITY=4 (warning); the rest are info.
WARNING_EVENTS = frozenset({"enroll-failed", "locked-out", "scrub-failed", "repaired"})

REDACTED = "<redacted>"
# Callers never pass a secret; this is the net under that rule. Any field whose name looks like
# one (sec_a, sec_b, secret, password, passphrase, ...) is logged as REDACTED, whatever its value.
# (Patterns, compiled and cached by re at first use: not at import, which is the agent's start.)
_SECRET_FIELD = r"(?i)secret|sec_?[ab](?![a-z0-9])|passw|passphrase"

FIELD_PREFIX = "FIRSTTRUST_"
# Journal field names: A-Z, 0-9 and "_", not starting with "_" or a digit, at most 64 bytes
# (systemd.journal-fields(7), journal_field_valid() in journald).
_MAX_FIELD_NAME = 64
_INVALID_FIELD_CHARS = r"[^A-Z0-9_]"


def redact(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with the value of every secret-looking field replaced by REDACTED."""
    return {key: (REDACTED if value is not None and _secret_looking(key) else value)
            for key, value in fields.items()}


# Field names are the keyword arguments of the event() calls in the code, a few dozen: each one's
# verdict and journal name are computed once (re's own cache still costs ~1 us a lookup, and an
# enrollment's events went through ~25 of them; bench/README.md, issue 29).
@functools.lru_cache(maxsize=256)
def _secret_looking(key: str) -> bool:
    return re.search(_SECRET_FIELD, key) is not None


def _format(name: str, fields: dict[str, Any]) -> str:
    parts = [f"event={name}"] + [f"{k}={one_line(str(v))}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


@functools.lru_cache(maxsize=256)
def journal_field_name(key: str) -> str:
    """FIRSTTRUST_<KEY>, made a valid journal field name."""
    return (FIELD_PREFIX + re.sub(_INVALID_FIELD_CHARS, "_", key.upper()))[:_MAX_FIELD_NAME]


def journal_fields(name: str, fields: dict[str, Any]) -> dict[str, str]:
    """The structured journal fields of event `name`: MESSAGE_ID, FIRSTTRUST_EVENT and one
    FIRSTTRUST_<KEY> per field that is not None (so FIRSTTRUST_PEER, FIRSTTRUST_OUTCOME, ...).

    systemd.journal.JournalHandler sends every attribute of the log record as a field and
    journald keeps the valid (upper-case) names, so these go in the log call's `extra=`.
    """
    return _journal_fields(name, redact(fields))


def _journal_fields(name: str, redacted: dict[str, Any]) -> dict[str, str]:
    out = {journal_field_name(k): str(v) for k, v in redacted.items() if v is not None}
    out["FIRSTTRUST_EVENT"] = name
    out["MESSAGE_ID"] = MESSAGE_IDS[name]
    return out


def event(name: str, message: str, **fields: Any) -> None:
    """Record audit event `name` (one of EVENTS) with a one-line `message` and fields.

    Raises:
        ValueError: `name` is not one of EVENTS.
    """
    if name not in MESSAGE_IDS:
        raise ValueError(f"unknown audit event {name!r}")
    fields = redact(fields)
    text = f"{one_line(message)} [{_format(name, fields)}]"
    if log.handlers:  # the service attaches its journal (or stderr) handler here
        level = logging.WARNING if name in WARNING_EVENTS else logging.INFO
        if log.isEnabledFor(level):
            extra: dict[str, Any] = _journal_fields(name, fields)  # `fields` is redacted already
            extra.update(firsttrust_event=name, firsttrust_fields=fields)
            # The record made here, not by log.log, which walks the stack to find its caller:
            # that is always this function (the journal's CODE_FILE and CODE_FUNC), and the walk
            # was most of an event's cost, two events per enrollment (bench/README.md).
            log.handle(log.makeRecord(log.name, level, __file__, _EVENT_LINE, text, (), None, "event", extra))
    else:
        print(f"firsttrust-agent: {text}", file=sys.stderr, flush=True)


_EVENT_LINE = event.__code__.co_firstlineno
