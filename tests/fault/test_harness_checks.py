"""The kill matrix's own judgement, without processes: the parts that decide pass or fail must be
able to fail."""

from types import SimpleNamespace

from fault_cases import Outcome
from fault_harness import Checker, Observation, killed_call, strace_prefix

from firsttrust.credentials import EnrollmentSecrets


def test_killed_call_is_the_line_that_never_returned(tmp_path):
    trace = tmp_path / "kill.trace"
    trace.write_text('12 rename("a.tmp", "a") = 0\n12 rename("b.tmp", "b") = ?\n12 +++ killed by SIGKILL +++\n')
    assert killed_call(trace) == 'rename("b.tmp", "b")'
    assert killed_call(tmp_path / "absent") == "?"


def test_strace_prefix_kills_the_nth_call_of_the_family():
    argv = strace_prefix("rename", 3, "t", attach=42)
    assert "inject=rename,renameat,renameat2:signal=KILL:when=3" in argv and argv[-2:] == ["-p", "42"]
    assert "--seccomp-bpf" not in argv  # strace 6.1 never injects with it


def _checker(history):
    checker = Checker.__new__(Checker)
    checker.history = history
    return checker


def obs(label, phase, failures):
    return Observation(label, phase, failures, [], False, False)


def test_failure_count_may_only_fall_through_the_commit():
    checker = _checker([obs("after-kill", "provisioned", 2)])
    assert checker._check_failures(obs("after-restart", "provisioned", 2)) == []
    assert "without a commit" in checker._check_failures(obs("after-restart", "provisioned", 1))[0]
    assert checker._check_failures(obs("after-rerun", "enrolled", 0)) == []
    assert "failures is 1" in checker._check_failures(obs("after-rerun", "enrolled", 1))[0]
    assert any("failures is -1" in v for v in _checker([])._check_failures(obs("x", "provisioned", -1)))


def test_a_secret_anywhere_but_sec_b_is_reported(tmp_path):
    secrets = EnrollmentSecrets.generate()
    state, home, account = tmp_path / "state", tmp_path / "req", tmp_path / "acct"
    for path in (state, home, account):
        path.mkdir()
    (state / "sec-b").write_text(secrets.sec_b)
    world = SimpleNamespace(secrets=secrets, state=state, home=home, account=SimpleNamespace(home=account),
                            transcript=["listening"])
    checker = _checker([])
    checker.world = world
    assert checker.secret_violations() == []
    (home / "notes").write_text(f"x{secrets.sec_a}x")
    world.transcript.append(f"error near {secrets.sec_b}")
    found = checker.secret_violations()
    assert any("notes" in v for v in found) and any("log" in v for v in found)


def test_a_broken_kill_point_names_each_violation_once_with_where_it_was_seen():
    outcome = Outcome("agent", "rename", 4, killed=True, where="enrollment", steps=["run 1 rc=1"],
                      violations=["I1: x [after-kill]", "I1: x [after-restart]", "I3: y [after-rerun]"])
    assert outcome.broken() == ["I1: x [after-kill, after-restart]", "I3: y [after-rerun]"]
    assert "BROKEN: I1: x" in outcome.line() and "N=4" in outcome.line()
