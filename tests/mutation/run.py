"""The mutation gate: break each security check in tests/mutation/mutants.toml, one line at a
time, in a scratch copy of the tree, and require the listed tests to notice.

    python tests/mutation/run.py [--jobs N] [--only ID ...] [--baseline] [--keep]

A row names a file, an exact snippet that must occur there exactly once, its replacement, the
tests to run and why the check matters. A row whose snippet is missing or ambiguous, whose
replacement does not compile, or whose tests cannot run (pytest exit codes other than 0 and 1)
is an error, never a pass: a stale row must not look like a killed mutant.

Only a real kill counts. Each row's tests run first on an unmutated scratch copy, in the same
run and with the same arguments (one baseline per distinct test list); they must all pass, or
the row is an ERROR. With the mutant in place, the row is killed only when a test that passed on
the baseline fails in its call (a JUnit <failure>) or in the checks its teardown makes (the
suite's secret guard). An error in collection, in a fixture's setup, or of pytest itself is an
ERROR of the gate, never a kill. A run that errs in a test's setup (the gate's two test processes
share two cores, loopback and the lab's addresses) is run once more, and the report says so; a
survivor, a failure and a timeout are never re-run. A timeout is a kill only for a row marked `liveness = true` (the row guards
a promise that something ends: a deadline, a slot released); for any other row it is an ERROR.

Each mutant runs in its own copy of the tree (no .venv, .git, build or caches), with the
project's venv interpreter and PYTHONPATH pointing at the copy. The venv's editable install
maps firsttrust.agent/.requester/.lab/.common to the real tree; the copy gets firsttrust/agent,
firsttrust/requester, firsttrust/lab and firsttrust/common symlinks to its own folders, so the
path finder (which runs before the editable finder) resolves every firsttrust module inside the
copy. tests/conftest.py asserts that in the mutant's own test process (FIRSTTRUST_EXPECT_TREE),
and this driver checks it once more before running any test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = Path(__file__).with_name("mutants.toml")
_IGNORE_NAMES = shutil.ignore_patterns(".venv*", ".git", "build", "__pycache__", ".pytest_cache", ".hypothesis",
                                      "*.egg-info")
# The installed import names and the folders they live in (pyproject.toml's package-dir).
MAPPED = {"agent": "agent", "requester": "requester", "lab": "lab", "common": "common"}
# Whole-file rows run in 5-60 s on 2 shared cores; a row's tests that take longer are stuck.
PER_MUTANT_TIMEOUT = 240


def _ignore(directory: str, names: list[str]) -> set[str]:
    """What a scratch copy leaves out: the venv, git, build output, caches, and (when the tree
    being copied is itself a scratch copy, as in the suite run by the gate) its firsttrust/agent,
    requester and lab links, which make_scratch creates afresh."""
    ignored = set(_IGNORE_NAMES(directory, names))
    if Path(directory).name == "firsttrust":
        ignored |= {name for name in names if name in MAPPED and os.path.islink(os.path.join(directory, name))}
    return ignored


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    why: str
    liveness: bool = False  # a timeout of its tests is a kill (the row guards that something ends)


class StaleRow(Exception):
    """The row no longer matches the code: fix the row, do not skip it."""


def load(path: Path = MUTANTS) -> list[Mutant]:
    rows = tomllib.loads(path.read_text())["mutant"]
    mutants = []
    for row in rows:
        missing = {"id", "file", "original", "replacement", "tests", "why"} - row.keys()
        if missing:
            raise StaleRow(f"row {row.get('id', '?')}: missing {sorted(missing)}")
        unknown = row.keys() - {"id", "file", "original", "replacement", "tests", "why", "liveness"}
        if unknown:
            raise StaleRow(f"row {row['id']}: unknown fields {sorted(unknown)}")
        if not isinstance(row.get("liveness", False), bool):
            raise StaleRow(f"row {row['id']}: liveness is true or false")
        mutants.append(Mutant(row["id"], row["file"], row["original"], row["replacement"], tuple(row["tests"]),
                              row["why"], row.get("liveness", False)))
    ids = [m.id for m in mutants]
    if len(set(ids)) != len(ids):
        raise StaleRow("duplicate mutant ids")
    return mutants


def make_scratch(base: Path) -> Path:
    tree = base / "tree"
    shutil.copytree(ROOT, tree, ignore=_ignore, symlinks=True)
    for name, folder in MAPPED.items():
        (tree / "firsttrust" / name).symlink_to(Path("..") / folder)
    return tree


def apply(tree: Path, mutant: Mutant) -> None:
    target = tree / mutant.file
    if not target.is_file():
        raise StaleRow(f"{mutant.file} does not exist")
    text = target.read_text()
    count = text.count(mutant.original)
    if count != 1:
        raise StaleRow(f"the original snippet occurs {count} times in {mutant.file} (must be exactly once)")
    if mutant.original == mutant.replacement:
        raise StaleRow("replacement equals the original")
    mutated = text.replace(mutant.original, mutant.replacement)
    if target.suffix == ".py":
        try:
            compile(mutated, str(target), "exec")
        except SyntaxError as exc:
            raise StaleRow(f"the mutated {mutant.file} does not compile: {exc}") from None
    target.write_text(mutated)


def environment(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(tree)
    env["FIRSTTRUST_EXPECT_TREE"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # The lab's simulator binary is cached by the hash of its sources (lab/vcsim.py): share the
    # real tree's cache instead of building it (minutes) in every copy, which has no build/.
    env.setdefault("FIRSTTRUST_VCSIM_CACHE", str(ROOT / "build" / "vcsim"))
    return env


CHECK_IMPORTS = """
import sys, firsttrust, firsttrust.agent, firsttrust.requester, firsttrust.lab, firsttrust.agent.sources
for module in (firsttrust, firsttrust.agent, firsttrust.requester, firsttrust.lab, firsttrust.agent.sources):
    print(module.__file__)
