"""The `firsttrust` command: the requester's operations for people and scripts.

    firsttrust secrets new --out FILE [--force]
    firsttrust deploy-spec --secrets FILE --format {ovf-env,ovf-properties,extraconfig}
                           [--requester-cert FILE] [--enroll-window DURATION] [--out FILE] [--force]

Subcommands are rows in SUBCOMMANDS: words, help, an argument function and a run function.

Exit codes: 0 success; 1 the operation failed (an output file exists or cannot be written);
2 usage or input error (bad arguments, unreadable or invalid input file). A failure prints one
line on stderr, `firsttrust: error: <message>`, and no traceback. Secret values travel only
through files and stdout: never argv, never a message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Sequence

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import MAX_DECODED_BYTES, PropertyEncodingError
from firsttrust.errors import FirsttrustError, InvalidCertificate, InvalidSecret
from firsttrust.ovfenv import OvfEnvValueError

from firsttrust.deployment import DEFAULT_ENROLL_PORT
from firsttrust.messages import SSH_KEY_PATTERN

from .deployspec import FORMATS, InvalidDeploySpec, deployment_properties, render, secrets_from_json, secrets_to_json
from .enroll import parse_address
from .library import enroll_appliance
from .truststore import NAME_RE

PROG = "firsttrust"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Input files are small: a secrets file is ~100 bytes, a certificate a few hundred. The cap only
# keeps a wrong path (a disk image, /dev/zero) from being read into memory.
MAX_INPUT_BYTES = MAX_DECODED_BYTES


class UsageError(FirsttrustError):
    """Bad arguments, or an input file that cannot be read."""

    code = "usage"


class OutputError(FirsttrustError):
    """The output could not be written, or would replace an existing file without --force."""

    code = "output"


# Exit code per error class, looked up along the error's MRO: a subcommand with new errors adds
# rows here. Everything about the inputs is the caller's to fix (2); anything else failed (1).
EXIT_CODES: dict[type[FirsttrustError], int] = {
    UsageError: EXIT_USAGE,
    InvalidDeploySpec: EXIT_USAGE,
    InvalidSecret: EXIT_USAGE,
    InvalidCertificate: EXIT_USAGE,
    OvfEnvValueError: EXIT_USAGE,
    PropertyEncodingError: EXIT_USAGE,
    OutputError: EXIT_FAILED,
    FirsttrustError: EXIT_FAILED,
}


def exit_code_for(error: FirsttrustError) -> int:
    """The documented exit code for an error (see EXIT_CODES)."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILED


# --- secrets new -------------------------------------------------------------------------------


def _secrets_new_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE", help="new file to create, mode 0600")
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")


def _secrets_new(args: argparse.Namespace) -> int:
    write_private_file(args.out, secrets_to_json(EnrollmentSecrets.generate()), overwrite=args.force)
    print(args.out)
    return EXIT_OK


# --- deploy-spec ---------------------------------------------------------------------------------


def _deploy_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secrets", required=True, metavar="FILE", help="secrets file from `secrets new`")
    parser.add_argument("--format", required=True, choices=list(FORMATS), dest="spec_format")
    parser.add_argument("--requester-cert", metavar="FILE", help="requester certificate (PEM or DER) to inject")
    parser.add_argument("--enroll-window", metavar="DURATION", help="how long enrollment stays open: 3600, 90m, 24h, 2d")
    parser.add_argument("--out", metavar="FILE", help="write to a new 0600 file instead of stdout")
    parser.add_argument("--force", action="store_true", help="replace --out FILE if it exists")


def _deploy_spec(args: argparse.Namespace) -> int:
    data, mode = read_input(args.secrets, "secrets file")
    try:
        secrets = secrets_from_json(data)
    except (InvalidDeploySpec, InvalidSecret) as exc:
        raise type(exc)(f"secrets file {args.secrets}: {exc}") from None
    if mode & 0o077:  # checked after parsing: only a file that really holds secrets is worth a warning
        _warn(f"secrets file {args.secrets} is accessible to group or others (mode {mode & 0o777:04o}); "
              f"chmod 600 it")
    certificate = None
    if args.requester_cert is not None:
        certificate, _ = read_input(args.requester_cert, "requester certificate")
    try:
        properties = deployment_properties(secrets, requester_cert=certificate, enroll_window=args.enroll_window)
    except InvalidCertificate as exc:
        raise InvalidCertificate(f"requester certificate {args.requester_cert}: {exc}") from None
    spec = render(properties, args.spec_format)
    if args.out is None:
        try:
            sys.stdout.write(spec.decode("utf-8"))
            sys.stdout.flush()
        except OSError as exc:  # a closed pipe: the spec did not arrive
            raise OutputError(f"cannot write to stdout: {exc.strerror}") from None
    else:
        write_private_file(args.out, spec, overwrite=args.force)
        print(args.out)
    return EXIT_OK


