"""firsttrust-agent: the in-guest half. Reads deploy-time configuration, provisions the
appliance's enrollment state and identity, and serves enrollment and the pinned API.

The folder agent/ installs as `firsttrust.agent` (pyproject.toml package-dir). Its modules import
each other relatively (`from .state import ...`) and the protocol core as `firsttrust.`; never
`firsttrust.requester`.
"""
