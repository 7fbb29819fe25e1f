"""The lab's typed errors: a stable code and a one-line message, never a secret."""

from __future__ import annotations

from firsttrust.errors import FirsttrustError


class LabError(FirsttrustError):
    """A lab operation failed: a deployment, a guest command, stopping an agent."""

    code = "lab"


class RegistryError(LabError):
    """<lab root>/lab.json is unreadable or not what this version of the lab wrote."""

    code = "lab_registry"
