"""What the API reports about the host (agent/api.py), in a module of its own so that the
service can describe the API without importing it (agent/apidoor.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .sshkeys import HOST_KEY_GLOB


@dataclass(frozen=True)
class ApiInfo:
    """What the API reports about the host, injectable for tests.

    Attributes:
        host_key_glob: where the SSH host public keys are (OpenSSH's default locations).
        clock: the time source for `added_at`.
    """

    host_key_glob: str = HOST_KEY_GLOB
    clock: Callable[[], float] = time.time
