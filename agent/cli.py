"""firsttrust-agent: the appliance-side command.

Exit codes: 0 success; 1 the operation failed (including: nothing injected, guestinfo channel
failing); 2 bad usage or bad input (config, properties, certificate); 3 not provisioned yet
(status, show-identity).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import IO

import firsttrust
from firsttrust.common.cli import EXIT_FAILED, EXIT_USAGE, Guard, Parser, Subcommand, UsageError, add_subcommands, \
    os_error_line
from firsttrust.common.files import read_bounded
from firsttrust.errors import FirsttrustError, InvalidCertificate, InvalidPin
from firsttrust.identity import load_certificate, normalize_pin, pin_of_certificate

from . import audit
from .config import ConfigError, load_config
from .errors import ConfigSourceError, GuestInfoError, HypervisorUnavailable, NoConfiguration
from .sshkeys import has_authorized_key
from .state import StateDir

EXIT_NOT_PROVISIONED = 3
MAX_CERT_INPUT = 64 * 1024


class NotProvisioned(FirsttrustError):
    code = "not_provisioned"


def _store(args: argparse.Namespace):
    config = load_config(args.config, args.state_dir)
    return config, StateDir(config.state_dir)


def cmd_provision(args: argparse.Namespace) -> int:
    from . import systemd_glue

    # Imported here, not at the top: `serve` never provisions, and these imports cost the
    # long-running service memory and start-up time (bench/README.md).
    from .provision import provision
    from .sources.deploy import read_deploy_config

    systemd_glue.setup_logging()  # audit events with MESSAGE_ID and FIRSTTRUST_* fields under journald
    config, _ = _store(args)
    deploy = read_deploy_config(args.source)
    report = provision(config, deploy, set_account_password=not args.no_set_password)
    print(f"{report.action}: {report.pin} (source {deploy.source}, scrub {report.state.scrub['result']})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    config, store = _store(args)
    state = store.load()
    identity = store.load_identity()
    if state is None:
        if args.json:
            print(json.dumps({"phase": "unprovisioned", "state_dir": str(store.path)}))
        else:
            print(f"unprovisioned (state dir {store.path})")
        return EXIT_NOT_PROVISIONED
    now = time.time()
    report = {
        "phase": state.phase,
        "source": state.source,
        "pin": identity.pin if identity else None,
        "provisioned_at": state.provisioned_at,
        "enrolled_at": state.enrolled_at,
        "enrolled_via": state.enrolled_via,
        "window_expires_at": state.window_expires_at,
        "window_open": bool(state.armed and state.window_expires_at and now < state.window_expires_at),
        "failures": state.failures,
        "failures_left": max(0, config.max_failures - state.failures),
        "password": state.password,
        "scrub": state.scrub,
        "published": state.published,
        "authorized_keys": len(store.authorized()),
        # The SRP grant as committed (agent/grant.py), and whether it is applied outside state.json.
        "enrolled_requester": _grant_summary(store, state),
        "repaired": state.repaired,
        "sec_b_on_disk": store.sec_b_path.exists(),
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for key, value in report.items():
            if key == "repaired":
                value = "; ".join(value["actions"]) if value else "nothing"
            elif isinstance(value, dict) and "result" in value:
                value = f"{value['result']}" + (f" ({value['detail']})" if value.get("detail") else "")
            elif isinstance(value, dict):
                value = " ".join(f"{k}={v}" for k, v in value.items())
            print(f"{key.replace('_', ' ')}: {value}")
    return 0


def _grant_summary(store: StateDir, state) -> dict | None:
    grant = state.enrollment if state.phase == "enrolled" else None
    if not grant:
        return None
    summary = {"pin": grant["pin"], "name": grant["name"],
               "api": "applied" if grant["pin"] in {e.get("pin") for e in store.authorized()} else "pending"}
    if grant.get("ssh_key"):
        installed = has_authorized_key(grant["account"], grant["ssh_key"])
        summary["ssh_key"] = f"{'installed' if installed else 'pending'} for {grant['account']}"
    return summary


def _read_cert_input(name: str) -> bytes:
    if name == "-" and sys.stdin is None:  # started with descriptor 0 closed (`<&-`)
        raise UsageError("--cert -: standard input is closed")
    return read_bounded(sys.stdin.buffer if name == "-" else name, MAX_CERT_INPUT, what=name, error=UsageError,
                        too_large=InvalidCertificate)


def cmd_authorize(args: argparse.Namespace) -> int:
    from . import systemd_glue

    systemd_glue.setup_logging()
    # The report file is created first: a path that cannot be written fails before anything is
    # authorized, not after (exit 2 would tell the caller nothing was).
    report = _open_report(args.report)
    try:
        _, store = _store(args)
        # Either spelling of a pin (sha256:hex in any case, curl's sha256//base64); a malformed
        # one is InvalidPin, not "another pin".
        expected = normalize_pin(args.expect_pin) if args.expect_pin is not None else None
        data = _read_cert_input(args.cert)
        certificate = load_certificate(data)
        if expected is not None and pin_of_certificate(certificate) != expected:
            # Guest operations: the pin on the command line is what the requester meant; a file
            # swapped in the guest's temporary directory is refused.
            raise UsageError("the certificate's pin is not the one --expect-pin names; nothing authorized")
        store.ensure()
        pin, added = store.authorize(data, name=args.name, source="guest-command")
        if added:
            audit.event("key-authorized", f"authorized requester key {pin} by guest command", pin=pin,
                        source="guest-command")
        _enrolled_by_guest_command(store)
        identity = store.load_identity() if args.report else None
    except FirsttrustError as exc:
        _write_report(report, {"ok": False, "error": str(exc)})
        raise
    except OSError as exc:  # a read-only or full state directory: the report says so, not empty
        _write_report(report, {"ok": False, "error": os_error_line(exc)})
        raise
    except BaseException:
        if report is not None:
            report.close()
        raise
    _write_report(report, {"ok": True, "pin": pin, "added": added,
                           "appliance_certificate": identity.cert_pem.decode("ascii") if identity else None})
    print(f"{'authorized' if added else 'already authorized'}: {pin}")
    return 0


def _enrolled_by_guest_command(store: StateDir) -> None:
    """The guest-command way's last step: an appliance provisioned without SRP secrets (phase
    `unprovisioned`, its SRP door never opens) is enrolled once the manager's command has
    authorized a requester, as the injected-certificate way is at provisioning. An armed
    appliance stays armed. After authorized.json, so a run cut in between is finished by the
    same command again (the key is then "already authorized")."""
    state = store.load()
    if state is not None and state.phase == "unprovisioned":
        state.phase, state.enrolled_via, state.enrolled_at = "enrolled", "guest-command", time.time()
        store.save(state)


# The report's room, reserved when it is created: an appliance certificate and a pin (~1 kB) fit.
REPORT_ROOM = 16 * 1024


def _open_report(path: Path | None) -> IO[str] | None:
    """authorize --report FILE, created (0600, never replacing a file or following a link) before
    anything is authorized: the outcome for a caller that cannot read the output (guest
    operations discard it), with the appliance's certificate, in the caller's directory."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write the report {path}: {exc.strerror}") from None
    try:  # its room taken now: a disk that fills up meanwhile cannot leave an authorization unreported
        os.posix_fallocate(fd, 0, REPORT_ROOM)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: best effort
            os.close(fd)
            os.unlink(path)
            raise UsageError(f"cannot write the report {path}: {exc.strerror}") from None
    return os.fdopen(fd, "w")


