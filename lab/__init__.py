"""A local data center for the demo and tests: no VMware needed.

The folder lab/ installs as `firsttrust.lab` (pyproject.toml package-dir). Its modules import each
other relatively and the agent, the requester and the core as `firsttrust.agent`,
`firsttrust.requester` and `firsttrust`; the scripts in lab/bin/ run as programs, outside any
package, and so import `firsttrust.lab` absolutely.
"""
