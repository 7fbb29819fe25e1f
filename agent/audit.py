"""Audit events: one structured record per thing that matters (provisioned, scrub-failed, ...).

Every event has a stable name (FIRSTTRUST_EVENT) and fields; never a secret. Without journald
the events go to stderr as one `firsttrust-agent: event=NAME key=value ...` line each.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("firsttrust.audit")

EVENTS = ("provisioned", "enroll-attempt", "enroll-failed", "locked-out", "enrolled", "key-authorized",
          "key-removed", "rotated", "scrub-failed")


def _format(name: str, fields: dict[str, Any]) -> str:
    parts = [f"event={name}"] + [f"{k}={v}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def event(name: str, message: str, **fields: Any) -> None:
    """Record audit event `name` (one of EVENTS) with a one-line `message` and fields."""
    if name not in EVENTS:
        raise ValueError(f"unknown audit event {name!r}")
    line = f"firsttrust-agent: {message} [{_format(name, fields)}]"
    if log.handlers:  # the service attaches its journal handler here
        log.info(line, extra={"firsttrust_event": name, "firsttrust_fields": fields})
    else:
        print(line, file=sys.stderr, flush=True)
