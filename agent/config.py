"""The agent's own configuration: /etc/firsttrust/agent.toml (every key optional).

    account = "admin"                      # whose password SEC-A becomes
    state_dir = "/var/lib/firsttrust"      # 0700, the agent's private state
    public_certificate = "/etc/firsttrust/appliance.crt"
    max_failures = 10                      # failed SRP attempts before lockout (1..10)
    enroll_window = "24h"                  # default window; the firsttrust.enroll-window property overrides
    ssh_host_keys = "/etc/ssh/ssh_host_*_key.pub"   # host keys reported at enrollment (glob)
    penalty_exempt = ["192.0.2.0/24"]      # sources that never accrue a front-door penalty
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from firsttrust.common.files import read_bounded
from firsttrust.deployment import DEFAULT_ENROLL_WINDOW, InvalidDuration, parse_duration

from .errors import AgentError
from .sshkeys import HOST_KEY_GLOB

DEFAULT_CONFIG = Path("/etc/firsttrust/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/firsttrust")
DEFAULT_PUBLIC_CERT = Path("/etc/firsttrust/appliance.crt")
# Lockout after at most 10 failed SRP attempts (configurable lower, never higher): at 160-bit
# secrets one guess is worth 2^-160, so 10 costs nothing to legitimate retries.
MAX_FAILURES_CEILING = 10
MAX_CONFIG_BYTES = 64 * 1024
# penalty_exempt entries: each source is checked against every one (cached per source).
MAX_EXEMPT_NETWORKS = 64

_ACCOUNT_PATTERN = r"[a-z_][a-z0-9_-]{0,31}"  # compiled by re at first use


class ConfigError(AgentError):
    """The agent's configuration file is unreadable or invalid."""

    code = "config"


@dataclass(frozen=True)
class AgentConfig:
    account: str = "admin"
    state_dir: Path = DEFAULT_STATE_DIR
    public_certificate: Path = DEFAULT_PUBLIC_CERT
    max_failures: int = MAX_FAILURES_CEILING
    enroll_window: int = DEFAULT_ENROLL_WINDOW
    # Where the appliance's SSH host public keys are (a glob), reported to the requester so that
    # ssh needs no trust on first use.
    ssh_host_keys: str = HOST_KEY_GLOB
    # Networks whose sources never accrue a front-door penalty (agent/frontdoor.py), for
    # requesters behind one shared NAT address; OpenSSH's PerSourcePenaltyExemptList. They are
    # still held to every cap and deadline. As ipaddress networks.
    penalty_exempt: tuple = ()

    def with_state_dir(self, state_dir: Path, explicit_public: bool) -> "AgentConfig":
        """--state-dir on the command line. Unless the config names a public certificate path,
        the certificate goes beside the state: a test or container run must not write /etc."""
        public = self.public_certificate if explicit_public else Path(state_dir) / "appliance.crt"
        return replace(self, state_dir=Path(state_dir), public_certificate=public)


def load_config(path: Path | None = None, state_dir: Path | None = None) -> AgentConfig:
    """Read the configuration. A missing default file means all defaults; a missing file that
    was named explicitly is an error.

    Raises:
        ConfigError: unreadable, not TOML, unknown key, or a value of the wrong type or range.
    """
    explicit = path is not None
    path = Path(path) if path else DEFAULT_CONFIG
    values: dict = {}
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES, what=f"config file {path}", too_large=ConfigError)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        data = b""
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if data:
        import tomllib  # only when there is a config file: ~3 ms of the agent's start-up otherwise

        try:
            values = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {str(exc).splitlines()[0]}") from None
    config = _from_values(values, path)
    if state_dir is not None:
        config = config.with_state_dir(state_dir, explicit_public="public_certificate" in values)
    return config


def _plain_path(value: str) -> bool:
    """No NUL (no system call takes it) and no other control character (a path in a log line)."""
    return not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in value)


def _from_values(values: dict, path: Path) -> AgentConfig:
    known = {"account", "state_dir", "public_certificate", "max_failures", "enroll_window", "ssh_host_keys",
             "penalty_exempt"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}")
    config = AgentConfig()
    if "account" in values:
        if not isinstance(values["account"], str) or not re.fullmatch(_ACCOUNT_PATTERN, values["account"]):
            raise ConfigError(f"{path}: account must be a login name")
        config = replace(config, account=values["account"])
    if "ssh_host_keys" in values:
        value = values["ssh_host_keys"]
        if not isinstance(value, str) or not value.startswith("/") or not _plain_path(value):
            raise ConfigError(f"{path}: ssh_host_keys must be an absolute path or glob")
        config = replace(config, ssh_host_keys=value)
    for key in ("state_dir", "public_certificate"):
        if key in values:
            if not isinstance(values[key], str) or not values[key].startswith("/") or not _plain_path(values[key]):
                raise ConfigError(f"{path}: {key} must be an absolute path (no control characters)")
            config = replace(config, **{key: Path(values[key])})
    if "max_failures" in values:
        value = values["max_failures"]
        if type(value) is not int or not 1 <= value <= MAX_FAILURES_CEILING:
            raise ConfigError(f"{path}: max_failures must be an integer from 1 to {MAX_FAILURES_CEILING}")
        config = replace(config, max_failures=value)
    if "penalty_exempt" in values:
        from .frontdoor import parse_networks

        value = values["penalty_exempt"]
        if not isinstance(value, list) or len(value) > MAX_EXEMPT_NETWORKS:
            raise ConfigError(f"{path}: penalty_exempt must be a list of at most {MAX_EXEMPT_NETWORKS} "
                              "addresses or networks")
        try:
            config = replace(config, penalty_exempt=parse_networks(value))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: penalty_exempt: {exc}") from None
    if "enroll_window" in values:
        try:
            config = replace(config, enroll_window=parse_duration(str(values["enroll_window"])))
        except InvalidDuration as exc:
            raise ConfigError(f"{path}: enroll_window: {exc}") from None
    return config
