"""The mutation gate: break each security check in tests/mutation/mutants.toml, one line at a
time, in a scratch copy of the tree, and require the listed tests to notice.

    python tests/mutation/run.py [--jobs N] [--only ID ...] [--baseline] [--keep]

A row names a file, an exact snippet that must occur there exactly once, its replacement, the
tests to run and why the check matters. A row whose snippet is missing or ambiguous, whose
replacement does not compile, or whose tests cannot run (pytest exit codes other than 0 and 1)
is an error, never a pass: a stale row must not look like a killed mutant.

Each mutant runs in its own copy of the tree (no .venv, .git, build or caches), with the
project's venv interpreter and PYTHONPATH pointing at the copy. The venv's editable install
maps firsttrust.agent/.requester/.lab to the real tree; the copy gets firsttrust/agent,
firsttrust/requester and firsttrust/lab symlinks to its own agent/, requester/ and lab/, so the
path finder (which runs before the editable finder) resolves every firsttrust module inside the
copy. tests/conftest.py asserts that in the mutant's own test process (FIRSTTRUST_EXPECT_TREE),
and this driver checks it once more before running any test.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = Path(__file__).with_name("mutants.toml")
IGNORE = shutil.ignore_patterns(".venv*", ".git", "build", "__pycache__", ".pytest_cache", ".hypothesis",
                                "*.egg-info")
# The installed import names and the folders they live in (pyproject.toml's package-dir).
MAPPED = {"agent": "agent", "requester": "requester", "lab": "lab"}
PER_MUTANT_TIMEOUT = 300


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    why: str


class StaleRow(Exception):
    """The row no longer matches the code: fix the row, do not skip it."""


def load(path: Path = MUTANTS) -> list[Mutant]:
    rows = tomllib.loads(path.read_text())["mutant"]
    mutants = []
    for row in rows:
        missing = {"id", "file", "original", "replacement", "tests", "why"} - row.keys()
        if missing:
            raise StaleRow(f"row {row.get('id', '?')}: missing {sorted(missing)}")
        mutants.append(Mutant(row["id"], row["file"], row["original"], row["replacement"], tuple(row["tests"]),
                              row["why"]))
    ids = [m.id for m in mutants]
    if len(set(ids)) != len(ids):
        raise StaleRow("duplicate mutant ids")
    return mutants


def make_scratch(base: Path) -> Path:
    tree = base / "tree"
    shutil.copytree(ROOT, tree, ignore=IGNORE, symlinks=True)
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


def run_mutant(mutant: Mutant, baseline: bool, keep: bool) -> tuple[Mutant, str, float, str]:
    """Returns (mutant, verdict, seconds, detail); verdict is killed, SURVIVED or ERROR."""
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix=f"mutant-{mutant.id}-"))
    try:
        tree = make_scratch(base)
        if not baseline:
            apply(tree, mutant)
        check_imports(tree)
        # Its own basetemp: pytest prunes old numbered dirs under the shared default, and two
        # mutants (or another pytest run on this machine) must not prune each other's.
        argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
                f"--basetemp={base / 'pytest'}", *mutant.tests]
        try:
            out = subprocess.run(argv, cwd=tree, env=environment(tree), capture_output=True, text=True,
                                 timeout=PER_MUTANT_TIMEOUT)
        except subprocess.TimeoutExpired:
            return mutant, "killed", time.monotonic() - started, f"tests hung past {PER_MUTANT_TIMEOUT} s"
        tail = (out.stdout.strip().splitlines() or [""])[-1]
        if out.returncode == 0:
            return mutant, "passed" if baseline else "SURVIVED", time.monotonic() - started, tail
        if out.returncode == 1:
            return mutant, "FAILED" if baseline else "killed", time.monotonic() - started, tail
        return mutant, "ERROR", time.monotonic() - started, f"pytest exit {out.returncode}: {out.stdout[-2000:]}" \
                                                            f"{out.stderr[-2000:]}"
    except StaleRow as exc:
        return mutant, "ERROR", time.monotonic() - started, f"stale row: {exc}"
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
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_mutant, m, args.baseline, args.keep) for m in mutants]
        for future in concurrent.futures.as_completed(futures):
            mutant, verdict, seconds, detail = future.result()
            results.append((mutant, verdict))
            print(f"{verdict:8} {mutant.id:32} {seconds:5.1f}s  {mutant.why}", flush=True)
            if verdict not in ("killed", "passed"):
                print(f"         {mutant.file}: {detail}", flush=True)
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
