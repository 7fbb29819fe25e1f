"""A local data center for the demo and tests: no VMware needed."""
