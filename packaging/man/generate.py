#!/usr/bin/env python3
"""Render the man pages of the firsttrust CLIs from their argparse definitions.

    packaging/man/generate.py --out-dir DIR [--site DIR] [PROG ...]

Writes DIR/PROG.1 (roff, uncompressed) for each PROG (default: firsttrust, firsttrust-agent,
firsttrust-lab) and prints the paths. Each page is built from the CLI's own `build_parser()`:
SYNOPSIS from its usage line, every subcommand (nested ones too) with its usage and options, the
EXIT STATUS from the "Exit codes:" paragraph of the CLI module's docstring; what argparse cannot
know (the longer DESCRIPTION, ENVIRONMENT, FILES, SEE ALSO) is in PAGES below. So the pages change
when the CLIs do, and a CLI whose docstring loses its exit codes fails the build instead of
shipping a page without them.

--site DIR imports firsttrust from DIR first (packaging/deb/build.sh passes its staging
dist-packages, so the pages describe exactly the code being packaged). The page date is
SOURCE_DATE_EPOCH's (reproducible builds), else today's.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Page:
    module: str  # the CLI module; it has build_parser() and documents its exit codes
    summary: str  # the NAME line's description (what whatis/apropos show)
    description: tuple[str, ...]  # paragraphs after the parser's own description
    environment: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, str], ...] = ()
    see_also: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())  # (SECTION, paragraphs)


PAGES = {
    "firsttrust": Page(
        module="firsttrust.requester.cli",
        summary="enroll freshly deployed appliances and keep their pinned keys (the requester)",
        description=(
            "firsttrust is the requester side of firsttrust: it generates the one-time secrets "
            "SEC-A and SEC-B, writes the deployment properties that carry them to a new virtual "
            "appliance, enrolls the appliance over SRP-6a and TLS 1.3 once it has booted, and "
            "keeps the appliance's pinned key in a trust store. Later calls to the appliance's API "
            "use mutual TLS against that pin.",
            "Secret values travel only through files and standard output, never through the "
            "command line or an error message.",
        ),
        environment=(
            ("FIRSTTRUST_HOME", "The trust store: the requester's private key and certificate "
                                "(identity.key, identity.crt) and one record per pinned appliance. "
                                "Default: $XDG_DATA_HOME/firsttrust."),
            ("XDG_DATA_HOME", "Used when FIRSTTRUST_HOME is not set; default ~/.local/share."),
            ("FIRSTTRUST_VSPHERE_USER", "deploy, destroy: the vCenter user, unless --credentials FILE is given."),
            ("FIRSTTRUST_VSPHERE_PASSWORD", "deploy, destroy: that user's password (never on the command line)."),
            ("FIRSTTRUST_VCENTER", "deploy, destroy: the vCenter URL when --vcenter is not given."),
            ("FIRSTTRUST_VCENTER_THUMBPRINT", "deploy, destroy: its certificate's thumbprint when neither --thumbprint "
                                              "nor --ca-file is given (FIRSTTRUST_VCENTER_CA_FILE: a CA bundle)."),
            ("FIRSTTRUST_CONFIG", "The config file; default $XDG_CONFIG_HOME/firsttrust/config.toml."),
        ),
        files=(
            ("$FIRSTTRUST_HOME/identity.key", "the requester's private key (mode 0600), created on first use"),
            ("$FIRSTTRUST_HOME/identity.crt", "its self-signed certificate, what appliances authorize"),
            ("$FIRSTTRUST_HOME/appliances/NAME.json", "one pinned appliance"),
            ("$XDG_CONFIG_HOME/firsttrust/config.toml", "vcenter, thumbprint or ca_file, credentials (a file path) for "
                                                       "deploy and destroy; refused if group or others may write it, "
                                                       "never holds a password"),
        ),
        see_also=("firsttrust-agent(1)",),
    ),
    "firsttrust-agent": Page(
        module="firsttrust.agent.cli",
        summary="the firsttrust agent inside a virtual appliance",
        description=(
            "firsttrust-agent runs inside a freshly deployed virtual appliance. At first boot "
            "(firsttrust-provision.service) it reads the one-time secrets injected into the VM's "
            "deployment properties (VMware guestinfo, the OVF environment or its ISO), sets the "
            "appliance account's password, keeps only an SRP verifier, creates the appliance's key "
            "and certificate, and scrubs the secrets. firsttrust-agent.service then serves "
            "enrollment (SRP-6a, then TLS 1.3) and, once enrolled, the pinned mutual-TLS API.",
        ),
        files=(
            ("/etc/firsttrust/agent.toml", "the agent's configuration (every key optional)"),
            ("/var/lib/firsttrust/", "the agent's private state (mode 0700): identity, SRP verifier, "
                                     "authorized requesters"),
            ("/etc/firsttrust/appliance.crt", "the public copy of the appliance's certificate"),
            ("/lib/systemd/system/firsttrust-*.service, firsttrust-*.socket", "the systemd units"),
        ),
        see_also=("firsttrust(1)", "systemd.service(5)", "journalctl(1)"),
    ),
    "firsttrust-lab": Page(
        module="firsttrust.lab.cli",
        summary="a local data center on 127.0.0.1 for firsttrust demos and tests",
        description=(
            "firsttrust-lab runs govmomi's vCenter simulator as the manager and firsttrust agents as "
            "local processes whose emulated VMware guest channel reads and writes the simulator's VM "
            "configuration, so the whole protocol can be shown and tested without VMware.",
        ),
        environment=(
            ("FIRSTTRUST_LAB_ROOT", "The lab root when --root is not given; default ./build/lab."),
            ("FIRSTTRUST_LAB_DEBUG", "When set, an unexpected error shows its traceback."),
        ),
        files=(("<root>/secrets/", "each appliance's secrets (mode 0600), written by up"),),
        see_also=("firsttrust(1)", "firsttrust-agent(1)"),
    ),
}


# --- roff ----------------------------------------------------------------------------------------


def text(value: str) -> str:
    """Prose for roff: backslashes escaped, no line taken for a request."""
    value = " ".join(value.split()).replace("\\", "\\e")
    return "\\&" + value if value.startswith((".", "'")) else value


def literal(value: str) -> str:
    """A command, option, path or variable: also its hyphens are hyphens (\\-), not breakable dashes."""
    return text(value).replace("-", "\\-")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=10_000)  # one usage line, whatever $COLUMNS says


def usage(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = _formatter
    return " ".join(parser.format_usage().removeprefix("usage:").split())


def options(parser: argparse.ArgumentParser, *, with_help: bool = True) -> list[str]:
    """.TP paragraphs for the options and positionals of one parser (subcommands excluded)."""
    formatter = _formatter(parser.prog)
    out: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._HelpAction) and not with_help:
            continue
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        if action.option_strings and action.required:
            help_text = f"{help_text} (required)".strip()
        out += [".TP", f".B {literal(invocation)}"]
        if help_text:
            out.append(text(help_text))
    return out


def subcommands(parser: argparse.ArgumentParser, words: tuple[str, ...] = (), help_text: str | None = None):
    """(words, help, parser) for every leaf subcommand, depth first, in definition order."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield words, help_text, parser
        return
    for group in groups:
        helps = {choice.dest: choice.help for choice in group._choices_actions}
        for name, sub in group.choices.items():
            yield from subcommands(sub, words + (name,), helps.get(name) or sub.description)


