"""Where `deploy` and `destroy` find vCenter when the command line does not say: the profile.

    $XDG_CONFIG_HOME/firsttrust/config.toml   (default ~/.config/firsttrust/config.toml;
                                              FIRSTTRUST_CONFIG names another file)
        vcenter = "https://vc.example/sdk"
        thumbprint = "AB:CD:...:EF"          # or ca_file = "/etc/ssl/vcenter-ca.pem"
        credentials = "/home/me/.config/firsttrust/vcenter.json"   # a 0600 {user, password} file

Per setting the command line wins, then the environment (FIRSTTRUST_VCENTER,
FIRSTTRUST_VCENTER_THUMBPRINT, FIRSTTRUST_VCENTER_CA_FILE, and for the account
FIRSTTRUST_VSPHERE_USER / FIRSTTRUST_VSPHERE_PASSWORD as before), then the file. The file holds a
trust anchor (the thumbprint says whom the password is sent to), so one that group or others
may write is refused, as ssh refuses such a config; and it never holds a password (a `password`
or `user` key is refused: the account comes from the environment or the credentials file, which
must be 0600). Unknown keys are refused too, so a typo is not silently ignored.
"""

from __future__ import annotations

import argparse
import os
import stat
import tomllib
from pathlib import Path
from typing import Mapping

from firsttrust.common.files import read_bounded_stat
from firsttrust.errors import FirsttrustError

CONFIG_ENV = "FIRSTTRUST_CONFIG"
# setting -> (the argparse destination, its environment variable)
SETTINGS = {
    "vcenter": ("vcenter", "FIRSTTRUST_VCENTER"),
    "thumbprint": ("thumbprint", "FIRSTTRUST_VCENTER_THUMBPRINT"),
    "ca_file": ("ca_file", "FIRSTTRUST_VCENTER_CA_FILE"),
    "credentials": ("credentials", None),
}
MAX_CONFIG_BYTES = 64 * 1024


class ProfileError(FirsttrustError):
    """The config file cannot be used: unreadable, writable by others, not TOML, or a key that
    is unknown or would hold a secret."""

    code = "profile"


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "firsttrust" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    """The file's settings; {} when it does not exist.

    Raises:
        ProfileError: see the class.
    """
    def writable_by_others(mode: int) -> None:
        if stat.S_IMODE(mode) & 0o022:
            raise ProfileError(f"the config file {path} is writable by group or others (mode "
                               f"{stat.S_IMODE(mode):04o}): it says which vCenter to trust; chmod go-w it")

    try:
        data, _ = read_bounded_stat(path, MAX_CONFIG_BYTES, what=f"the config file {path}", too_large=ProfileError,
                                    check=writable_by_others)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ProfileError(f"cannot read the config file {path}: {exc.strerror}") from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProfileError(f"the config file {path} is not TOML ({str(exc).splitlines()[0][:80]})") from None
    for key, value in document.items():
        if key in ("password", "user"):
            raise ProfileError(f"the config file {path} holds {key!r}: the vCenter account comes from "
                               f"FIRSTTRUST_VSPHERE_USER/_PASSWORD or a 0600 credentials file, never from here")
        if key not in SETTINGS:
            raise ProfileError(f"the config file {path} has an unknown key {key[:40]!r} "
                               f"(known: {', '.join(SETTINGS)})")
        if not isinstance(value, str) or not value:
            raise ProfileError(f"the config file {path}: {key} must be a non-empty string")
    return document


def host_name_ok(host: str | None) -> bool:
    """Whether a URL's host can be looked up at all: an empty DNS label (`a..b`) or one longer
    than 63 characters fails inside socket's IDNA encoding with a UnicodeError, deep in a
    connect, which no caller handles as the bad input it is."""
    if not host:
        return False
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def shown_url(url: str) -> str:
    """`url` as a message may quote it: everything between the scheme and the last `@` replaced
    by `***` (a password may hold '/', '?', '#' or '@' itself, so no parse of the authority can
    be trusted to find where it ends), at most 80 characters. A vCenter URL must not carry
    credentials (they are refused), but the message that says so, or any other, must not print
    them either."""
    scheme, separator, rest = url.partition("://")
    if not separator or "@" in scheme:
        scheme, separator, rest = "", "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return (scheme + separator + rest)[:80]


def apply(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    """Fill in what the command line left out, from the environment, then the config file.

    Raises:
        ProfileError: the file cannot be used, or vCenter or whom to trust there is given nowhere.
    """
    path = config_path(environ)
    config: dict[str, str] | None = None
    given_trust = bool(getattr(args, "thumbprint", None) or getattr(args, "ca_file", None))
    for setting, (dest, variable) in SETTINGS.items():
        if getattr(args, dest, None):
            continue
        if setting in ("thumbprint", "ca_file") and given_trust:
            continue  # the command line chose the other one: it wins as a whole
        value = environ.get(variable) if variable else None
        if not value:
            if config is None:
                config = read_config(path)
            value = config.get(setting)
        if value:
            setattr(args, dest, value)
            if setting in ("thumbprint", "ca_file"):
                given_trust = True
    if not getattr(args, "vcenter", None):
        raise ProfileError(f"which vCenter? give --vcenter URL, or set FIRSTTRUST_VCENTER, or vcenter in {path}")
    if not (getattr(args, "thumbprint", None) or getattr(args, "ca_file", None)):
        raise ProfileError(f"whom to trust at {shown_url(args.vcenter)}? give --thumbprint TP or --ca-file FILE, or set "
                           f"FIRSTTRUST_VCENTER_THUMBPRINT, or thumbprint in {path} "
                           f"(`firsttrust vcenter-thumbprint URL` reads it, trusting on first use)")
    if getattr(args, "thumbprint", None) and getattr(args, "ca_file", None):
        raise ProfileError("both a thumbprint and a CA file are set (environment or config file): keep one")
    return args
