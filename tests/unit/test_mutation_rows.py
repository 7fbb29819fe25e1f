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


# --- only a real kill counts ------------------------------------------------------------------------

ROW = dict(id="r", file="m.py", original="a", replacement="b", tests=("t",), why="w")
PASSED = gate.Outcome("passed", "", passed=frozenset({"t::a", "t::b"}))


def test_a_failure_of_a_test_that_passed_unmutated_is_a_kill():
    mutated = gate.Outcome("failed", "", failed=("t::b",), passed=frozenset({"t::a"}))
    assert gate.verdict(gate.Mutant(**ROW), PASSED, mutated)[0] == "killed"
    assert gate.verdict(gate.Mutant(**ROW), PASSED, gate.Outcome("passed", ""))[0] == "SURVIVED"


def test_failures_the_unmutated_copy_shares_or_setup_errors_are_gate_errors_not_kills():
    failing_baseline = gate.Outcome("failed", "", failed=("t::b",), passed=frozenset({"t::a"}))
    mutated = gate.Outcome("failed", "", failed=("t::b",), passed=frozenset({"t::a"}))
    assert gate.verdict(gate.Mutant(**ROW), failing_baseline, mutated)[0] == "ERROR"
    other = gate.Outcome("failed", "", failed=("t::new",))
    assert gate.verdict(gate.Mutant(**ROW), PASSED, other)[0] == "ERROR"
    assert gate.verdict(gate.Mutant(**ROW), PASSED, gate.Outcome("error", "setup"))[0] == "ERROR"


def test_a_timeout_is_a_kill_only_for_a_liveness_row():
    hung = gate.Outcome("timeout", "hung")
    assert gate.verdict(gate.Mutant(**ROW), PASSED, hung)[0] == "ERROR"
    assert gate.verdict(gate.Mutant(**ROW, liveness=True), PASSED, hung)[0] == "killed"


def test_junit_tells_a_call_failure_and_a_teardown_check_from_a_setup_or_collection_error(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text("""<testsuites><testsuite>
      <testcase classname="t" name="ok"/>
      <testcase classname="t" name="call"><failure message="assert 0"/></testcase>
      <testcase classname="t" name="guard"><error message="failed on teardown with &quot;x&quot;"/></testcase>
      <testcase classname="t" name="setup"><error message="failed on setup with &quot;x&quot;"/></testcase>
      <testcase classname="" name="t"><error message="collection failure"/></testcase>
      <testcase classname="t" name="skip"><skipped message="s"/></testcase>
    </testsuite></testsuites>""")
    passed, failed, errored = gate._junit(report)
    assert (passed, failed, errored) == ({"t::ok"}, {"t::call", "t::guard"}, {"t::setup", "::t"})


def test_a_row_field_the_driver_does_not_know_is_an_error(tmp_path):
    rows = tmp_path / "m.toml"
    rows.write_text('[[mutant]]\nid="x"\nfile="f"\noriginal="a"\nreplacement="b"\ntests=["t"]\nwhy="w"\nlivness=true\n')
    with pytest.raises(gate.StaleRow, match="unknown fields"):
        gate.load(rows)


def test_only_an_error_in_a_tests_setup_is_run_once_more_and_the_result_says_so(monkeypatch, tmp_path):
    def scripted(*outcomes):
        runs = []

        def fake(tree, base, tests, label, timeout):
            runs.append(label)
            return outcomes[len(runs) - 1]
        monkeypatch.setattr(gate, "_run_tests", fake)
        return runs

    setup_error = gate.Outcome("error", "gc-2: did not boot", in_setup=True)
    runs = scripted(setup_error, PASSED)
    outcome = gate.run_tests(tmp_path, tmp_path, ("t",), "mutant")
    assert outcome.status == "passed" and outcome.retried == "gc-2: did not boot" and len(runs) == 2
    # A survivor, a failure in a test's call, a timeout and an error outside setup stand as they came.
    for first in (gate.Outcome("passed", ""), gate.Outcome("failed", "", failed=("t::b",)),
                  gate.Outcome("timeout", "hung"), gate.Outcome("error", "pytest exit 4")):
        runs = scripted(first, PASSED)
        assert gate.run_tests(tmp_path, tmp_path, ("t",), "mutant") == first and len(runs) == 1
    # Twice in setup: an error still, never a kill.
    scripted(setup_error, setup_error)
    again = gate.run_tests(tmp_path, tmp_path, ("t",), "mutant")
    assert gate.verdict(gate.Mutant(**ROW), PASSED, again)[0] == "ERROR"
