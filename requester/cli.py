"""The `firsttrust` command: the requester's operations for people and scripts.

    firsttrust secrets new --out FILE [--force]
    firsttrust deploy-spec --secrets FILE --format {govc,ovf-env,ovf-properties,extraconfig}
                           [--requester-cert FILE] [--enroll-window DURATION] [--out FILE] [--force]
    firsttrust enroll ADDRESS --secrets FILE --name NAME [--ssh-key PUBFILE] [--replace] [--deadline SECONDS]
    firsttrust enroll --targets FILE [--concurrency N] [--workers N] [--json] [--deadline SECONDS]
    firsttrust pins list [--json] | pins show NAME | pins remove NAME
    firsttrust pins export NAME --format kubeadm|curl|known_hosts|pem
    firsttrust call NAME METHOD PATH [--data JSON]
    firsttrust pin-cert NAME --address ADDR --cert FILE [--replace]
    firsttrust pin-cert NAME --vcenter URL --thumbprint TP [--embodiment guest-command] [--guest-credentials FILE]
    firsttrust rotate NAME
    firsttrust identity
    firsttrust store migrate|check|import-files, fleet create|join|add-host|remove-host|hosts|pending|sync
                      (requester/fleetcommand.py, docs/fleet.md)
    firsttrust deploy --vcenter URL --thumbprint TP (--template NAME | --ova PATH) --name-prefix P --count N
                      --secrets-dir DIR [--no-enroll] [--dry-run | --check] [--json]   (requester/deploycommand.py)
    firsttrust vcenter-thumbprint URL | firsttrust completion bash|zsh   (requester/setupcommands.py)
    firsttrust destroy NAME... --vcenter URL --thumbprint TP --secrets-dir DIR [--yes]   (requester/destroycommand.py)

Subcommands are rows in SUBCOMMANDS: words, help, an argument function and a run function.
One module, over 450 lines, because each command here is a few lines over the library (the batch's
reading and report are requester/batch.py) and the whole command surface reads in one table; the
commands with logic of their own already have their own modules (named above).

Exit codes: 0 success; 1 the operation failed (a refused or unreachable appliance, any failed
appliance of a batch, an output file that exists or cannot be written); 2 usage or input error
(bad arguments, unreadable or invalid input file, unknown appliance name); 3 the appliance pinned
under a name changed (another deployment's secrets, another key, or an appliance that enrolled
nobody: requester/identitycheck.py); 130 interrupted by SIGINT or SIGTERM (deploy and batch enroll
write their partial report first); 141 stdout was closed early. A failure prints one
line on stderr, `firsttrust: error: <message>`, and no traceback. Secret values travel only
through files and stdout: never argv, never a message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import stat
import sys
import threading
from typing import Sequence

from tqdm import tqdm

import firsttrust
from firsttrust.common.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Guard, Parser, Subcommand, UsageError, \
    add_subcommands, no_arguments, one_line, silence_broken_pipe, table
from firsttrust.common.files import read_bounded_stat, write_atomic, write_new
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import MAX_DECODED_BYTES, PropertyEncodingError
from firsttrust.errors import FirsttrustError, InvalidCertificate, InvalidPin, InvalidSecret
from firsttrust.ovfenv import OvfEnvValueError

from firsttrust.deployment import DEFAULT_API_PORT, DEFAULT_ENROLL_PORT
from firsttrust.identity import load_certificate, normalize_pin, pin_to_curl
from firsttrust.messages import SSH_KEY_PATTERN

from .deployspec import FORMATS, InvalidDeploySpec, deployment_properties, render, secrets_from_json, secrets_to_json
from . import setupcommands
from .enroll import parse_address
from . import guestcommand  # noqa: F401 - its error codes are the CLI's too (deploy --embodiment)
from .identitycheck import IdentityChanged, changed, probe
from . import profile
from .deployplan import InvalidDeployPlan, check_vcenter_url
from .profile import ProfileError
from .interrupts import INTERRUPTED_EXIT, Interrupted, StopSignal, exit_now
from .batch import REPORT_COLUMNS, BatchReport, InvalidTargets, check_address, check_name, loose_secrets_warning, \
    read_secrets_file, read_targets
from .library import (
    AlreadyPinned,
    Outcome,
    CallRefused,
    Target,
    call,
    check_call_path,
    enroll_appliance,
    enroll_many,
    known_hosts_lines,
    pin_certificate,
    rotate_appliance,
)
from .retry import DEFAULT_DEADLINE
from .errors import ConnectionFailed, PinMismatch
from .store import open_store  # the configured backend: files, or the fleet store (docs/fleet.md)
from .truststore import ApplianceRecord, TrustStore, TrustStoreError, UnknownAppliance

PROG = "firsttrust"
EXIT_IDENTITY_CHANGED = 3  # like ssh's loud warning: a script must not take it for "failed, retry"

# Input files are small: a secrets file is ~100 bytes, a certificate a few hundred. The cap only
# keeps a wrong path (a disk image, /dev/zero) from being read into memory.
MAX_INPUT_BYTES = MAX_DECODED_BYTES


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
    InvalidPin: EXIT_USAGE,
    OvfEnvValueError: EXIT_USAGE,
    PropertyEncodingError: EXIT_USAGE,
    OutputError: EXIT_FAILED,
    UnknownAppliance: EXIT_USAGE,
    ProfileError: EXIT_USAGE,
    IdentityChanged: EXIT_IDENTITY_CHANGED,
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
        except BrokenPipeError:  # the reader left (`| head`): quiet, 141, as every command
            raise
        except OSError as exc:  # a full disk behind a redirection: the spec did not arrive
            raise OutputError(f"cannot write to stdout: {exc.strerror}") from None
    else:
        write_private_file(args.out, spec, overwrite=args.force)
        print(args.out)
    return EXIT_OK


# --- enroll ----------------------------------------------------------------------------------------

def _enroll_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", nargs="?", metavar="ADDRESS",
                        help="the appliance: HOST or HOST:PORT (default port 8790)")
    parser.add_argument("--secrets", metavar="FILE", help="the appliance's secrets file")
    parser.add_argument("--name", help="the name to pin the appliance under")
    parser.add_argument("--ssh-key", metavar="PUBFILE", help="an OpenSSH public key to install for the account")
    parser.add_argument("--api-address", metavar="HOST:PORT",
                        help="where to reach the API afterwards, if not the enrollment host and the port the "
                             "appliance reports (NAT, port forwarding)")
    parser.add_argument("--replace", action="store_true",
                        help="re-pin NAME even if it is pinned to another appliance (says what it replaced)")
    parser.add_argument("--targets", metavar="FILE",
                        help="batch: CSV (header name,address,secrets) or JSON list of {name, address, secrets}")
    parser.add_argument("--concurrency", type=int, default=32, help="batch: enrollments in flight (default 32)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="batch: worker processes sharing the work (default: one per CPU)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (a batch: a list)")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, metavar="SECONDS",
                        help="keep retrying an appliance that refuses connections, is busy or backing off, for up "
                             f"to SECONDS (default {DEFAULT_DEADLINE:g}: long enough for one that is still booting)")


def _load_secrets_and_id(path: str) -> tuple[EnrollmentSecrets, str | None]:
    return read_secrets_file(path, UsageError)


def _check_name(name: str) -> str:
    return check_name(name, UsageError)


def _check_address(address: str) -> str:
    return check_address(address, UsageError)


def _read_ssh_key(path: str | None) -> str | None:
    if not path:
        return None
    key = read_input(path, "SSH public key")[0].decode("ascii", "replace").strip()
    if not re.fullmatch(SSH_KEY_PATTERN, key):
        raise UsageError(f"{path} is not a single OpenSSH public key line")
    return key


def _show_wait(address: str):
    """One stderr line per change of what the requester is waiting for (not one per retry)."""
    host, port = parse_address(address, DEFAULT_ENROLL_PORT)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return lambda waiting: print(f"{PROG}: {waiting.describe(shown)}", file=sys.stderr, flush=True)


def _check_deadline(seconds: float) -> float:
    if not 0 <= seconds <= 86400:
        raise UsageError("--deadline must be between 0 and 86400 seconds")
    return seconds


def _enroll(args: argparse.Namespace) -> int:
    if args.targets:
        if args.address or args.secrets or args.name:
            raise UsageError("--targets replaces ADDRESS, --secrets and --name")
        if args.api_address:  # one address for many appliances: it was silently ignored
            raise UsageError("--api-address names one appliance's API; a targets file's appliances serve theirs "
                             "at their own address")
        return _enroll_batch(args)
    if not (args.address and args.secrets and args.name):
        raise UsageError("enroll needs ADDRESS, --secrets and --name (or --targets FILE)")
    if args.workers is not None:
        raise UsageError("--workers is for a batch (--targets FILE)")
    secrets, deployment_id = _load_secrets_and_id(args.secrets)
    _warn_if_readable(args.secrets)
    _check_name(args.name)
    _check_address(args.address)
    ssh_key = _read_ssh_key(args.ssh_key)
    if args.api_address:
        try:
            parse_address(args.api_address, DEFAULT_API_PORT)
        except ValueError:
            raise UsageError(f"invalid --api-address {args.api_address[:80]!r}: expected HOST:PORT") from None
    store = open_store()
    previous = None
    if args.replace:
        with contextlib.suppress(UnknownAppliance):
            previous = store.get(args.name)
    try:
        record = asyncio.run(enroll_appliance(args.address, secrets, name=args.name, ssh_key=ssh_key,
                                              api_address=args.api_address, replace=args.replace, store=store,
                                              deadline=_check_deadline(args.deadline),
                                              on_wait=_show_wait(args.address), deployment_id=deployment_id))
    except IdentityChanged as exc:
        raise IdentityChanged(str(exc).replace("--secrets FILE", f"--secrets {args.secrets}")
                              .replace("enroll ADDRESS", f"enroll {args.address}")) from None
    except AlreadyPinned as exc:
        if args.json:
            print(json.dumps(_single_report(exc.record, "already-pinned"), indent=2))
        else:
            print(f"already-pinned {exc.record.name}: {exc.record.pin}")
        return EXIT_OK
    if args.json:
        print(json.dumps(_single_report(record, "enrolled"), indent=2))
    else:
        print(f"enrolled {record.name}: {record.pin}")
    _say_replaced(previous, record.pin)
    return EXIT_OK


def _single_report(record: ApplianceRecord, status: str) -> dict:
    """`enroll ADDRESS --json`: the batch report's entry for this appliance, as one object."""
    return {"name": record.name, "address": record.address, "ok": True, "status": status, "pin": record.pin,
            "deployment_id": record.deployment_id, "error": None}