def exit_codes(module) -> list[tuple[str, str]]:
    """The "Exit codes: 0 ...; 1 ...; 2 ...." paragraph of the module's docstring, as (code, meaning)."""
    doc = " ".join((module.__doc__ or "").split())
    match = re.search(r"Exit codes: (.*?\.)(?: [A-Z]|$)", doc)
    if not match:
        raise SystemExit(f"generate.py: {module.__name__}'s docstring has no 'Exit codes:' paragraph")
    body = match.group(1).removesuffix(".")
    return [(code, meaning.strip()) for code, meaning in re.findall(r"(?:^|; )(\d+) (.*?)(?=; \d+ |$)", body)]


def render(prog: str, date: datetime.date, version: str) -> str:
    page = PAGES[prog]
    module = importlib.import_module(page.module)
    parser = module.build_parser()
    lines = [
        f'.\\" Generated by packaging/man/generate.py from {page.module}.build_parser(); do not edit.',
        f'.TH {literal(prog.upper())} 1 "{date.isoformat()}" "firsttrust {version}" "User Commands"',
        ".nh",  # no hyphenation: option values and paths must read as they are typed
        ".ad l",
        ".SH NAME",
        f"{literal(prog)} \\- {text(page.summary)}",
        ".SH SYNOPSIS",
        f".B {literal(prog)}",
        _args_of(parser, prog),
    ]
    for _, _, sub in subcommands(parser):
        lines += [".PP", f".B {literal(prog)}", _args_of(sub, prog)]
    lines += [".SH DESCRIPTION"]
    if parser.description:
        lines += [".PP", text(parser.description.rstrip(".") + ".")]
    for paragraph in page.description:
        lines += [".PP", text(paragraph)]
    lines += [".SH OPTIONS"] + options(parser)
    leaves = [leaf for leaf in subcommands(parser) if leaf[0]]
    if leaves:
        lines.append(".SH COMMANDS")
        for words, help_text, sub in leaves:
            lines += [f".SS {literal(' '.join(words))}", ".PP", f".B {literal(prog)}", _args_of(sub, prog)]
            if help_text:
                lines += [".PP", text(help_text[0].upper() + help_text[1:].rstrip(".") + ".")]
            lines += options(sub, with_help=False)
    if page.environment:
        lines.append(".SH ENVIRONMENT")
        for name, meaning in page.environment:
            lines += [".TP", f".B {literal(name)}", text(meaning)]
    for section, paragraphs in page.extra:
        lines.append(f".SH {section}")
        for paragraph in paragraphs:
            lines += [".PP", text(paragraph)]
    lines.append(".SH EXIT STATUS")
    for code, meaning in exit_codes(module):
        lines += [".TP", f".B {code}", text(meaning[0].upper() + meaning[1:] + ".")]
    if page.files:
        lines.append(".SH FILES")
        for path, meaning in page.files:
            lines += [".TP", f".I {literal(path)}", text(meaning[0].upper() + meaning[1:] + ".")]
    if page.see_also:
        references = [name.removesuffix(")").split("(") for name in page.see_also]
        lines += [".SH SEE ALSO", ",\n".join(f".BR {literal(name)} ({section})" for name, section in references)]
    return "\n".join(lines) + "\n"


