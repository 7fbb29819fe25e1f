"""What the API reports about the host (agent/api.py), in a module of its own so that the
service can describe the API without importing it (agent/apidoor.py)."""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

from .sshkeys import HOST_KEY_GLOB


class ApiInfo(NamedTuple):  # not a frozen dataclass: 0.1 ms to define, not 0.8 (agent start-up)
    """What the API reports about the host, injectable for tests.

    Attributes:
        host_key_glob: where the SSH host public keys are (OpenSSH's default locations).
        clock: the time source for `added_at`.
    """

    host_key_glob: str = HOST_KEY_GLOB
    clock: Callable[[], float] = time.time
