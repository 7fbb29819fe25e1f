"""`firsttrust-lab`: a local data center on loopback for demos and tests. No VMware needed.

    firsttrust-lab demo [--short] [--keep] [--root DIR]   every way in and two failed attacks, end to end
    firsttrust-lab up N [--root DIR]                      N appliances waiting for SRP enrollment (SRP mode)
    firsttrust-lab status [--root DIR]                    what runs in the lab root
    firsttrust-lab down [--root DIR]                      stop everything the lab root runs
    firsttrust-lab vcsim [--root DIR]                     the lab's vCenter and hosts in the foreground

The lab root is --root, else $FIRSTTRUST_LAB_ROOT, else build/lab under the current directory.
`demo` and `up` start govmomi's vCenter simulator (built at first use, lab/vcsim.py) and deploy
through it with `firsttrust deploy`'s code; each appliance listens on an address of its own
(127.0.0.2, ...) at the standard ports. The simulator stops when the command ends; the appliances
do not need it after first boot. `up` deploys with --no-enroll: `firsttrust deploy` writes each
appliance's secrets to a 0600 file under <root>/secrets/, whose path is printed, never the secrets;
<root>/secrets/targets.csv lists them in name order for `firsttrust enroll --targets`.

Exit codes: 0 success; 1 the operation failed (a deployment, a demo check, an agent that would
not stop); 2 bad usage; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP: a demo still destroys its
appliances). Errors are one line on stderr, `firsttrust-lab: error: <message>`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

import firsttrust
from firsttrust.common.cli import EXIT_FAILED, EXIT_USAGE, Guard, Parser, Subcommand, UsageError, add_subcommands, \
    no_arguments
from firsttrust.common.files import write_atomic
from firsttrust.requester.deployplan import plan_deployment

from . import demo, procs
from .errors import LabError
from .manager import Manager, default_root

PROG = "firsttrust-lab"
MAX_UP = 64  # appliances per `up`: each is two Python processes' worth of memory (~40 MB)
DEBUG_ENV = "FIRSTTRUST_LAB_DEBUG"  # set to 1 for tracebacks of unexpected errors


# -- commands --------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    demo.run(args.root, short=args.short, keep=args.keep)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .datacenter import TEMPLATE, DataCenter

    if not 1 <= args.count <= MAX_UP:
        raise UsageError(f"N must be from 1 to {MAX_UP}")
    manager = Manager(args.root, detached=True)
    running = manager.running()
    if running:
        raise LabError(f"{manager.root} runs {len(running)} appliance(s) already; run {PROG} down first")
    names = [f"app-{index:02d}" for index in range(1, args.count + 1)]
    manager.ensure_root()
    secrets_dir = manager.root / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    secrets_dir.chmod(0o700)
    for name in names:  # left by an `up` that was killed: its appliances are gone, and so is their use
        (secrets_dir / f"{name}.json").unlink(missing_ok=True)
    try:
        with DataCenter.start(manager) as datacenter:
            print(f"vCenter: govmomi's simulator at {datacenter.vcsim.url}; firsttrust deploy --no-enroll "
                  f"--template {TEMPLATE} --name-prefix app --count {args.count}", flush=True)
            plan = plan_deployment(datacenter.vcsim.url, TEMPLATE, names, enroll=False)
            reports = datacenter.deploy(plan, secrets_dir)
            failed = [report for report in reports if not report.ok]
            if failed:
                raise LabError(f"{failed[0].name}: deployment failed at {failed[0].failed_step}: {failed[0].error}")
            addresses = {name: datacenter.guest_ip(name) for name in names}
    except BaseException:  # all or nothing, also when interrupted
        for name in names:
            manager.destroy(name)
            (secrets_dir / f"{name}.json").unlink(missing_ok=True)
        raise
    appliances = [manager.appliance(name) for name in names]
    for app in appliances:
        if app.host != addresses[app.name]:
            raise LabError(f"{app.name}: the guest reported {addresses[app.name]}, it listens on {app.host}")
    files = {name: secrets_dir / f"{name}.json" for name in names}
    targets = secrets_dir / "targets.csv"  # for `firsttrust enroll --targets`, in name order (issue 28)
    targets.write_text("name,address,secrets\n" + "".join(f"{app.name},{app.enroll_address},{app.name}.json\n"
                                                          for app in sorted(appliances, key=lambda a: a.name)))
    rows = [("NAME", "ENROLLMENT", "API", "SECRETS")]
    rows += [(app.name, app.enroll_address, app.api_address, str(files[app.name])) for app in appliances]
    _print_table(rows)
    first = appliances[0]
    # The file's path, never its content, is shown.
    example = f"firsttrust enroll {first.enroll_address} --secrets {files[first.name]} --name {first.name}"
    print(f"\nenroll: {example}")
    print(f"  all:  firsttrust enroll --targets {targets}")
    print(f"stop:   {PROG} down --root {manager.root}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    manager = Manager(args.root)
    appliances = manager.appliances()
    if not appliances:
        print(f"no appliances in {manager.root}")
        return 0
    rows = [("NAME", "AGENT", "ENROLLMENT", "API", "PHASE", "KEYS")]
    for app in appliances:
        running = procs.alive(app.pid) and procs.is_lab_agent(app.pid, app.config_path)
        phase, keys = "?", "?"
        result = manager.guest_command(app.name, ["firsttrust-agent", "status", "--json"])
        with contextlib.suppress(ValueError, RecursionError, KeyError, TypeError):
            state = json.loads(result.stdout)
            phase, keys = state["phase"], str(state.get("authorized_keys", "?"))
        rows.append((app.name, f"pid {app.pid}" if running else "stopped", app.enroll_address, app.api_address,
                     phase, keys))
    _print_table(rows)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    manager = Manager(args.root)
    outcomes = manager.destroy_all()
    for name, outcome in outcomes.items():
        print(f"{name}: {outcome}")
        # The appliance is gone: its one-time secrets no longer open anything.
        (manager.root / "secrets" / f"{name}.json").unlink(missing_ok=True)
    if outcomes:
        (manager.root / "secrets" / "targets.csv").unlink(missing_ok=True)
    stopped = sum(outcome == "stopped" for outcome in outcomes.values())
    print(f"stopped {stopped} appliance(s) in {manager.root}" if outcomes else f"nothing runs in {manager.root}")
    return 0


def cmd_vcsim(args: argparse.Namespace) -> int:
    """Run the lab's vCenter and its hosts until Ctrl-C or SIGTERM, for `firsttrust deploy` by hand:
    every VM powered on through it boots as a lab appliance (an agent process on 127.0.0.N,
    first boot from what the simulator hands its guest) and reports its IP, so a deploy by hand
    enrolls and pins as against vCenter. The appliances stop with it.

    Its credentials go to <root>/vcsim-credentials.json (0600, the JSON `firsttrust deploy
    --credentials` reads); the URL and thumbprint are printed, the password never.
    """
    from .datacenter import TEMPLATE, DataCenter

    manager = Manager(args.root)
    manager.ensure_root()
    credentials = manager.root / "vcsim-credentials.json"
    with DataCenter.start(manager) as datacenter:
        server = datacenter.vcsim
        write_atomic(credentials, json.dumps({"user": server.user, "password": server.password}).encode(), 0o600)
        try:
            with datacenter.hosts():
                print(f"url: {server.url}\nthumbprint: {server.thumbprint_sha1}\ncredentials: {credentials}\n"
                      f"pid: {server.pid}\n\ntry: firsttrust deploy --vcenter {server.url} --thumbprint "
                      f"{server.thumbprint_sha1} --credentials {credentials} --template {TEMPLATE} "
                      f"--name-prefix app --count 2 --secrets-dir DIR\n"
                      f"  or: ... --ova build/firsttrust-appliance.ova instead of --template\n"
                      f"VMs powered on through it boot as lab appliances on 127.0.0.N.\n\nCtrl-C stops it.",
                      flush=True)
                threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            credentials.unlink(missing_ok=True)
            for name in datacenter.booted:
                manager.destroy(name)
    print("vcsim stopped", flush=True)
    return 0


def _root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, help="lab root (default $FIRSTTRUST_LAB_ROOT, else ./build/lab)")


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--short", action="store_true", help="no pauses between the steps")
    parser.add_argument("--keep", action="store_true", help="leave the appliances running")


def _up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("count", type=int, metavar="N", help=f"how many appliances (1-{MAX_UP})")


SUBCOMMANDS = (
    Subcommand(("demo",), "all three ways in and two failed attacks, end to end, then clean up",
               _demo_arguments, cmd_demo),
    Subcommand(("up",), "deploy N appliances that wait for SRP enrollment, and leave them running",
               _up_arguments, cmd_up),
    Subcommand(("status",), "list the lab root's appliances", no_arguments, cmd_status),
    Subcommand(("down",), "stop every appliance of the lab root", no_arguments, cmd_down),
    Subcommand(("vcsim",), "run the lab's vCenter and hosts in the foreground until Ctrl-C", no_arguments,
               cmd_vcsim),
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="A local data center on loopback: govmomi's vCenter simulator, "
                                           "firsttrust appliances as processes on 127.0.0.N whose guestinfo "
                                           "is their VM's configuration in the simulator.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {firsttrust.__version__}")
    add_subcommands(parser, SUBCOMMANDS, describe=True, shared=_root_argument, dest="command", parser_class=Parser)
    return parser


def _unexpected_line(exc: Exception) -> str:
    """A bug: still one line (FIRSTTRUST_LAB_DEBUG=1 for the traceback)."""
    first = (str(exc).splitlines() or [""])[0][:200]
    return f"unexpected {type(exc).__name__}: {first}"


GUARD = Guard(PROG, lambda exc: EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED,
              on_interrupt="interrupted", unexpected_line=_unexpected_line, debug_env=DEBUG_ENV)


def main(argv: list[str] | None = None) -> int:
    def run() -> int:
        args = build_parser().parse_args(argv)
        with _exit_on_termination():
            return args.run(args)

    return GUARD.run(run)


# -- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _exit_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP end the command like Ctrl-C does: through every `finally`, so the
    appliances of a demo are destroyed (`up` leaves its agents running by design)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
