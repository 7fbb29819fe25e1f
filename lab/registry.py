"""<lab root>/lab.json: which appliances a lab root runs, so that separate invocations
(`firsttrust-lab up`, then `status`, then `down`) find each other's agents.

    {"version": 1,
     "appliances": {"app-01": {"directory": ..., "enroll_port": ..., "api_port": ..., "pid": ..., ...}},
     "requester_home": "<root>/requester"}            # the demo's trust store, when it made one

Read-modify-write happens under an flock on <root>/lab.lock (threads of one process additionally
under a threading lock: flock is per open file description); the file is replaced atomically.
It holds paths, ports and PIDs only, never a secret.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from .errors import RegistryError

REGISTRY_VERSION = 1
_thread_lock = threading.RLock()


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / "lab.json"

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {"version": REGISTRY_VERSION, "appliances": {}}
        except (OSError, ValueError, RecursionError) as exc:
            raise RegistryError(f"{self.path} is unreadable or not JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict) or data.get("version") != REGISTRY_VERSION \
                or not isinstance(data.get("appliances"), dict):
            raise RegistryError(f"{self.path} is not a version {REGISTRY_VERSION} lab registry")
        return data

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, Any]]:
        """Yield the registry to change in place; it is written back when the block ends."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _thread_lock, open(self.root / "lab.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.load()
            yield data
            self._store(data)

    def _store(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".lab.json.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
