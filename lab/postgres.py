"""A throwaway PostgreSQL server for the fleet store's tests and bench (docs/fleet.md).

initdb and pg_ctl refuse to run as root and CI runs as root, so as root the server runs as
`nobody` (uid and gids dropped by subprocess, as runuser would), in a temporary directory that user owns, listening on a Unix socket only
(listen_addresses = ''), and is stopped at the end. The test database's role is `nobody`'s
superuser role reached over the socket with `trust` for local connections only: no password
exists anywhere. Not root: the server runs as the current user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "nobody"


def available() -> str | None:
    """None, or why the PostgreSQL tests cannot run here."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({PG_BIN}; Debian package postgresql, `make test` installs it)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed (the `fleet` extra)"
    return None


@dataclass
class PgServer:
    directory: Path
    socket_dir: Path
    user: str
    port: int = 5432

    def url(self, database: str = "firsttrust") -> str:
        return f"postgresql:///{database}?host={self.socket_dir}&port={self.port}&user={self.user}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        drop: dict = {}
        if os.geteuid() == 0:  # as runuser -u nobody would, without needing util-linux's runuser
            entry = pwd.getpwnam(SERVER_USER)
            drop = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=120, cwd=self.directory,
                              env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.directory)}, **drop)

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-w", "-t", "60",
                  "-l", str(self.directory / "server.log"), "-o", f"-k {self.socket_dir} -p {self.port} -c listen_addresses=''",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-w", "-t", "60", "-m", mode, "stop",
                  check=False)

    def restart(self) -> None:
        self.stop("immediate")
        self.start()

    def createdb(self, name: str) -> None:
        self._run(str(PG_BIN / "psql") if (PG_BIN / "psql").exists() else "psql", "-h", str(self.socket_dir),
                  "-p", str(self.port), "-U", self.user, "-d", "postgres", "-c", f'CREATE DATABASE "{name}"')


@contextlib.contextmanager
def postgres_server() -> Iterator[PgServer]:
    directory = Path(tempfile.mkdtemp(prefix="firsttrust-pg-"))
    user = SERVER_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    os.chmod(directory, 0o755)  # the tests (root) reach the socket inside it
    socket_dir = directory / "socket"
    server = PgServer(directory, socket_dir, user)
    try:
        server._run("mkdir", "-m", "0755", str(socket_dir))
        server._run(str(PG_BIN / "initdb"), "-D", str(directory / "data"), "-U", user, "--auth-local=trust",
                    "--auth-host=reject", "-E", "UTF8", "--no-sync")
        server.start()
        server.createdb("firsttrust")
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
