"""The deployment id: which deployment an appliance, its secrets file and its pin belong to.

A random, non-secret name for one deployment of one appliance (`fd-` and 16 hex digits), made
by `deploy` with the appliance's secrets and kept in three places: the secrets file
(`deployment_id`, beside sec_a and sec_b), the VM (extraConfig DEPLOYMENT_ID_KEY, outside
guestinfo: the guest has no use for it), and the pin record (truststore.ApplianceRecord). It
answers two questions without touching the appliance: "are these secrets for the appliance that
is pinned under this name?" (enroll) and "is this VM the one this secrets file was made for?"
(deploy's re-run, destroy), so neither acts on someone else's VM of the same name.

Nothing derived from SEC-A or SEC-B is stored anywhere (a hash of an operator-chosen secret
would be an offline-guessing target): the id is drawn independently of them. Secrets files and
pin records written before it existed have none; they stay readable, and the checks that need
an id fall back to asking the appliance (identitycheck.py).
"""

from __future__ import annotations

import json
import re
import secrets as random

DEPLOYMENT_ID_KEY = "firsttrust.deploymentId"
DEPLOYMENT_ID_FIELD = "deployment_id"
DEPLOYMENT_ID_RE = re.compile(r"fd-[0-9a-f]{16}")
# 64 random bits: ids are compared, never guessed at (nothing is granted for knowing one), and
# two deployments colliding among a million has a chance of about 3e-8.
DEPLOYMENT_ID_BYTES = 8


def new_deployment_id() -> str:
    return "fd-" + random.token_hex(DEPLOYMENT_ID_BYTES)


def valid_deployment_id(value: object) -> bool:
    return isinstance(value, str) and DEPLOYMENT_ID_RE.fullmatch(value) is not None


def deployment_id_of(secrets_file_content: bytes) -> str | None:
    """The id in a secrets file's content (already read and checked by deployspec.secrets_from_json),
    or None for a file written before ids existed."""
    try:
        document = json.loads(secrets_file_content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    value = document.get(DEPLOYMENT_ID_FIELD) if isinstance(document, dict) else None
    return value if valid_deployment_id(value) else None


def vm_deployment_id(extra_config) -> str | None:
    """The id a VM carries, from its extraConfig entries (the last entry of the key wins, as
    deployplan.missing_config reads them)."""
    found = None
    for key, value in extra_config:
        if key == DEPLOYMENT_ID_KEY:
            found = value
    return found if valid_deployment_id(found) else None