def _args_of(parser: argparse.ArgumentParser, prog: str) -> str:
    """The usage line after the program name: `pins list [-h] [--json]` for `firsttrust pins list`."""
    line = usage(parser).removeprefix(prog).strip()
    if parser.prog != prog:  # a subcommand: -h is there as everywhere, and said once, under OPTIONS
        line = line.replace("[-h] ", "").replace(" [-h]", "").replace("[-h]", "")
    return literal(line)


def page_date() -> datetime.date:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).date()
    return datetime.date.today()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate.py", description="Render the firsttrust CLIs' man pages.")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--site", type=Path, help="import firsttrust from this directory first")
    parser.add_argument("progs", nargs="*", metavar="PROG", help=f"default: {' '.join(PAGES)}")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.progs) - set(PAGES))
    if unknown:
        parser.error(f"no man page for {', '.join(unknown)} (known: {', '.join(PAGES)})")
    if args.site:
        sys.path.insert(0, str(args.site.resolve()))
    import firsttrust

    if args.site and not Path(firsttrust.__file__).resolve().is_relative_to(args.site.resolve()):
        raise SystemExit(f"generate.py: imported firsttrust from {firsttrust.__file__}, not from {args.site}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for prog in args.progs or PAGES:
        out = args.out_dir / f"{prog}.1"
        out.write_text(render(prog, page_date(), firsttrust.__version__), encoding="utf-8")
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
