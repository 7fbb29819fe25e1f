"""common/cli.py: the base of the three command-line tools (exit codes, one line, no traceback)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firsttrust.agent import cli as agent_cli
from firsttrust.common.cli import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Guard, Parser, \
    Subcommand, UsageError, add_subcommands
from firsttrust.errors import FirsttrustError
from firsttrust.lab import cli as lab_cli
from firsttrust.requester import cli as requester_cli


def raising(exc):
    def command():
        raise exc
    return command


def test_the_three_clis_share_one_usage_error_a_firsttrust_error():
    assert agent_cli.UsageError is requester_cli.UsageError is lab_cli.UsageError is UsageError
    assert issubclass(UsageError, FirsttrustError) and UsageError.code == "usage"


@pytest.mark.parametrize("exc, code, line", [
    (FirsttrustError("refused"), EXIT_FAILED, "tool: error: refused\n"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp/a\nb"), EXIT_FAILED,
     "tool: error: cannot use /tmp/a\\nb: Is a directory\n"),  # a path of two lines: one line still
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x"), EXIT_FAILED, "tool: error: cannot use /x: Is a directory\n"),
    (ValueError("SEC-A=hunter2"), EXIT_FAILED,
     "tool: error: internal error (ValueError); nothing secret was printed\n"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, ""),
    (RecursionError("maximum recursion depth exceeded"), EXIT_USAGE,
     "tool: error: an input is nested too deeply to read\n"),
])
def test_whatever_escapes_is_one_line_and_a_documented_code(exc, code, line, capsys):
    assert Guard("tool").run(raising(exc)) == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", line)


def test_a_peers_terminal_escapes_reach_stderr_as_escapes_never_raw(capsys):
    """A peer's text (an error an appliance or vCenter sent) with a terminal's escape sequences,
    7-bit (ESC ], OSC: sets the window title) and 8-bit (C1 CSI, U+009B: clears the screen)."""
    assert Guard("tool").run(raising(FirsttrustError("peer said \x1b]0;owned\x07\x9b2J\x7f\tdone"))) == EXIT_FAILED
    assert capsys.readouterr().err == "tool: error: peer said \\x1b]0;owned\\x07\\x9b2J\\x7f\\tdone\n"


def test_typed_errors_go_through_the_tools_own_table(capsys):
    guard = Guard("tool", lambda exc: 7 if isinstance(exc, UsageError) else EXIT_FAILED)
    assert guard.run(raising(UsageError("bad"))) == 7
    assert capsys.readouterr().err == "tool: error: bad\n"


def test_a_closed_stdout_is_quiet_and_141(monkeypatch, capsys):
    silenced = []
    monkeypatch.setattr("firsttrust.common.cli.silence_broken_pipe", lambda: silenced.append(1) or EXIT_BROKEN_PIPE)
    assert Guard("tool").run(raising(BrokenPipeError())) == EXIT_BROKEN_PIPE
    assert silenced == [1] and capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [
    ["firsttrust", "pins", "list"],  # print() to a closed stdout is silent: it exited 0 with nothing
    ["firsttrust", "identity"],  # sys.stdout.buffer: it was an internal error (AttributeError)
    ["firsttrust-agent", "status", "--state-dir", "/nonexistent"],
])
def test_a_command_started_with_stdout_closed_fails_with_one_line(argv, tmp_path):
    command = [str(Path(sys.executable).with_name(argv[0])), *argv[1:]]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60,
                          env={**os.environ, "FIRSTTRUST_HOME": str(tmp_path)},
                          preexec_fn=lambda: os.close(1))
    assert done.returncode == EXIT_FAILED
    assert done.stderr.endswith(": error: standard output is closed; nothing was done\n")
    assert done.stderr.count("\n") == 1


def test_a_command_started_with_stderr_closed_keeps_its_output_clean(tmp_path):
    """`deploy-spec ... > spec.xml 2>&-`: print(file=sys.stderr) with no stderr writes to stdout,
    and the secrets file's loose-mode warning became the first line of the XML."""
    secrets = tmp_path / "s.json"
    secrets.write_text('{"sec_a": "' + "A" * 43 + '", "sec_b": "' + "B" * 43 + '"}')
    secrets.chmod(0o644)
    command = [str(Path(sys.executable).with_name("firsttrust")), "deploy-spec", "--secrets", str(secrets),
               "--format", "ovf-properties"]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(2),
                          env={**os.environ, "FIRSTTRUST_HOME": str(tmp_path)})
    assert done.returncode == 0
    assert done.stdout.lstrip().startswith("<") and "warning" not in done.stdout