def _warn_if_readable(path: str) -> None:
    message = loose_secrets_warning(path)
    if message:
        _warn(message)


def _read_targets(path: str) -> list[Target]:
    try:
        return read_targets(path, warn=_warn)
    except InvalidTargets as exc:  # the command's input error: exit 2, as any other
        raise UsageError(str(exc)) from None


def _enroll_batch(args: argparse.Namespace) -> int:
    if not 1 <= args.concurrency <= 1024:
        raise UsageError("--concurrency must be between 1 and 1024")
    if args.workers is not None and not 1 <= args.workers <= 256:
        raise UsageError("--workers must be between 1 and 256")
    targets = _read_targets(args.targets)
    ssh_key, deadline = _read_ssh_key(args.ssh_key), _check_deadline(args.deadline)
    progress = _Progress(len(targets), terminal=sys.stderr.isatty())
    done: dict[str, Outcome] = {}
    reported = threading.Lock()  # one report: the whole one, or (SIGINT, SIGTERM) the partial one

    def step(outcome: Outcome) -> None:
        done[outcome.target.name] = outcome
        progress.step(outcome)

    def interrupted() -> None:
        if reported.acquire(blocking=False):  # the process ends in exit_now, with the lock held
            so_far = dict(done)
            try:
                _print_batch_report(args, [so_far.get(t.name) or Outcome(t, None, Interrupted(
                    "stopped before its enrollment ended; the same command again finishes it"), 0.0)
                    for t in targets])
            except OSError:  # the report's reader is gone (a closed pipe, a full disk): stop anyway
                silence_broken_pipe()
            finally:
                left = sum(1 for t in targets if t.name not in so_far)
                with contextlib.suppress(Exception):
                    print(f"{PROG}: interrupted: {left} of {len(targets)} appliances not finished (the same command "
                          "again finishes the job)", file=sys.stderr, flush=True)
                exit_now(INTERRUPTED_EXIT, stop)

    stop = StopSignal()
    stop.on_stop(interrupted)
    with stop.installed():
        outcomes = asyncio.run(enroll_many(targets, concurrency=args.concurrency, ssh_key=ssh_key,
                                           on_done=step, deadline=deadline, workers=args.workers,
                                           replace=args.replace))
    progress.finish()
    if not reported.acquire(blocking=False):
        return INTERRUPTED_EXIT
    return _print_batch_report(args, outcomes)


