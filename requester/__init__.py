"""firsttrust requester: the client half, library first.

The requester is the machine that asks vCenter to deploy an appliance and then enrolls with it.
Its library turns the core protocol (`firsttrust`) into operations on real files, sockets and
deployments; the `firsttrust` command (`firsttrust.requester.cli`) is a thin layer over it.

  deployspec   the deployment properties that carry SEC-A, SEC-B and the requester's
               certificate to a new appliance, as an OVF environment, an OVF descriptor
               ProductSection, or guestinfo extraConfig lines (docs/deployment.md)
  library      enroll one appliance or many, pin, rotate, call: the library's top level
  workers      enroll_many's worker processes (or threads): deal, collect, stop
  batch        a batch's targets file and its report, as data (library.read_targets, BatchReport)
  cli          `firsttrust secrets new`, `firsttrust deploy-spec`, ...

Nothing here imports `agent`: the two halves share only `firsttrust`.

The folder requester/ installs as `firsttrust.requester` (requester/store/ as
`firsttrust.requester.store`; pyproject.toml package-dir). Its modules import each other
relatively (`from .truststore import ...`) and the protocol core as `firsttrust.`.
"""