# --- enroll ----------------------------------------------------------------------------------------


def _enroll_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", metavar="ADDRESS", help="the appliance: HOST or HOST:PORT (default port 8790)")
    parser.add_argument("--secrets", required=True, metavar="FILE", help="the appliance's secrets file")
    parser.add_argument("--name", required=True, help="the name to pin the appliance under")
    parser.add_argument("--ssh-key", metavar="PUBFILE", help="an OpenSSH public key to install for the account")


def _enroll(args: argparse.Namespace) -> int:
    data, _ = read_input(args.secrets, "secrets file")
    try:
        secrets = secrets_from_json(data)
    except (InvalidDeploySpec, InvalidSecret) as exc:
        raise type(exc)(f"secrets file {args.secrets}: {exc}") from None
    if not NAME_RE.fullmatch(args.name):
        raise UsageError("--name must be 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
    ssh_key = None
    if args.ssh_key:
        ssh_key = read_input(args.ssh_key, "SSH public key")[0].decode("ascii", "replace").strip()
        if not re.fullmatch(SSH_KEY_PATTERN, ssh_key):
            raise UsageError(f"{args.ssh_key} is not a single OpenSSH public key line")
    try:
        parse_address(args.address, DEFAULT_ENROLL_PORT)
    except ValueError:
        raise UsageError(f"invalid address {args.address[:80]!r}: expected HOST or HOST:PORT") from None
    record = asyncio.run(enroll_appliance(args.address, secrets, name=args.name, ssh_key=ssh_key))
    print(f"enrolled {record.name}: {record.pin}")
    return EXIT_OK


# --- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subcommand:
    words: tuple[str, ...]  # ("secrets", "new") is `firsttrust secrets new`
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS = (
    Subcommand(("secrets", "new"), "generate SEC-A and SEC-B into a new 0600 JSON file",
               _secrets_new_arguments, _secrets_new),
    Subcommand(("deploy-spec",), "write the deployment properties that carry the secrets to an appliance",
               _deploy_spec_arguments, _deploy_spec),
    Subcommand(("enroll",), "enroll an appliance with its secrets and pin its key",
               _enroll_arguments, _enroll),
)
# Help for the words that only group subcommands.
GROUP_HELP = {("secrets",): "one-time enrollment secrets"}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting: one line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every row of SUBCOMMANDS."""
    parser = _Parser(prog=PROG, allow_abbrev=False,
                     description="Establish first trust between a requester and a freshly deployed appliance.")
    groups = {(): parser.add_subparsers(metavar="COMMAND", required=True)}
    for command in SUBCOMMANDS:
        for depth in range(1, len(command.words)):
            prefix = command.words[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=GROUP_HELP.get(prefix), allow_abbrev=False)
                groups[prefix] = group.add_subparsers(metavar="ACTION", required=True)
        sub = groups[command.words[:-1]].add_parser(command.words[-1], help=command.help, allow_abbrev=False)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `firsttrust` command.

    Args:
        argv: the arguments after the program name; sys.argv[1:] when None.

    Returns:
        The exit code: EXIT_OK, EXIT_FAILED or EXIT_USAGE (see the module docstring).
    """
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as exc:  # --help printed its text
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except FirsttrustError as exc:
        _error(str(exc))
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: its message might quote a value, so only name its type
        _error(f"internal error ({type(exc).__name__}); nothing secret was printed")
        return EXIT_FAILED


# --- files ---------------------------------------------------------------------------------------


def read_input(path: str, what: str) -> tuple[bytes, int]:
    """Read a small input file.

    Returns:
        The content and the file's mode bits.

    Raises:
        UsageError: the file cannot be read, or is over MAX_INPUT_BYTES.
    """
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{what} {path} is larger than {MAX_INPUT_BYTES} bytes")
    return data, mode


def write_private_file(path: str, data: bytes, *, overwrite: bool = False) -> None:
    """Write data to path with mode 0600 from the file's creation: it is never wider, not even briefly.

    Without overwrite the file is created with O_CREAT | O_EXCL, so an existing file or symlink
    at path is never replaced or followed. With overwrite the data goes to a temporary file in
    the same directory, which is then renamed over path: path never holds a partial file.

    Raises:
        OutputError: path exists (without overwrite), or cannot be written.
    """
    try:
        if overwrite:
            fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".firsttrust-")
            try:
                _write_and_close(fd, data)
                os.replace(temporary, path)
            except BaseException:
                os.unlink(temporary)
                raise
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_and_close(fd, data)
            except BaseException:
                os.unlink(path)  # a partial secrets file helps nobody
                raise
    except FileExistsError:
        raise OutputError(f"{path} already exists; use --force to replace it") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None


def _write_and_close(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
