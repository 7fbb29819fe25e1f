"""The agent's typed errors. Each has a stable `code`; messages are one line, never a secret."""

from __future__ import annotations

from firsttrust.errors import FirsttrustError


class AgentError(FirsttrustError):
    code = "agent_error"


class ConfigSourceError(AgentError):
    """Deploy-time configuration could not be read or is invalid."""

    code = "config_source"


class HypervisorUnavailable(ConfigSourceError):
    """No VMware hypervisor channel (not in a VM, or open-vm-tools missing)."""

    code = "no_hypervisor"


class GuestInfoError(ConfigSourceError):
    """The guestinfo channel answered with an error, stalled, or refused."""

    code = "guestinfo"


class GuestInfoValueError(ConfigSourceError):
    """A guestinfo value the channel delivered is unusable (not UTF-8, too large): bad input, as
    the same value in an OVF document is, not a failing channel (exit 2, not 1)."""

    code = "guestinfo_value"


class OvfEnvError(ConfigSourceError):
    """The OVF environment document is malformed, hostile, too large or not DSP0243."""

    code = "ovf_env"


class EncodingError(ConfigSourceError):
    """A property value's declared encoding is unknown or its data does not decode."""

    code = "encoding"


class NoConfiguration(ConfigSourceError):
    """No source holds firsttrust properties."""

    code = "no_configuration"
