"""The mutation gate's rows and driver (tests/mutation/), checked fast in the ordinary suite:
every row still matches the code exactly once, and the driver refuses a stale row."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "mutation"))

import run as gate  # noqa: E402


def test_every_row_matches_its_file_exactly_once_and_its_tests_exist():
    mutants = gate.load()
    assert len(mutants) >= 15
    for mutant in mutants:
        text = (ROOT / mutant.file).read_text()
        assert text.count(mutant.original) == 1, f"{mutant.id}: stale row (snippet found {text.count(mutant.original)}x)"
        for test in mutant.tests:
            path, _, name = test.partition("::")
            assert (ROOT / path).is_file(), f"{mutant.id}: no {path}"
            if name:
                assert f"def {name.split('[')[0]}(" in (ROOT / path).read_text(), f"{mutant.id}: no test {name}"


def test_a_stale_or_ambiguous_row_is_an_error_not_a_pass(tmp_path):
    (tmp_path / "m.py").write_text("x = 1\nx = 1\n")
    row = dict(id="r", file="m.py", tests=("t",), why="w")
    with pytest.raises(gate.StaleRow, match="0 times"):
        gate.apply(tmp_path, gate.Mutant(original="y = 1", replacement="y = 2", **row))
    with pytest.raises(gate.StaleRow, match="2 times"):
        gate.apply(tmp_path, gate.Mutant(original="x = 1", replacement="x = 2", **row))
    (tmp_path / "m.py").write_text("x = 1\n")
    with pytest.raises(gate.StaleRow, match="does not compile"):
        gate.apply(tmp_path, gate.Mutant(original="x = 1", replacement="x = (", **row))
    gate.apply(tmp_path, gate.Mutant(original="x = 1", replacement="x = 2", **row))
    assert (tmp_path / "m.py").read_text() == "x = 2\n"


def test_the_scratch_copy_imports_its_own_firsttrust(tmp_path):
    tree = gate.make_scratch(tmp_path)
    assert not (tree / ".venv").exists() and not (tree / ".git").exists()
    gate.check_imports(tree)  # raises unless firsttrust, .agent, .requester, .lab are the copy's
    # Without the copy's own firsttrust/agent link the venv's editable finder would hand out the
    # real tree's agent: the driver must notice.
    (tree / "firsttrust" / "agent").unlink()
    with pytest.raises(RuntimeError, match="does not import from the scratch copy"):
        gate.check_imports(tree)
