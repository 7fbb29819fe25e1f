"""firsttrust-agent: the in-guest half. Reads deploy-time configuration, provisions the
appliance's enrollment state and identity, and serves enrollment and the pinned API."""
