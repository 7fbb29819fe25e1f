"""Where the agent reads its deploy-time configuration: guestinfo, the OVF environment (a file or
an ISO 9660 CD-ROM) and their value encodings, merged by `deploy`.

The folder agent/sources/ installs as `firsttrust.agent.sources`; it imports the agent's modules
relatively (`from ..errors import ...`).
"""
