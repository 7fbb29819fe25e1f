"""firsttrust.common (the repository's common/ folder): the I/O helpers the agent, the requester
and the lab share, outside the sans-IO core (firsttrust/ opens no file):

  files   durable private writes (temp file with its final mode, fsync, rename, fsync the
          directory; or a new file that never replaces one) and bounded reads (at most N + 1
          bytes, refused when larger)
  cli     the command-line base: usage errors, exit codes, the parser that raises instead of
          exiting, the no-traceback guard and broken-pipe handling

Imported by agent/, requester/ and lab/ (as `firsttrust.common`); never by the core.
"""
