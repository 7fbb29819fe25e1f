"""packaging/man/generate.py: the man pages follow the argparse definitions and say what argparse cannot."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import firsttrust

REPO = Path(__file__).resolve().parents[2]
GENERATE = REPO / "packaging/man/generate.py"

spec = importlib.util.spec_from_file_location("generate_man", GENERATE)
generate = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = generate  # dataclasses look their module up there
spec.loader.exec_module(generate)


def plain(roff: str) -> str:
    return roff.replace("\\-", "-").replace("\\e", "\\")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("man")
    run = subprocess.run([sys.executable, str(GENERATE), "--out-dir", str(out)], capture_output=True, text=True,
                         env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(out / f"{prog}.1") for prog in ("firsttrust", "firsttrust-agent", "firsttrust-lab")]
    return {path.stem: path for path in out.iterdir()}


@pytest.mark.parametrize("prog", ["firsttrust", "firsttrust-agent", "firsttrust-lab"])
def test_every_subcommand_and_option_of_the_parser_is_on_the_page(pages: dict[str, Path], prog: str) -> None:
    page = plain(pages[prog].read_text())
    assert f'.TH {prog.upper()} 1 "2023-11-14" "firsttrust {firsttrust.__version__}"' in page  # SOURCE_DATE_EPOCH
    parser = importlib.import_module(generate.PAGES[prog].module).build_parser()
    leaves = [leaf for leaf in generate.subcommands(parser) if leaf[0]]
    assert len(leaves) >= 4
    commands = page.split("\n.SH COMMANDS\n")[1].split("\n.SH ")[0]
    for words, _, sub in leaves:
        block = commands.split(f".SS {' '.join(words)}\n")[1].split("\n.SS ")[0]
        for action in sub._actions:
            if action.option_strings and "--help" not in action.option_strings:
                # Its own paragraph: ".TP", then ".B --option METAVAR", then its help.
                assert f"\n.TP\n.B {', '.join(action.option_strings)}" in block, (words, action.option_strings)
                if action.help:
                    assert " ".join(action.help.split()).split("%")[0][:30] in block, (words, action.help)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT" if prog != "firsttrust-agent"
                    else "FILES", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert f"\n.SH {section}\n" in page, section
    if shutil.which("man"):
        run = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(pages[prog])],
                             capture_output=True, text=True, env={**os.environ, "MANWIDTH": "80"}, timeout=60)
        assert run.returncode == 0 and run.stderr == "", run.stderr


def test_the_requester_page_names_its_store(pages: dict[str, Path]) -> None:
    page = plain(pages["firsttrust"].read_text())
    environment = page.split("\n.SH ENVIRONMENT\n")[1].split("\n.SH ")[0]
    assert "FIRSTTRUST_HOME" in environment and "XDG_DATA_HOME" in environment


def test_the_exit_status_comes_from_the_clis_docstring(pages: dict[str, Path]) -> None:
    agent = plain(pages["firsttrust-agent"].read_text()).split("\n.SH EXIT STATUS\n")[1].split("\n.SH ")[0]
    assert [line.removeprefix(".B ") for line in agent.splitlines() if line.startswith(".B ")] == ["0", "1", "2", "3"]
    assert "Not provisioned yet" in agent


def test_a_cli_without_exit_codes_fails_the_generation() -> None:
    module = types.ModuleType("firsttrust.nowhere", "A CLI that forgot to document its exit codes.")
    with pytest.raises(SystemExit, match="no 'Exit codes:' paragraph"):
        generate.exit_codes(module)
    module.__doc__ = "x.\n\nExit codes: 0 fine; 1 the operation failed (a; b); 2 bad usage.\n"
    assert generate.exit_codes(module) == [("0", "fine"), ("1", "the operation failed (a; b)"), ("2", "bad usage")]


def test_roff_escapes_what_would_be_taken_for_a_request() -> None:
    assert generate.text(".hidden") == "\\&.hidden"
    assert generate.text("back\\slash") == "back\\eslash"
    assert generate.literal("--state-dir") == "\\-\\-state\\-dir"
