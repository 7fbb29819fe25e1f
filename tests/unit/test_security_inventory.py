"""docs/security.md, the inventory of security promises, stays true to the code and the gate:
every gate row is named by a promise and every row a promise names exists; every test and every
enforcing function it names exists; the count it states is the count of its lines."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "mutation"))

import run as gate  # noqa: E402

DOC = (ROOT / "docs" / "security.md").read_text()
PROMISE = re.compile(r"^\| \d+\.\d+ \|.*\|$", re.M)


def promises() -> list[tuple[str, str, str, str, str]]:
    """(number, promise, enforced in, test, gate row) of each line of the inventory's tables."""
    lines = []
    for line in PROMISE.findall(DOC):
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        assert len(cells) == 5, f"not five cells (a | inside a cell?): {line}"
        lines.append(tuple(cells))
    return lines


def test_every_gate_row_is_named_by_a_promise_and_every_named_row_exists():
    rows = {m.id for m in gate.load()}
    named = {name for *_, cell in promises() for name in re.findall(r"`([A-Za-z0-9-]+)`", cell)}
    assert named - rows == set(), "rows the inventory names that the gate does not have"
    assert rows - named == set(), "gate rows no promise names: add the promise to docs/security.md"


def test_every_promise_names_a_test_that_exists():
    for number, _, _, tests, _ in promises():
        path = None
        for ref in re.findall(r"`([^`]+)`", tests):
            if ref.startswith("…"):
                continue
            file, _, name = ref.partition("::")
            if file:
                path = ROOT / "tests" / file
                assert path.is_file(), f"{number}: no tests/{file}"
            if name:
                assert path is not None and f"def {name.split('[')[0]}(" in path.read_text(), f"{number}: no {ref}"


def test_every_enforcing_function_named_exists():
    for number, _, enforced, _, _ in promises():
        source = None
        for ref in re.findall(r"`([^`]+)`", enforced):
            if ref.endswith(".py"):
                source = (ROOT / ref).read_text()
                continue
            assert source is not None, f"{number}: {ref} names no file before it"
            for part in ref.split("."):
                assert re.search(rf"^\s*(async )?(def|class) {re.escape(part)}\b", source, re.M), f"{number}: no {ref}"


def test_the_stated_count_is_the_count_of_promises():
    stated = re.search(r"\*\*Count: (\d+) promises, (\d+) gate rows\.\*\*", DOC)
    assert stated, "the inventory states its count"
    assert (int(stated.group(1)), int(stated.group(2))) == (len(promises()), len(gate.load()))
