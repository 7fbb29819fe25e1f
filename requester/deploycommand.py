"""`firsttrust deploy`: deploy appliances through vCenter, write their secrets, enroll them.

    firsttrust deploy --vcenter https://vc.example/sdk (--thumbprint TP | --ca-file FILE)
                      (--template NAME | --ova PATH [--remove-vapp-config])
                      [--datacenter DC] [--folder PATH] [--pool PATH] [--host NAME] [--datastore NAME] [--network NAME]
                      (--name NAME | --name-prefix P --count N) --secrets-dir DIR [--credentials FILE] [--requester-cert FILE] [--enroll-window DURATION]
                      [--embodiment srp|guest-command] [--no-enroll] [--dry-run | --check] [--concurrency N]
                      [--ip-timeout SECONDS] [--json]

The vCenter credentials come from FIRSTTRUST_VSPHERE_USER / FIRSTTRUST_VSPHERE_PASSWORD or a 0600
credentials file, never argv. Progress goes to stderr, one line per step and appliance; the
result to stdout, as a table or (--json) one object per appliance. `--dry-run` prints the plan
(without secret values) and touches nothing; `--check` also asks vCenter (credentials,
thumbprint, template, placement, names) and says per appliance what a run would do, changing
nothing. The same command again converges (requester/converge.py): per appliance `created`,
`resumed` or `unchanged`. Ctrl-C or SIGTERM: the partial report, exit 130. Registered in cli.SUBCOMMANDS; the library is
requester/deployer.py. docs/deployment.md, "firsttrust deploy", is the operator's guide.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from firsttrust.common.cli import EXIT_FAILED, EXIT_OK, table
from firsttrust.common.files import read_bounded
from firsttrust.errors import InvalidCertificate

from . import profile
from .deployer import DEFAULT_CONCURRENCY, DEFAULT_IP_TIMEOUT, CredentialsError, VcenterAccess, deploy
from .deployplan import SRP_WAY, WAYS, InvalidDeployPlan, appliance_names, check_vcenter_url, plan_deployment
from .interrupts import INTERRUPTED_EXIT, Interrupted, StopSignal, exit_now
from .ovafile import check_ova
from .placement import PlacementRequest
from .vcenter_tls import InvalidThumbprint, ca_context, pinned_context

MAX_CONCURRENCY = 64
MAX_CERT_BYTES = 64 * 1024
# The placement options, one row each (PlacementRequest's fields; requester/placement.py
# resolves them): option, metavar, help.
PLACEMENT_OPTIONS = (
    ("--datacenter", "DC", "datacenter name or folder path (default: the first)"),
    ("--folder", "PATH", "VM folder path below the datacenter's VM folder, e.g. bringup/appliances"),
    ("--pool", "PATH", "cluster, host or resource pool: a path below the datacenter's host folder "
                       "(cluster-a/Resources/pool1) or a name found anywhere in it"),
    ("--host", "NAME", "the ESXi host (needed by a cluster without DRS; chosen there if not given)"),
    ("--datastore", "NAME", "default: the accessible one, not in maintenance, with the most free space"),
    ("--network", "NAME", "port group the appliance's NIC is connected to (the OVF network mapped to it)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vcenter", metavar="URL", help="https://HOST[:PORT]/sdk of vCenter or ESXi "
                        "(default: FIRSTTRUST_VCENTER, then the config file: requester/profile.py)")
    trust = parser.add_mutually_exclusive_group()  # or from the profile (requester/profile.py)
    trust.add_argument("--thumbprint", metavar="TP",
                       help="the vCenter certificate's SHA-1 thumbprint as vCenter shows it (AB:CD:..), or SHA-256")
    trust.add_argument("--ca-file", metavar="FILE", help="verify vCenter's certificate against this CA bundle")
    parser.add_argument("--credentials", metavar="FILE",
                        help="0600 JSON {user, password}; default FIRSTTRUST_VSPHERE_USER/_PASSWORD")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", metavar="NAME",
                        help="the VM or template to clone (secrets as guestinfo.* extraConfig in the clone spec)")
    source.add_argument("--ova", metavar="PATH",
                        help="import this OVA instead (secrets as its write-only vApp properties; the disk is "
                             "uploaded once, further appliances are clones of the first)")
    parser.add_argument("--remove-vapp-config", action="store_true",
                        help="with --ova: after enrollment remove the whole vApp configuration, not only the "
                             "OVF environment transport")
    where = parser.add_argument_group("placement (each optional; an automatic choice is printed before "
                                      "anything is created; a clone without any stays beside its template)")
    for option, metavar, help_text in PLACEMENT_OPTIONS:
        where.add_argument(option, metavar=metavar, help=help_text)
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--name", help="deploy one appliance with this VM name")
    names.add_argument("--name-prefix", metavar="P", help="deploy --count appliances named P-01, P-02, ...")
    parser.add_argument("--count", type=int, help="with --name-prefix: how many")
    parser.add_argument("--secrets-dir", required=True, metavar="DIR",
                        help="where each appliance's secrets go, as <vm name>.json (mode 0600)")
    parser.add_argument("--requester-cert", metavar="FILE", help="also inject this requester certificate (injected-certificate mode)")
    parser.add_argument("--enroll-window", metavar="DURATION", help="how long enrollment stays open: 90m, 24h, 2d")
    parser.add_argument("--embodiment", choices=WAYS, default=SRP_WAY,
                        help="the way trust is established after power-on (the names pin-cert --embodiment takes): "
                             "srp, the two secrets (default); guest-command, vCenter's guest operations run "
                             "firsttrust-agent authorize in the guest with a one-job guest account")
    parser.add_argument("--no-enroll", action="store_true", help="stop after power-on")
    parser.add_argument("--dry-run", action="store_true", help="print the plan without secrets; change nothing")
    parser.add_argument("--check", action="store_true",
                        help="check credentials, thumbprint, template, placement and names against vCenter and say "
                             "per appliance what a run would do (created, resumed, unchanged); change nothing")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"appliances in flight (default {DEFAULT_CONCURRENCY})")
    parser.add_argument("--ip-timeout", type=float, default=DEFAULT_IP_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for VMware Tools to report an IP (default {DEFAULT_IP_TIMEOUT:.0f})")
    parser.add_argument("--json", action="store_true", help="print the per-appliance report as JSON")


def run(args: argparse.Namespace) -> int:
    """Usage errors are InvalidDeployPlan (exit 2); a failed appliance makes the exit 1."""
    profile.apply(args)  # --vcenter, --thumbprint/--ca-file, --credentials left out: environment, config file
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise InvalidDeployPlan(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    if not 0 < args.ip_timeout <= 86400:  # also NaN, which compares false to everything
        raise InvalidDeployPlan("--ip-timeout must be between 0 and 86400 seconds")
    if args.remove_vapp_config and args.ova is None:
        raise InvalidDeployPlan("--remove-vapp-config goes with --ova (a clone from a template has no OVF environment)")
    placement = PlacementRequest(datacenter=args.datacenter, folder=args.folder, pool=args.pool, host=args.host,
                                 datastore=args.datastore, network=args.network)
    certificate = _read_certificate(args.requester_cert) if args.requester_cert else None
    try:
        check_vcenter_url(args.vcenter)
        context = pinned_context(args.thumbprint) if args.thumbprint else None
        names = appliance_names(args.name, args.name_prefix, args.count)
        if args.ova is not None:
            check_ova(args.ova)  # before anything else is touched, --dry-run included
        plan = plan_deployment(args.vcenter, args.template, names, enroll=not args.no_enroll,
                               requester_cert=certificate, enroll_window=args.enroll_window, ova=args.ova,
                               way=args.embodiment)
    except InvalidThumbprint as exc:
        raise InvalidDeployPlan(str(exc)) from None
    except InvalidCertificate as exc:
        raise InvalidCertificate(f"requester certificate {args.requester_cert}: {exc}") from None
    if args.dry_run:
        described = plan.describe()
        chosen = {k: v for k, v in vars(placement).items() if v is not None}
        if chosen:
            described["placement"] = chosen
        print(json.dumps(described, indent=2))
        return EXIT_OK
    if context is None:
        context = ca_context(args.ca_file)
    try:
        access = VcenterAccess.load(args.vcenter, context, args.credentials)
    except CredentialsError as exc:
        raise InvalidDeployPlan(str(exc)) from None
    stop = StopSignal()
    with stop.installed():  # Ctrl-C, SIGTERM: no new step, the partial report below, exit 130
        try:
            reports = deploy(plan, access, Path(args.secrets_dir), concurrency=args.concurrency,
                             ip_timeout=args.ip_timeout, progress=_progress, placement=placement,
                             remove_vapp=args.remove_vapp_config, stop=stop, check=args.check)
        except Interrupted:  # before the inventory was read (a stalled vCenter, too): nothing to report
            if not stop.is_set():
                raise
            reports = []
    if args.json:
        print(json.dumps([report.to_json() for report in reports], indent=2))
    else:
        rows = [(r.name, r.action, r.vm or "-", r.status, r.ip or "-",
                 r.pin or (f"{r.error.code}: {r.error}" if r.error else "-")) for r in reports]
        print(table(("NAME", "ACTION", "VM", "STATUS", "IP", "PIN"), rows))
    if stop.is_set():
        _progress("deploy", "interrupted: the same command again finishes the job")
        exit_now(INTERRUPTED_EXIT, stop)
        return INTERRUPTED_EXIT
    failed = sum(not r.ok for r in reports)
    return EXIT_FAILED if failed else EXIT_OK


def _read_certificate(path: str) -> bytes:
    return read_bounded(path, MAX_CERT_BYTES, what=f"requester certificate {path}", error=InvalidDeployPlan)


_PROGRESS_LOCK = threading.Lock()


def _progress(name: str, event: str) -> None:
    """One whole line per call: the workers' lines never run together."""
    with _PROGRESS_LOCK:
        sys.stderr.write(f"firsttrust: {name}: {event}\n")
        sys.stderr.flush()