def _write_report(report: IO[str] | None, outcome: dict) -> None:
    if report is not None:
        with report:
            json.dump(outcome, report)
            report.truncate()  # the room taken at the open, given back


def cmd_show_identity(args: argparse.Namespace) -> int:
    _, store = _store(args)
    identity = store.load_identity()
    if identity is None:
        raise NotProvisioned(f"no appliance identity in {store.path} (run firsttrust-agent provision)")
    if args.format == "pin":
        print(pin_of_certificate(identity.certificate))
    else:
        sys.stdout.write(identity.cert_pem.decode("ascii"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from . import systemd_glue
    from .service import DEFAULT_API_LISTEN, DEFAULT_LISTEN, Listen, serve

    try:
        listen = Listen.parse(args.listen, DEFAULT_LISTEN.port) if args.listen else DEFAULT_LISTEN
        api_listen = Listen.parse(args.api_listen, DEFAULT_API_LISTEN.port) if args.api_listen else DEFAULT_API_LISTEN
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config, _ = _store(args)
    systemd_glue.setup_logging()
    try:
        asyncio.run(serve(config, listen, api_listen))
    except OSError as exc:
        raise ServeError(f"cannot listen: {exc.strerror or exc}") from None
    return 0


class ServeError(FirsttrustError):
    code = "serve"


def _store_arguments(parser: argparse.ArgumentParser) -> None:  # every subcommand's
    parser.add_argument("--config", type=Path, help="agent config (default /etc/firsttrust/agent.toml)")
    parser.add_argument("--state-dir", type=Path, help="state directory (default /var/lib/firsttrust)")


def _provision_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="auto", help="auto | vmware | iso | file:PATH (default auto)")
    parser.add_argument("--no-set-password", action="store_true", help="do not set the account password")


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")  # status --json: the report as one object


def _authorize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cert", required=True, help="certificate file (PEM or DER), or - for stdin")
    parser.add_argument("--name", default="guest-command", help="label for this requester")
    parser.add_argument("--expect-pin", metavar="sha256:HEX", help="refuse a certificate with another pin")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="write the outcome and this appliance's certificate as JSON to FILE (a new file)")