"""


def check_imports(tree: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CHECK_IMPORTS], cwd=tree, env=environment(tree),
                         capture_output=True, text=True, timeout=60)
    files = out.stdout.split()
    if out.returncode != 0 or len(files) != 5 or not all(f.startswith(str(tree) + os.sep) for f in files):
        raise RuntimeError(f"firsttrust does not import from the scratch copy {tree}: {out.stdout}{out.stderr}")


class Outcome(NamedTuple):
    """One pytest run of a row's tests in a scratch copy."""

    status: str  # "passed" | "failed" (see _junit) | "error" | "timeout"
    detail: str
    failed: tuple[str, ...] = ()  # node ids that failed in their call or teardown
    passed: frozenset[str] = frozenset()
    in_setup: bool = False  # an error in a test's collection or setup: its call never ran
    retried: str = ""  # the first run's error, when this is the second run (see run_tests)


def _junit(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(passed, failed, errored) node ids: failed in its call or its teardown's checks (a JUnit
    <failure>, or an <error> "failed on teardown"), errored in collection or setup."""
    passed, failed, errored = set(), set(), set()
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return passed, failed, errored
    for case in root.iter("testcase"):
        node = f"{case.get('classname')}::{case.get('name')}"
        errors = [e.get("message", "") for e in case.iter("error")]
        if any(not message.startswith("failed on teardown") for message in errors):
            errored.add(node)  # collection or setup: the test never ran
        elif errors or case.find("failure") is not None:
            failed.add(node)  # its call, or the checks its teardown makes (the secret guard)
        elif case.find("skipped") is None:
            passed.add(node)
    return passed, failed, errored


def run_tests(tree: Path, base: Path, tests: tuple[str, ...], label: str,
              timeout: float = PER_MUTANT_TIMEOUT) -> Outcome:
    """The row's tests in `tree`, stopping at the first failure; what failed, and how.

    A run whose error is in a test's setup (a fixture could not build its world: two test
    processes of the gate share two cores, one loopback and the lab's addresses) is run once
    more, and the result says so. Nothing else is retried: a mutant that survives, a failure in
    a test's call, or a timeout stands as it came.
    """
    first = _run_tests(tree, base, tests, label, timeout)
    if first.status != "error" or not first.in_setup:
        return first
    second = _run_tests(tree, base, tests, f"{label}-again", timeout)
    return second._replace(retried=first.detail[-600:])


def _run_tests(tree: Path, base: Path, tests: tuple[str, ...], label: str, timeout: float) -> Outcome:
    check_imports(tree)
    report = base / f"{label}.xml"
    # Its own basetemp: pytest prunes old numbered dirs under the shared default, and two
    # mutants (or another pytest run on this machine) must not prune each other's. Short
    # names: tests bind AF_UNIX sockets (108 bytes at most) under it.
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
            f"--basetemp={base / label[0]}", f"--junitxml={report}", "-o", "junit_family=xunit1", *tests]
    # Its own session: on a timeout the whole group goes (agents, simulators the tests started).
    with subprocess.Popen(argv, cwd=tree, env=environment(tree), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Outcome("timeout", f"tests hung past {timeout:.0f} s")
    out = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    tail = (out.stdout.strip().splitlines() or [""])[-1]
    passed, failed, errored = _junit(report)
    if out.returncode == 0 and not failed and not errored:
        return Outcome("passed", tail, passed=frozenset(passed))
    if out.returncode == 1 and failed and not errored:
        return Outcome("failed", tail, tuple(sorted(failed)), frozenset(passed))
    return Outcome("error", f"pytest exit {out.returncode}, errors in {sorted(errored)[:3]}: "
                            f"{out.stdout[-2000:]}{out.stderr[-2000:]}", in_setup=bool(errored) and not failed)


class Baselines:
    """Each distinct test list's run on an unmutated scratch copy, once per gate run."""

    def __init__(self, timeout: float = PER_MUTANT_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, ...], tuple[threading.Lock, list[Outcome]]] = {}

    def get(self, tests: tuple[str, ...]) -> Outcome:
        with self._lock:
            lock, box = self._runs.setdefault(tests, (threading.Lock(), []))
        with lock:
            if not box:
                base = Path(tempfile.mkdtemp(prefix="mb"))
                try:
                    box.append(run_tests(make_scratch(base), base, tests, "baseline", self.timeout))
                finally:
                    shutil.rmtree(base, ignore_errors=True)
            return box[0]


