"""Moved: the durable private writer is firsttrust.common.files (common/files.py), shared with
the requester and the lab. This name only keeps agent/provision.py importing while that module
is being reworked elsewhere (issue 29); import from firsttrust.common.files instead."""

from firsttrust.common.files import clean_stale_temps, write_atomic  # noqa: F401

__all__ = ["clean_stale_temps", "write_atomic"]
