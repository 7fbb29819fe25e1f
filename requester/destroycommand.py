"""`firsttrust destroy`: tear appliances down: VM, pin and secrets file.

    firsttrust destroy NAME... --vcenter URL (--thumbprint TP | --ca-file FILE) [--credentials FILE]
                       --secrets-dir DIR [--yes]

Per name, only when the VM carries the deployment id of DIR/NAME.json (requester/converge.py,
destroy_one): powered off, deleted, then its pin (when it is this deployment's) and its secrets
file removed. A VM without that id is left alone and named. Asks first, on a terminal; `--yes`
for scripts (without a terminal and without it, nothing is done). Registered in cli.SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from firsttrust.common.cli import EXIT_FAILED, EXIT_OK
from firsttrust.errors import FirsttrustError

from . import profile
from .deployer import CredentialsError, VcenterAccess
from .deployplan import InvalidDeployPlan, check_vcenter_url
from .store import open_store
from .truststore import NAME_RE, TrustStore
from .vcenter_tls import InvalidThumbprint, ca_context, pinned_context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="the appliances' VM names")
    parser.add_argument("--vcenter", metavar="URL", help="https://HOST[:PORT]/sdk of vCenter or ESXi "
                        "(default: FIRSTTRUST_VCENTER, then the config file: requester/profile.py)")
    trust = parser.add_mutually_exclusive_group()  # or from the profile (requester/profile.py)
    trust.add_argument("--thumbprint", metavar="TP", help="the vCenter certificate's SHA-1 or SHA-256 thumbprint")
    trust.add_argument("--ca-file", metavar="FILE", help="verify vCenter's certificate against this CA bundle")
    parser.add_argument("--credentials", metavar="FILE",
                        help="0600 JSON {user, password}; default FIRSTTRUST_VSPHERE_USER/_PASSWORD")
    parser.add_argument("--secrets-dir", required=True, metavar="DIR",
                        help="where `deploy` wrote <name>.json: its deployment id says which VM is ours")
    parser.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")


def run(args: argparse.Namespace) -> int:
    from .converge import destroy_one
    from .vsphere import connect

    profile.apply(args)

    for name in args.names:
        if not NAME_RE.fullmatch(name):
            raise InvalidDeployPlan(f"invalid name {name[:40]!r}")
    secrets_dir = Path(args.secrets_dir)
    if not secrets_dir.is_dir():
        raise InvalidDeployPlan(f"the secrets directory {secrets_dir} is not a directory")
    try:
        check_vcenter_url(args.vcenter)
        context = pinned_context(args.thumbprint) if args.thumbprint else ca_context(args.ca_file)
        access = VcenterAccess.load(args.vcenter, context, args.credentials)
    except (InvalidThumbprint, CredentialsError) as exc:
        raise InvalidDeployPlan(str(exc)) from None
    if not args.yes and not _confirmed(args.names):
        print("firsttrust: nothing destroyed", file=sys.stderr)
        return EXIT_FAILED
    vcenter = connect(access.url, access.user, access.password, access.context)
    failed = 0
    try:
        inventory = vcenter.virtual_machines()
        store = open_store()  # the configured backend (docs/fleet.md)
        for name in args.names:
            try:
                done = destroy_one(vcenter, inventory, name, secrets_dir, store)
            except FirsttrustError as exc:
                failed += 1
                print(f"firsttrust: {name}: not destroyed: {exc.code}: {exc}", file=sys.stderr)
                continue
            print(f"destroyed {name}: VM {done.vm or 'none left'}, pin {done.pin or 'none'}, "
                  f"secrets file {done.secrets_file}")
    finally:
        vcenter.close()
    return EXIT_FAILED if failed else EXIT_OK


def _confirmed(names: list[str]) -> bool:
    if not sys.stdin.isatty():
        raise InvalidDeployPlan("destroy asks for confirmation on a terminal; give --yes to run without one")
    try:
        answer = input(f"Destroy {', '.join(names)}: power off and delete the VM, remove the pin and the secrets "
                       f"file? [y/N] ")
    except EOFError:  # Ctrl-D at the prompt: no
        print(file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")