def test_deploy_spec_into_a_closed_pipe_is_quiet_and_141(tmp_path):
    firsttrust = str(Path(sys.executable).with_name("firsttrust"))
    secrets = tmp_path / "s.json"
    subprocess.run([firsttrust, "secrets", "new", "--out", str(secrets)], check=True, capture_output=True)
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the first write gets EPIPE
    try:
        done = subprocess.run([firsttrust, "deploy-spec", "--secrets", str(secrets), "--format", "govc"],
                              stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (EXIT_BROKEN_PIPE, "")


def test_the_lab_announces_an_interrupt_and_its_debug_switch_lets_a_bug_raise(monkeypatch, capsys):
    guard = Guard("lab", on_interrupt="interrupted", debug_env="TOOL_DEBUG")
    assert guard.run(raising(KeyboardInterrupt())) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "lab: interrupted\n"
    monkeypatch.setenv("TOOL_DEBUG", "1")
    with pytest.raises(ValueError):
        guard.run(raising(ValueError("x")))


def test_help_exits_only_where_the_tool_asks_for_it():
    assert Guard("tool", help_exits=True).run(raising(SystemExit(0))) == 0
    with pytest.raises(SystemExit):
        Guard("tool").run(raising(SystemExit(0)))


def test_the_parser_raises_a_usage_error_and_the_table_dispatches():
    parser = Parser(prog="tool")
    ran = []
    add_subcommands(parser, [Subcommand(("a", "b"), "the a b command", lambda p: p.add_argument("--n", type=int),
                                        lambda args: ran.append(args.n) or 0)],
                    shared=lambda p: p.add_argument("--root"), metavar="COMMAND")
    args = parser.parse_args(["a", "b", "--n", "3", "--root", "r"])
    assert (args.run(args), ran, args.root) == (0, [3], "r")
    with pytest.raises(UsageError, match="invalid int value"):
        parser.parse_args(["a", "b", "--n", "x"])
    assert EXIT_USAGE == 2


def test_a_table_cell_holding_a_peers_line_breaks_or_escapes_stays_on_its_line():
    """A peer's error message (batch report), a database's unsigned text (fleet pending): a C1
    CSI (U+009B) or a newline in a cell reached the terminal raw."""
    from firsttrust.common.cli import table

    shown = table(("NAME", "ERROR"), [("app-01", "refused\x9b2J\nforged row\x1b[31m")])
    assert "\x9b" not in shown and "\x1b" not in shown and len(shown.splitlines()) == 2


def test_a_batch_progress_line_quoting_a_peers_message_is_one_line_without_escapes(capsys):
    from firsttrust.credentials import EnrollmentSecrets
    from firsttrust.errors import PeerRefused
    from firsttrust.requester.batch import Outcome, Target
    from firsttrust.requester.cli import _Progress

    progress = _Progress(1, terminal=False)
    refused = PeerRefused("busy", "try later\x9b2J\nfirsttrust: app-02: enrolled")
    progress.step(Outcome(Target("app-01", "10.0.0.5", EnrollmentSecrets.generate()), None, refused, 0.1))
    err = capsys.readouterr().err
    assert "\x9b" not in err and err.count("\n") == 1
