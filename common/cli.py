"""The base the three command-line tools share (agent/cli.py, requester/cli.py, lab/cli.py):
usage errors, exit codes, the parser that raises instead of exiting, the command table, and the
last line of defence, under which whatever escapes a command becomes one line on stderr and a
documented exit code, never a traceback.

Each CLI maps its own typed errors to exit codes (its `exit_code_for`); the guard handles what
is left: an OS error the command did not anticipate (a directory where a file was expected, a
path under /proc), output to a closed pipe, standard output closed from the start, an input
nested too deeply for the parsers' recursion, an interrupt, and bugs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

from firsttrust.errors import FirsttrustError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
# Output to a closed pipe (`firsttrust-agent status | grep -q x`): quiet, and the exit status a
# shell tool killed by SIGPIPE reports (128 + 13), as `cat` or `git` do.
EXIT_BROKEN_PIPE = 141


class UsageError(FirsttrustError):
    """Bad arguments, or an input file that cannot be read: the caller's to fix (exit 2)."""

    code = "usage"


# Every control character: C0, DEL and C1 (U+0080-U+009F; U+009B is CSI to a terminal that
# reads 8-bit controls, as ESC [ is to every terminal).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """`text` as one line of plain text: a path or a value quoted in a message may hold a newline
    (a FIRSTTRUST_HOME of two lines), and a peer-supplied string may hold a newline or a
    terminal's escape sequence; none may split a message, forge the next line of a line-based log
    (agent/audit.py) or drive the reader's terminal. Control characters are written as escapes."""
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


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


def table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    """Rows under a header, columns padded, each cell on one line (one_line: a peer's or a
    database's text never brings its own line breaks or terminal escapes)."""
    cells = [[one_line(str(cell)) for cell in row] for row in (header, *rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*cells)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def _stderr_to_devnull() -> None:
    """Descriptor 2 was closed at start: /dev/null takes its place, as sys.stderr and as the
    descriptor (a file opened later would otherwise get 2, and what C writes to stderr with it).
    print(file=None) writes to sys.stdout: every warning went into the command's output."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 2:
            os.dup2(fd, 2)
            os.close(fd)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    except OSError:
        pass


@dataclass(frozen=True)
class Guard:
    """How one tool turns what escapes a command into a line and an exit code.

    prog: the tool's name, the prefix of every line (`PROG: error: MESSAGE`).
    exit_code_for: the exit code of one of its typed errors (default: EXIT_FAILED).
    on_interrupt: a line to print when interrupted (None: quiet).
    unexpected_line: the line for a bug (default: its type only, never its message).
    debug_env: an environment variable that, set, lets OS errors and bugs raise (a traceback).
    help_exits: --help and --version return their exit code instead of raising SystemExit.
    """

    prog: str
    exit_code_for: Callable[[FirsttrustError], int] = lambda exc: EXIT_FAILED
    on_interrupt: str | None = None
    unexpected_line: Callable[[Exception], str] = unexpected_error_line
    debug_env: str | None = None
    help_exits: bool = False

    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {one_line(message)}", file=sys.stderr)

    def warn(self, message: str) -> None:
        print(f"{self.prog}: warning: {one_line(message)}", file=sys.stderr)

    def run(self, command: Callable[[], int]) -> int:
        """`command()`'s exit code; whatever it raises as one line on stderr and an exit code."""
        if sys.stderr is None:  # started with descriptor 2 closed (`2>&-`): print(file=sys.stderr) wrote to stdout
            _stderr_to_devnull()
        if sys.stdout is None:  # started with descriptor 1 closed (`>&-`): print() would drop it all
            self.error("standard output is closed; nothing was done")
            return EXIT_FAILED
        try:
            return command()
        except SystemExit as exc:
            if not self.help_exits:
                raise
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        except FirsttrustError as exc:
            self.error(str(exc))
            return self.exit_code_for(exc)
        except KeyboardInterrupt:
            if self.on_interrupt is not None:
                print(f"{self.prog}: {self.on_interrupt}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            return silence_broken_pipe()
        except RecursionError:  # json or tomllib on an input nested thousands deep
            self.error("an input is nested too deeply to read")
            return EXIT_USAGE
        except OSError as exc:
            if self.debug_env and os.environ.get(self.debug_env):
                raise
            self.error(os_error_line(exc))
            return EXIT_FAILED
        except Exception as exc:  # a bug: one line, never a traceback
            if self.debug_env and os.environ.get(self.debug_env):
                raise
            self.error(self.unexpected_line(exc))
            return EXIT_FAILED


class Formatter(argparse.HelpFormatter):
    """argparse's own, with the terminal width found as shutil.get_terminal_size finds it but
    without importing shutil (and bz2, lzma with it: ~3 ms and ~0.3 MB of every agent start),
    which argparse does on every add_argument only to learn the width."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            try:
                columns = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                columns = 0
            if columns <= 0:
                try:
                    columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    columns = 0
            width = (columns or 80) - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting: one line, exit 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


@dataclass(frozen=True)
class Subcommand:
    """One row of a tool's command table."""

    words: tuple[str, ...]  # ("secrets", "new") is `firsttrust secrets new`
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """A Subcommand's `arguments` when it takes none of its own."""


def add_subcommands(parser: argparse.ArgumentParser, subcommands: Iterable[Subcommand], *,
                    group_help: dict[tuple[str, ...], str] | None = None, describe: bool = False,
                    shared: Callable[[argparse.ArgumentParser], None] = no_arguments, **subparsers) -> None:
    """A subparser for every row (nested for rows of several words), each running its row's
    `run` as `args.run(args)`.

    Args:
        group_help: help for the words that only group subcommands.
        describe: a row's help is also its subcommand's description (`PROG CMD --help`).
        shared: the arguments every subcommand takes, added before its own.
        subparsers: for each add_subparsers (metavar=..., dest=...); required always.
        Further keyword arguments of add_parser come from the parser's class: `allow_abbrev`
        when the top parser has it off.
    """
    parser_kwargs = {} if parser.allow_abbrev else {"allow_abbrev": False}
    groups = {(): parser.add_subparsers(required=True, **subparsers)}
    for command in subcommands:
        for depth in range(1, len(command.words)):
            prefix = command.words[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=(group_help or {}).get(prefix),
                                                       **parser_kwargs)
                groups[prefix] = group.add_subparsers(metavar="ACTION", required=True)
        extra = {"description": command.help} if describe else {}
        sub = groups[command.words[:-1]].add_parser(command.words[-1], help=command.help, **extra, **parser_kwargs)
        shared(sub)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
