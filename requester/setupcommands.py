"""Two helpers for setting a requester up: `firsttrust vcenter-thumbprint URL` and
`firsttrust completion bash|zsh`. Registered in cli.SUBCOMMANDS.

`vcenter-thumbprint` connects once, verifies nothing, and prints the SHA-1 thumbprint (as the
vSphere Client shows it) and the SHA-256 of the certificate the server presented, to put in
`--thumbprint`, FIRSTTRUST_VCENTER_THUMBPRINT or the config file (requester/profile.py). That is
trust on first use, and it says so: whoever answers on the path at that moment is who gets
pinned, so compare with the vSphere Client's certificate details or the VCSA console first.

`completion` prints a shell completion script built from the parser itself (every subcommand
word and option), so it never lags behind the CLI: `source <(firsttrust completion bash)`, or
for zsh `source <(firsttrust completion zsh)` (bashcompinit).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import ssl
import sys
from urllib.parse import urlsplit

from firsttrust.common.cli import EXIT_OK, UsageError
from firsttrust.errors import FirsttrustError

from .profile import host_name_ok, shown_url
from .vcenter_tls import format_thumbprint

CONNECT_TIMEOUT = 10.0


class ThumbprintReadFailed(FirsttrustError):
    """The server could not be reached, or presented no certificate."""

    code = "thumbprint_read"


def thumbprint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="https://HOST[:PORT][/sdk] of vCenter or ESXi")


def read_certificate(url: str, timeout: float = CONNECT_TIMEOUT) -> bytes:
    """The DER certificate the TLS server at `url` presents (nothing verified, nothing sent after).

    Raises:
        UsageError: not an https://HOST[:PORT] URL.
        ThumbprintReadFailed: unreachable, no TLS, or no certificate.
    """
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        port = parts.port or 443  # raises ValueError for a port out of range or not a number
    except ValueError:
        parts, port = None, 0
    if parts is None or parts.scheme != "https" or not host_name_ok(parts.hostname) or "@" in parts.netloc:
        raise UsageError(f"{shown_url(url)!r} is not an https://HOST[:PORT] URL")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # trust on first use: read, do not judge
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ThumbprintReadFailed(f"cannot read the certificate of {parts.hostname}:{port}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
    if not der:
        raise ThumbprintReadFailed(f"{parts.hostname} presented no certificate")
    return der


def vcenter_thumbprint(args: argparse.Namespace) -> int:
    der = read_certificate(args.url)
    print(format_thumbprint(hashlib.sha1(der).digest()))  # noqa: S324 - vCenter's own thumbprint format
    print(f"sha256 {format_thumbprint(hashlib.sha256(der).digest())}")
    print("firsttrust: this is trust on first use: the thumbprint is of whoever answered just now. Compare it "
          "with the vSphere Client (certificate details) or the VCSA console before putting it in --thumbprint, "
          "FIRSTTRUST_VCENTER_THUMBPRINT or the config file.", file=sys.stderr)
    return EXIT_OK


def completion_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=("bash", "zsh"))


def completion(args: argparse.Namespace) -> int:
    from .cli import PROG, build_parser

    sys.stdout.write(completion_script(build_parser(), PROG))
    return EXIT_OK


def _words(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """"sub command" path -> the words that may follow it (subcommands, then options)."""
    table: dict[str, list[str]] = {}
    words: list[str] = []
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                table.update(_words(sub, f"{prefix} {name}".strip()))
        else:
            words += [option for option in action.option_strings if option.startswith("--")]
    table[prefix] = words
    return table


def completion_script(parser: argparse.ArgumentParser, prog: str) -> str:
    """A bash completion function (zsh runs it through bashcompinit): the longest run of words
    typed that names a subcommand picks the candidates; a file name otherwise."""
    table = _words(parser)
    cases = "\n".join(f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(table.items()))
    function = f"_{prog.replace('-', '_')}_complete"
    return f"""# {prog} completion; generated by `{prog} completion`. bash: source <({prog} completion bash)
# zsh: autoload -U +X bashcompinit && bashcompinit; source <({prog} completion zsh)
{function}() {{
    local current=${{COMP_WORDS[COMP_CWORD]}} path="" word words candidate
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) continue ;; esac
        candidate="${{path:+$path }}$word"
        case "$candidate" in
{chr(10).join(f'            "{path}") path="$candidate" ;;' for path in sorted(table) if path)}
        esac
    done
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$current"))
    [ ${{#COMPREPLY[@]}} -eq 0 ] && COMPREPLY=($(compgen -f -- "$current"))
    return 0
}}
complete -F {function} {prog}
"""
