"""Every name the project's Python uses is defined (pyflakes' undefined-name checks).

A name used only on a rare path (a signal handler's error branch, an exception handler) fails only
when that path runs: requester/cli.py's interrupted batch called `silence_broken_pipe` without
importing it, and the NameError stayed hidden because `exit_now` ended the process in the handler's
`finally`. Reading each module statically finds such names before a user's Ctrl-C does."""

from pathlib import Path

import pytest
from pyflakes import api, messages

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("firsttrust", "agent", "requester", "common", "lab", "bench", "tests")
UNDEFINED = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


class _Collect:
    def __init__(self) -> None:
        self.found: list[str] = []

    def flake(self, message) -> None:
        if isinstance(message, UNDEFINED):
            self.found.append(str(message))

    def unexpectedError(self, filename, msg) -> None:  # noqa: N802 - pyflakes' reporter interface
        self.found.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:  # noqa: N802
        self.found.append(f"{filename}:{lineno}: {msg}")


def _sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def test_every_name_used_in_the_projects_python_is_defined():
    collect = _Collect()
    for path in _sources():
        api.check(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), collect)
    assert collect.found == []


def test_the_check_finds_a_name_used_only_in_an_error_branch():
    collect = _Collect()
    api.check("def f():\n    try:\n        pass\n    except OSError:\n        silence()\n", "x.py", collect)
    assert collect.found and "silence" in collect.found[0]


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_folder_checked_has_python(folder):
    assert any((ROOT / folder).rglob("*.py"))