def _print_batch_report(args: argparse.Namespace, outcomes: list[Outcome]) -> int:
    report = BatchReport(outcomes)
    if args.json:
        print(json.dumps(report.entries(), indent=2))
    else:
        print(table(REPORT_COLUMNS, report.rows()))
        print(report.summary())
    sys.stdout.flush()
    if report.identity_changed:
        return EXIT_IDENTITY_CHANGED
    return EXIT_FAILED if report.failed else EXIT_OK


class _Progress:
    """Batch progress on stderr, so stdout stays the table or the JSON report: a tqdm bar on a
    terminal, otherwise one plain line per finished appliance (logs, CI)."""

    def __init__(self, total: int, *, terminal: bool) -> None:
        self.failed = 0
        self.bar = tqdm(total=total, file=sys.stderr, unit="appliance", dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} appliances [{elapsed}<{remaining}]{postfix}") \
            if terminal else None

    def step(self, outcome: Outcome) -> None:
        self.failed += 0 if outcome.ok else 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.failed} failed", refresh=False)
            self.bar.update(1)
        else:
            detail = outcome.record.pin if outcome.record else f"{outcome.error.code}: {outcome.error}"
            print(one_line(f"{PROG}: {outcome.target.name}: {outcome.status} ({outcome.seconds:.1f} s) {detail}"),
                  file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- pins ------------------------------------------------------------------------------------------

PIN_FORMATS = ("kubeadm", "curl", "known_hosts", "pem")


def _pins_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")


def _record_summary(record: ApplianceRecord) -> dict:
    return {"name": record.name, "address": record.address, "api_port": record.api_port, "pin": record.pin,
            "embodiment": record.embodiment, "enrolled_at": record.enrolled_at,
            "deployment_id": record.deployment_id,
            "ssh_host_keys": list(record.ssh_host_keys)}


def _pins_list(args: argparse.Namespace) -> int:
    store = open_store()
    records, problems = store.scan()
    for problem in problems:  # reported, skipped: the other records are still listed
        _error(f"skipped: {problem}")
    if args.json:
        print(json.dumps([_record_summary(r) for r in records], indent=2))
    elif records:
        print(table(("NAME", "ADDRESS", "EMBODIMENT", "PIN"),
                     [(r.name, f"{r.address}:{r.api_port}", r.embodiment, r.pin) for r in records]))
    else:
        print(f"no pinned appliances in {store.home}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def _pins_remove(args: argparse.Namespace) -> int:
    store = open_store()
    name = _check_name(args.name)
    try:
        record = store.get(name)
    except UnknownAppliance:
        raise
    except TrustStoreError as exc:  # a damaged record is what most needs removing: it was refused here
        store.remove(name)
        print(one_line(f"removed {name}: its record could not be read ({exc})"))
        return EXIT_OK
    store.remove(record.name)
    print(f"removed {record.name}: {record.address}:{record.api_port} {record.pin}")
    return EXIT_OK


def _utc(timestamp: float) -> str:
    """ISO 8601 in UTC, to the second: what `pins show` prints (--json keeps the number)."""
    import datetime
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the appliance's name in the trust store")


def _pins_show(args: argparse.Namespace) -> int:
    record = open_store().get(_check_name(args.name))
    for key, value in _record_summary(record).items():
        if key == "ssh_host_keys":
            value = ", ".join(v.split()[0] for v in value) or "none"
        elif key == "enrolled_at":
            value = _utc(value)
        elif key == "deployment_id":
            value = value or "none"
        print(f"{key.replace('_', ' ')}: {value}")
    return EXIT_OK


def _pins_export_arguments(parser: argparse.ArgumentParser) -> None:
    _name_argument(parser)
    parser.add_argument("--format", required=True, choices=PIN_FORMATS, dest="pin_format")
    parser.add_argument("--ssh-port", type=int, default=22, help="known_hosts: the SSH port (default 22)")


def _pins_export(args: argparse.Namespace) -> int:
    if not 0 < args.ssh_port < 65536:
        raise UsageError("--ssh-port must be between 1 and 65535")
    record = open_store().get(_check_name(args.name))
    if args.pin_format == "kubeadm":
        print(normalize_pin(record.pin))
    elif args.pin_format == "curl":
        print(curl_flags(record, open_store()))
    elif args.pin_format == "pem":
        sys.stdout.write(record.certificate)
    else:
        if not record.ssh_host_keys:
            raise NoHostKeys(f"{record.name} has no SSH host keys on record: the appliance reported none when it was "
                             f"{'enrolled' if record.embodiment == 'srp' else 'pinned with pin-cert'} "
                             "(no /etc/ssh/ssh_host_*_key.pub on it then)")
        for line in known_hosts_lines(record, args.ssh_port):
            print(line)
    return EXIT_OK


def curl_flags(record: ApplianceRecord, store: TrustStore) -> str:
    """Flags for `curl $(firsttrust pins export NAME --format curl) https://ADDR:8791/...`.

    -k because the appliance's certificate is self-signed and names only `vm`, so curl's CA and
    host name checks cannot pass (exit 60); --pinnedpubkey is enforced all the same (curl checks it
    with -k too), and it is the check that matters: the key pinned at enrollment. The requester's
    own certificate and key, because the API authorizes only enrolled requesters."""
    return f"-k --pinnedpubkey {pin_to_curl(record.pin)} --cert {store.cert_path} --key {store.key_path}"


class NoHostKeys(FirsttrustError):
    """The appliance record carries no SSH host keys."""

    code = "no_host_keys"


# --- call, pin-cert ----------------------------------------------------------------------------------


def _call_arguments(parser: argparse.ArgumentParser) -> None:
    _name_argument(parser)
    parser.add_argument("method", metavar="METHOD", type=str.upper, choices=("GET", "POST", "DELETE"))
    parser.add_argument("path", metavar="PATH", help="e.g. /v1/identity")
    parser.add_argument("--data", metavar="JSON", help="request body (JSON)")


def _call(args: argparse.Namespace) -> int:
    try:
        check_call_path(args.path)
    except CallRefused as exc:
        raise UsageError(str(exc).replace("rotate_appliance (`firsttrust rotate NAME`)", "`firsttrust rotate NAME`")) \
            from None
    body = None
    if args.data is not None:
        try:
            body = json.loads(args.data)
        except (ValueError, RecursionError):
            raise UsageError("--data is not valid JSON") from None
    name = _check_name(args.name)
    try:
        answer = asyncio.run(call(name, args.method, args.path, body))
    except (ConnectionFailed, PinMismatch) as exc:
        raise _diagnose(name, exc) from None
    if answer is not None:
        print(json.dumps(answer, indent=2, sort_keys=True))
    return EXIT_OK


def _diagnose(name: str, error: FirsttrustError) -> FirsttrustError:
    """A call that failed to connect or met another key: ask the address which key it presents
    (identitycheck.probe, no key of ours sent) to say whether the appliance changed."""
    try:
        record = open_store().get(name)
    except FirsttrustError:
        return error
    change = changed(record, asyncio.run(probe(record.address, record.api_port)))
    return change if change is not None else error


def _pin_cert_arguments(parser: argparse.ArgumentParser) -> None:
    _name_argument(parser)
    parser.add_argument("--address", help="the appliance's API address: HOST[:PORT] (default 8791; with --vcenter "
                                          "default the IP VMware Tools reports)")
    parser.add_argument("--cert", metavar="FILE", help="the appliance certificate (PEM or DER), handed over by the "
                                                       "manager; or, with --vcenter, fetched through vCenter")
    parser.add_argument("--embodiment", choices=("injected-certificate", "guest-command"),
                        default="injected-certificate")
    parser.add_argument("--replace", action="store_true",
                        help="re-pin NAME even if it is pinned to another key (says what it replaced)")
    through = parser.add_argument_group("through vCenter, the VM named NAME (instead of --cert)")
    through.add_argument("--vcenter", metavar="URL", help="https://HOST[:PORT]/sdk")
    trust = through.add_mutually_exclusive_group()
    trust.add_argument("--thumbprint", metavar="TP", help="vCenter's certificate thumbprint (SHA-1 or SHA-256)")
    trust.add_argument("--ca-file", metavar="FILE", help="verify vCenter's certificate against this CA bundle")
    through.add_argument("--credentials", metavar="FILE",
                         help="0600 JSON {user, password}; default FIRSTTRUST_VSPHERE_USER/_PASSWORD")
    through.add_argument("--guest-credentials", metavar="FILE",
                         help="0600 JSON {user, password} of the appliance's guest account (deploy writes it as "
                              "NAME.guest.json): guest-command needs it; injected-certificate then fetches the "
                              "certificate by guest file transfer instead of the guestinfo read-back")
    through.add_argument("--guest-cert-path", metavar="PATH", default=guestcommand.APPLIANCE_CERT_PATH,
                         help=f"where the agent writes its certificate (default {guestcommand.APPLIANCE_CERT_PATH})")


def _pin_cert(args: argparse.Namespace) -> int:
    if args.vcenter is not None:
        return _pin_cert_through_vcenter(args)
    if args.cert is None or args.address is None:
        raise UsageError("pin-cert needs --cert and --address, or --vcenter to fetch the certificate through vCenter")
    certificate, _ = read_input(args.cert, "certificate")
    try:
        load_certificate(certificate)
    except InvalidCertificate as exc:  # the message names the file, as every input's does
        raise InvalidCertificate(f"certificate {args.cert}: {exc}") from None
    try:
        parse_address(args.address, DEFAULT_API_PORT)
    except ValueError:
        raise UsageError(f"invalid address {args.address[:80]!r}") from None
    previous = _pinned(args.name) if args.replace else None
    record = pin_certificate(_check_name(args.name), args.address, certificate, embodiment=args.embodiment,
                             replace=args.replace)
    print(f"pinned {record.name}: {record.pin}")
    _say_replaced(previous, record.pin)
    print(f"requester certificate to authorize on the appliance: {open_store().cert_path}")
    return EXIT_OK


# How long pin-cert --vcenter waits for the VM's guest IP and for VMware Tools.
PIN_CERT_GUEST_TIMEOUT = 120.0


def _pin_cert_through_vcenter(args: argparse.Namespace) -> int:
    """The injected-certificate or guest-command way for one deployed VM, through vCenter: the
    same call `firsttrust deploy` makes, so running it again finishes an interrupted job."""
    from .deployer import CredentialsError, VcenterAccess, _read_credentials_file
    from .vcenter_tls import InvalidThumbprint, ca_context, pinned_context
    from .vsphere import connect

    name = _check_name(args.name)
    if args.cert is not None:
        raise UsageError("--cert and --vcenter exclude each other: the certificate comes through vCenter")
    profile.apply(args)  # whom to trust at vCenter, the credentials: the environment, the config file, as deploy
    try:
        check_vcenter_url(args.vcenter)
    except InvalidDeployPlan as exc:
        raise UsageError(str(exc)) from None
    if args.embodiment == "guest-command" and args.guest_credentials is None:
        raise UsageError("the guest-command way needs --guest-credentials (NAME.guest.json from deploy)")
    try:
        context = pinned_context(args.thumbprint) if args.thumbprint else ca_context(args.ca_file)
        access = VcenterAccess.load(args.vcenter, context, args.credentials)
        guest = (guestcommand.GuestLogin(*_read_credentials_file(args.guest_credentials))
                 if args.guest_credentials else None)
    except (InvalidThumbprint, CredentialsError) as exc:
        raise UsageError(str(exc)) from None
    previous = _pinned(name) if args.replace else None
    vcenter = connect(access.url, access.user, access.password, access.context)
    try:
        vm = vcenter.find_vm(name)
        address = args.address or vcenter.wait_for_ip(vm, PIN_CERT_GUEST_TIMEOUT)
        if args.embodiment == "guest-command":
            report = guestcommand.trust_by_guest_command(vcenter, vm, name, address, guest=guest,
                                                         tools_timeout=PIN_CERT_GUEST_TIMEOUT, replace=args.replace)
            pin, channel = report.pin, report.channel
        else:
            certificate, channel = guestcommand.read_appliance_certificate(vcenter, vm, name, guest=guest,
                                                                           guest_path=args.guest_cert_path)
            pin = guestcommand.verify_and_pin(name, address, certificate, embodiment=args.embodiment,
                                              replace=args.replace).pin
    finally:
        vcenter.close()
    print(f"pinned {name}: {pin} ({args.embodiment}; the certificate by {channel}; first pinned call verified)")
    _say_replaced(previous, pin)
    return EXIT_OK


def _pinned(name: str) -> ApplianceRecord | None:
    """What `name` is pinned to now (None: nothing), for the "replaced" line of --replace."""
    try:
        return open_store().get(_check_name(name))
    except UnknownAppliance:
        return None


def _say_replaced(previous: ApplianceRecord | None, pin: str) -> None:
    if previous is not None and previous.pin != pin:
        print(f"replaced {previous.name}: {previous.address} {previous.pin}", file=sys.stderr)


def _rotate(args: argparse.Namespace) -> int:
    record = asyncio.run(rotate_appliance(_check_name(args.name)))
    print(f"rotated {record.name}: {record.pin}")
    return EXIT_OK


def _identity(args: argparse.Namespace) -> int:
    store = open_store()
    identity = store.identity()
    print(f"trust store: {one_line(str(store.home))} (FIRSTTRUST_HOME)", file=sys.stderr)
    sys.stdout.write(identity.cert_pem.decode("ascii"))
    return EXIT_OK


# --- deploy: its own module (pyVmomi is imported only when it runs) ---------------------------------


def _deploy_arguments(parser: argparse.ArgumentParser) -> None:
    from .deploycommand import add_arguments
    add_arguments(parser)


def _deploy(args: argparse.Namespace) -> int:
    from .deploycommand import run
    return run(args)


def _destroy_arguments(parser: argparse.ArgumentParser) -> None:
    from .destroycommand import add_arguments
    add_arguments(parser)


def _destroy(args: argparse.Namespace) -> int:
    from .destroycommand import run
    return run(args)


# --- the table -------------------------------------------------------------------------------------


SUBCOMMANDS = (
    Subcommand(("secrets", "new"), "generate SEC-A and SEC-B into a new 0600 JSON file",
               _secrets_new_arguments, _secrets_new),
    Subcommand(("deploy-spec",), "write the deployment properties that carry the secrets to an appliance",
               _deploy_spec_arguments, _deploy_spec),
    Subcommand(("enroll",), "enroll an appliance (or a batch) with its secrets and pin its key",
               _enroll_arguments, _enroll),
    Subcommand(("pins", "list"), "list the pinned appliances", _pins_list_arguments, _pins_list),
    Subcommand(("pins", "show"), "show one pinned appliance", _name_argument, _pins_show),
    Subcommand(("pins", "remove"), "forget a pinned appliance", _name_argument, _pins_remove),
    Subcommand(("pins", "export"), "export a pin for other tools (kubeadm, curl, known_hosts, pem)",
               _pins_export_arguments, _pins_export),
    Subcommand(("call",), "call the appliance's API over pinned mutual TLS", _call_arguments, _call),
    Subcommand(("pin-cert",), "pin a certificate handed over by the manager (injected-certificate or guest-command mode)",
               _pin_cert_arguments, _pin_cert),
    Subcommand(("rotate",), "have the appliance rotate its key; move the pin after checking the old key signed it",
               _name_argument, _rotate),
    Subcommand(("identity",), "print the requester's certificate (what appliances authorize)",
               no_arguments, _identity),
    Subcommand(("deploy",), "deploy appliances through vCenter with fresh secrets, then enroll them",
               _deploy_arguments, _deploy),
    Subcommand(("vcenter-thumbprint",), "print the thumbprint a vCenter presents now (trust on first use: compare "
                                        "it before pinning it)", setupcommands.thumbprint_arguments,
               setupcommands.vcenter_thumbprint),
    Subcommand(("completion",), "print a bash or zsh completion script", setupcommands.completion_arguments,
               setupcommands.completion),
    Subcommand(("destroy",), "power off and delete deployed appliances (only VMs carrying their deployment id), "
                             "remove their pins and secrets files", _destroy_arguments, _destroy),
)
# The fleet store's commands live in their own module (docs/fleet.md).
from .fleetcommand import subcommands as _fleet_subcommands  # noqa: E402

SUBCOMMANDS += _fleet_subcommands(Subcommand)
# Help for the words that only group subcommands.
GROUP_HELP = {("secrets",): "one-time enrollment secrets", ("pins",): "the trust store's pinned appliances",
              ("store",): "the fleet store on PostgreSQL", ("fleet",): "a fleet of requester hosts (docs/fleet.md)"}


class _Parser(Parser):
    """The base's parser, pointing at the subcommand's help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every row of SUBCOMMANDS."""
    parser = _Parser(prog=PROG, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Establish first trust between a requester and a freshly deployed appliance.",
                     epilog="environment:\n  FIRSTTRUST_HOME  the trust store: this requester's key and certificate and "
                            "the pinned\n                   appliances (default ~/.local/share/firsttrust; "
                            "`firsttrust identity` prints it)\n\n"
                            "exit codes: 0 success, 1 the operation failed, 2 usage or input error, 3 an "
                            "appliance's identity\n  changed (redeployed, reset or replaced: see the message), "
                            "130 interrupted (SIGINT,\n  SIGTERM; the partial report was written), 141 stdout "
                            "closed early")
    parser.add_argument("--version", action="version", version=f"%(prog)s {firsttrust.__version__}")
    add_subcommands(parser, SUBCOMMANDS, group_help=GROUP_HELP, metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `firsttrust` command.

    Args:
        argv: the arguments after the program name; sys.argv[1:] when None.

    Returns:
        The exit code: EXIT_OK, EXIT_FAILED or EXIT_USAGE (see the module docstring).
    """
    def run() -> int:
        args = build_parser().parse_args(argv)
        return args.run(args)

    if threading.current_thread() is not threading.main_thread():
        return GUARD.run(run)
    # SIGTERM ends any command as Ctrl-C does (exit 130, one line): `deploy` and batch `enroll`
    # install their own stop for both (requester/interrupts.py) over this one.
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return GUARD.run(run)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --- files ---------------------------------------------------------------------------------------


def read_input(path: str, what: str) -> tuple[bytes, int]:
    """Read a small input file.

    Returns:
        The content and the file's mode bits.

    Raises:
        UsageError: the file cannot be read, or is over MAX_INPUT_BYTES.
    """
    return read_bounded_stat(path, MAX_INPUT_BYTES, what=f"{what} {path}", error=UsageError)


def write_private_file(path: str, data: bytes, *, overwrite: bool = False) -> None:
    """Write data to path with mode 0600 from the file's creation (common/files.py), durably.

    Without overwrite the file is new (write_new: an existing file or symlink at path is never
    replaced or followed). With overwrite it is replaced atomically (write_atomic): path never
    holds a partial file; what it replaces must be a regular file or a symlink (the link itself
    is replaced), never a device, a FIFO or a socket (`--out /dev/full --force` as root would
    have put the secrets where the device node was).

    Raises:
        OutputError: path exists (without overwrite), is not a regular file, or cannot be written.
    """
    try:
        if overwrite:
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                mode = stat.S_IFREG
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise OutputError(f"{path} is not a regular file; --force replaces only files")
            write_atomic(path, data, 0o600)
        else:
            write_new(path, data, 0o600)
    except FileExistsError:
        raise OutputError(f"{path} already exists; use --force to replace it") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None


GUARD = Guard(PROG, exit_code_for, help_exits=True, on_interrupt="interrupted (the same command again finishes the job)")
_error, _warn = GUARD.error, GUARD.warn


if __name__ == "__main__":
    sys.exit(main())