def _show_identity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("pem", "pin"), default="pem")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="ADDR:PORT", help="enrollment listener (default 0.0.0.0:8790)")
    parser.add_argument("--api-listen", metavar="ADDR:PORT", help="pinned API listener (default 0.0.0.0:8791)")


SUBCOMMANDS = (
    Subcommand(("provision",), "read deploy-time properties and provision this appliance",
               _provision_arguments, cmd_provision),
    Subcommand(("status",), "show provisioning and enrollment state", _status_arguments, cmd_status),
    Subcommand(("authorize",), "authorize a requester certificate (guest-command mode, through guest operations)",
               _authorize_arguments, cmd_authorize),
    Subcommand(("show-identity",), "print this appliance's certificate or pin", _show_identity_arguments,
               cmd_show_identity),
    Subcommand(("serve",), "serve enrollment (SRP, then TLS) and the pinned mTLS API", _serve_arguments, cmd_serve),
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="firsttrust-agent", description="firsttrust appliance agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {firsttrust.__version__}")
    add_subcommands(parser, SUBCOMMANDS, describe=True, shared=_store_arguments, dest="command", parser_class=Parser)
    return parser


def exit_code_for(exc: FirsttrustError) -> int:
    """Bad input is the caller's to fix (2); nothing to read or a channel that failed is an
    environment problem (1); status and show-identity before provisioning, 3."""
    if isinstance(exc, NotProvisioned):
        return EXIT_NOT_PROVISIONED
    if isinstance(exc, (NoConfiguration, GuestInfoError, HypervisorUnavailable)):
        return EXIT_FAILED
    if isinstance(exc, (UsageError, ConfigError, ConfigSourceError, InvalidCertificate, InvalidPin)):
        return EXIT_USAGE
    return EXIT_FAILED


GUARD = Guard("firsttrust-agent", exit_code_for)


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        args = build_parser().parse_args(argv)
        return args.run(args)

    return GUARD.run(run)


if __name__ == "__main__":
    sys.exit(main())
