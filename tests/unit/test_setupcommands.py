"""`firsttrust completion`: a script bash runs, completing subcommands and options from the parser."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from firsttrust.requester.cli import PROG, build_parser
from firsttrust.requester.setupcommands import completion_script


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("typed, expected", [
    ("firsttrust pins ex", "export"),
    ("firsttrust deploy --che", "--check"),
    ("firsttrust dest", "destroy"),
    ("firsttrust enroll --rep", "--replace"),
])
def test_bash_completes_subcommands_and_their_options(tmp_path, typed, expected):
    script = tmp_path / "completion.sh"
    script.write_text(completion_script(build_parser(), PROG))
    words = typed.split()
    program = (f"source {script}; COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; "
               f"_firsttrust_complete; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected]
