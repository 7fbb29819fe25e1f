"""The last line of defence shared by the three command-line tools: whatever escapes a command
becomes one line on stderr and a documented exit code, never a traceback.

Each CLI maps its own typed errors first (agent/cli.py, requester/cli.py, lab/cli.py); this only
handles what is left: an OS error the command did not anticipate (a directory where a file was
expected, a path under /proc), output to a closed pipe, and bugs. It touches no file or socket
itself: it formats, and tells the caller what to print.
"""

from __future__ import annotations

import os
import sys

EXIT_FAILED = 1
# Output to a closed pipe (`firsttrust-agent status | grep -q x`): quiet, and the exit status a
# shell tool killed by SIGPIPE reports (128 + 13), as `cat` or `git` do.
EXIT_BROKEN_PIPE = 141


def os_error_line(exc: OSError) -> str:
    """`cannot use PATH: REASON` for an OSError, without its errno noise."""
    path = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or type(exc).__name__
    return f"cannot use {path}: {reason}" if path else reason


def unexpected_error_line(exc: BaseException) -> str:
    """For a bug: the type only (its message might quote a value that is secret)."""
    return f"internal error ({type(exc).__name__}); nothing secret was printed"


def silence_broken_pipe() -> int:
    """After a BrokenPipeError on stdout: point stdout at /dev/null, so the interpreter's final
    flush does not print a second error, and return EXIT_BROKEN_PIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE
