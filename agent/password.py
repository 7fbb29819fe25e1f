"""Set the appliance account's password from SEC-A with chpasswd, over stdin only."""

from __future__ import annotations

import pwd
import re
import subprocess

from .errors import AgentError

CHPASSWD_TIMEOUT = 30.0  # PAM modules may be slow at first boot; a stall must not hang provisioning
_ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class PasswordError(AgentError):
    """The account's password could not be set."""

    code = "password"


def set_password(account: str, password: str, *, chpasswd: str = "chpasswd",
                 timeout: float = CHPASSWD_TIMEOUT) -> None:
    """Set `account`'s password. The password goes to chpasswd's stdin, never to argv.

    Raises:
        PasswordError: unknown account, chpasswd missing, failing or stalling. The message
            never contains the password.
    """
    if not _ACCOUNT_RE.fullmatch(account):
        raise PasswordError(f"invalid account name {account[:40]!r}")
    try:
        pwd.getpwnam(account)
    except KeyError:
        raise PasswordError(f"account {account!r} does not exist") from None
    # chpasswd reads `account:password` lines and splits each at its first ':' only, so a ':' in
    # the password is kept (tests/unit/test_provision.py checks the hash); a line break is not.
    if "\n" in password or "\r" in password:
        raise PasswordError("the password contains a line break, which chpasswd cannot take")
    try:
        result = subprocess.run([chpasswd], input=f"{account}:{password}\n".encode(), capture_output=True,
                                timeout=timeout, check=False)
    except FileNotFoundError:
        raise PasswordError(f"{chpasswd} is not installed") from None
    except subprocess.TimeoutExpired:
        raise PasswordError(f"{chpasswd} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").replace(password, "<redacted>").strip()
        first = detail.splitlines()[0][:200] if detail else "no message"
        raise PasswordError(f"{chpasswd} failed for {account!r} (exit {result.returncode}): {first}")
