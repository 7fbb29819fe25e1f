"""firsttrust: initial mutual trust between a freshly deployed appliance and its requester.

This package is the protocol both sides speak, sans-IO: it never touches a socket, a file or an
event loop. `firsttrust.enrollment` holds the two state machines everything revolves around;
the other modules are the pieces they are built from.

The folder firsttrust/ is the import name `firsttrust`; the folders agent/, requester/ and lab/
install under it as `firsttrust.agent`, `firsttrust.requester` and `firsttrust.lab`
(pyproject.toml package-dir), none of which this package imports.
"""

__version__ = "0.1.0"