def verdict(mutant: Mutant, baseline: Outcome, mutated: Outcome) -> tuple[str, str]:
    """(killed | SURVIVED | ERROR, detail): a kill is a failure (in its call, or in the checks
    its teardown makes) of a test that passed on the unmutated copy, or a timeout of a liveness
    row."""
    if baseline.status != "passed":
        return "ERROR", f"the row's tests do not pass on the unmutated copy ({baseline.status}): {baseline.detail}"
    if mutated.status == "passed":
        return "SURVIVED", mutated.detail
    if mutated.status == "timeout":
        return ("killed", mutated.detail) if mutant.liveness else \
            ("ERROR", f"{mutated.detail} (a timeout is a kill only for a liveness row)")
    if mutated.status == "failed":
        real = [node for node in mutated.failed if node in baseline.passed]
        if real:
            return "killed", f"{real[0]} failed"
        return "ERROR", f"failed only tests the baseline did not pass: {list(mutated.failed)}"
    return "ERROR", mutated.detail


def run_mutant(mutant: Mutant, baseline_only: bool, keep: bool,
               baselines: Baselines | None = None) -> tuple[Mutant, str, float, str]:
    """Returns (mutant, verdict, seconds, detail); verdict is killed, SURVIVED or ERROR (or,
    with `baseline_only`, passed or FAILED)."""
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="mt"))
    try:
        tree = make_scratch(base)
        apply(tree, mutant)  # a stale row is an error even when only the baseline is asked for
        if baseline_only:
            outcome = (baselines or Baselines()).get(mutant.tests)
            return mutant, "passed" if outcome.status == "passed" else "FAILED", time.monotonic() - started, \
                outcome.detail
        reference = (baselines or Baselines()).get(mutant.tests)
        if reference.status != "passed":
            result, detail = verdict(mutant, reference, reference)
            retried = reference.retried
        else:
            mutated = run_tests(tree, base, mutant.tests, "mutant", (baselines or Baselines()).timeout)
            result, detail = verdict(mutant, reference, mutated)
            retried = reference.retried or mutated.retried
        if retried:  # shown with the result, so a flaky setup stays visible
            detail = f"{detail}\n         (run twice: the first run's setup failed: {retried.strip().splitlines()[-1]})"
        return mutant, result, time.monotonic() - started, detail
    except StaleRow as exc:
        return mutant, "ERROR", time.monotonic() - started, f"stale row: {exc}"
    except RuntimeError as exc:  # check_imports: the copy does not import its own firsttrust
        return mutant, "ERROR", time.monotonic() - started, str(exc)
    finally:
        if keep:
            print(f"  kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--baseline", action="store_true",
                        help="run each row's tests on the unmutated copy: they must pass")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    parser.add_argument("--verbose", action="store_true", help="say which test killed each mutant")
    parser.add_argument("--timeout", type=float, default=PER_MUTANT_TIMEOUT,
                        help=f"seconds one run of a row's tests may take (default {PER_MUTANT_TIMEOUT}); past it "
                             "the run is a kill for a liveness row and an error for any other")
    args = parser.parse_args(argv)
    try:
        mutants = load()
    except (StaleRow, KeyError, tomllib.TOMLDecodeError) as exc:
        print(f"mutation gate: {MUTANTS}: {exc}", file=sys.stderr)
        return 2
    if args.only:
        unknown = set(args.only) - {m.id for m in mutants}
        if unknown:
            print(f"mutation gate: unknown mutant ids {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id:32} {m.file:32} {m.why}")
        return 0
    started = time.monotonic()
    results = []
    baselines = Baselines(args.timeout)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_mutant, m, args.baseline, args.keep, baselines) for m in mutants]
        for future in concurrent.futures.as_completed(futures):
            mutant, result, seconds, detail = future.result()
            results.append((mutant, result))
            print(f"{result:8} {mutant.id:32} {seconds:5.1f}s  {mutant.why}", flush=True)
            if result not in ("killed", "passed") or "(run twice:" in detail:
                print(f"         {mutant.file}: {detail}", flush=True)
            elif result == "killed" and args.verbose:
                print(f"         {detail}", flush=True)
    elapsed = time.monotonic() - started
    if args.baseline:
        passed = sum(v == "passed" for _, v in results)
        print(f"baseline passed {passed}/{len(results)} in {elapsed:.0f} s")
        return 0 if passed == len(results) else 1
    killed = sum(v == "killed" for _, v in results)
    print(f"mutants killed {killed}/{len(results)} in {elapsed:.0f} s")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
