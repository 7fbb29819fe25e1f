"""The guest account good for one job (issue 27): what guest operations log in with.

The requester generates a password per appliance and injects it as `firsttrust.guest-password`
(a deployment property like SEC-A: never argv, never a log). At first boot the agent records the
account here, as a salted scrypt hash in <state>/guest-account.json (0600), never the password:

    {"account": "firsttrust-guest", "n": 16384, "r": 8, "p": 1, "salt": HEX, "hash": HEX,
     "expires_at": EPOCH, "locked": false}

On an appliance the account is to be a real one (its password set with chpasswd like the SEC-A
account, its only privileged path `firsttrust-agent authorize`): not built yet, see
docs/deployment.md "Not built yet". In the lab no Unix account is made and the lab's guest side
(lab/guestops.py) checks a login with `check` against this record. `lock` ends it: once locked,
or once the enrollment window closed (`expires_at`), no login is accepted.

Stdlib only (hashlib.scrypt, Python 3.11), as everything agent-side.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path

from firsttrust.common.files import write_atomic
from firsttrust.deployment import GUEST_ACCOUNT

FILE_NAME = "guest-account.json"
DEFAULT_ACCOUNT = GUEST_ACCOUNT
_N, _R, _P = 1 << 14, 8, 1


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)


def record(state_dir: Path, password: str, *, expires_at: float, account: str = DEFAULT_ACCOUNT) -> None:
    """Record the guest account (the password as a salted hash only)."""
    salt = os.urandom(16)
    data = {"account": account, "n": _N, "r": _R, "p": _P, "salt": salt.hex(),
            "hash": _hash(password, salt, _N, _R, _P).hex(), "expires_at": expires_at, "locked": False}
    write_atomic(Path(state_dir) / FILE_NAME, json.dumps(data, sort_keys=True).encode())


def load(state_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(state_dir) / FILE_NAME).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def check(state_dir: Path, account: str, password: str, *, clock=time.time) -> bool:
    """Whether this login is accepted: the recorded account, its password, not locked nor expired."""
    data = load(state_dir)
    if not data or data.get("locked") or clock() >= float(data.get("expires_at") or 0):
        return False
    try:
        expected = bytes.fromhex(data["hash"])
        computed = _hash(password, bytes.fromhex(data["salt"]), int(data["n"]), int(data["r"]), int(data["p"]))
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(account.encode(), str(data.get("account")).encode()) and \
        hmac.compare_digest(expected, computed)


def lock(state_dir: Path) -> bool:
    """Lock the account for good (idempotent); False when there is none."""
    data = load(state_dir)
    if data is None:
        return False
    if not data.get("locked"):
        data.update(locked=True, hash="", salt="")
        write_atomic(Path(state_dir) / FILE_NAME, json.dumps(data, sort_keys=True).encode())
    return True
