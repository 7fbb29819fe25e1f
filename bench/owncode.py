"""Where firsttrust's own code spends its time over the shape, per side:
`.venv/bin/python -m bench.owncode [COUNT] [DIR]` (300 enrollments and build/bench/profile by default).

Runs one batch of COUNT firsttrust enrollments (bench/batch.py: one worker, after 20 unmeasured
ones, as step 4d runs it) and the shape with both sides' durable writes as a batch of COUNT
(bench/skeleton.py), each side under cProfile, and prints per side the event loop thread's time
per enrollment by module in the batch and in the shape, largest difference first, then
firsttrust's own functions by their own time. cProfile costs about as much again as the code it
measures, more for Python than for C: read the differences, not the totals, and never as a bench
line. It counts the event loop's thread only (time.thread_time), so the durable writes on the
executor threads, the same on both sides of the comparison, are not in it.
"""

from __future__ import annotations

import collections
import pstats
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.batch import CONCURRENCY, run_batch  # noqa: E402
from bench.measure import WARMUP, quiet_audit  # noqa: E402
from bench.skeleton import shape_batch  # noqa: E402

_OWN = ("firsttrust/", "agent/", "requester/")  # where the package's modules live in the checkout


def group(function: tuple[str, int, str]) -> str:
    """The row a profiled function is counted in: firsttrust's modules one by one, the standard
    library's asyncio, ssl and json, other packages by name, C functions by name."""
    path, _, name = function
    root = str(ROOT) + "/"
    if path.startswith(root) and not path.startswith(root + ".venv/"):
        rel = path[len(root):]
        return ("own " + rel) if rel.startswith(_OWN) else rel.split("/")[0]
    if path == "~":
        return "C " + name
    if "site-packages/" in path:
        return "package " + path.split("site-packages/")[1].split("/")[0]
    for part in ("asyncio", "json", "logging", "concurrent"):
        if f"/{part}/" in path:
            return part
    return path.rsplit("/", 1)[-1]


def by_group(path: Path) -> collections.Counter:
    totals: collections.Counter = collections.Counter()
    for function, (_, _, own_time, _, _) in pstats.Stats(str(path)).stats.items():
        totals[group(function)] += own_time
    return totals


def calls(path: Path) -> int:
    return sum(primitive for primitive, *_ in pstats.Stats(str(path)).stats.values())


def own_functions(path: Path) -> list[tuple[float, float, int, str]]:
    """(own time, cumulative time, calls, name) of firsttrust's functions."""
    root = str(ROOT) + "/"
    rows = []
    for (file, line, name), (primitive, _, own_time, cumulative, _) in pstats.Stats(str(path)).stats.items():
        if file.startswith(root) and file[len(root):].startswith(_OWN):
            rows.append((own_time, cumulative, primitive, f"{file[len(root):]}:{line} {name}"))
    return sorted(rows, reverse=True)


def report(side: str, batch: Path, shape: Path, count: int, rows: int = 25) -> None:
    """`count`: the enrollments the profiles saw (the appliances' profiles include the warm-up)."""
    real, bare = by_group(batch), by_group(shape)
    total_real, total_bare = sum(real.values()), sum(bare.values())
    per = 1e3 / count
    print(f"\n== {side}: {total_real * per:.2f} ms per enrollment in the batch, {total_bare * per:.2f} in the shape "
          f"(profiled, event loop thread); Python calls per enrollment {calls(batch) / count:.0f} / "
          f"{calls(shape) / count:.0f}")
    print(f"   {'ms/enrollment: batch':>22} {'shape':>7} {'diff':>7}  module or C function")
    for name in sorted(set(real) | set(bare), key=lambda k: bare[k] - real[k])[:rows]:
        print(f"   {real[name] * per:22.3f} {bare[name] * per:7.3f} {(real[name] - bare[name]) * per:+7.3f}  {name}")
    print("   firsttrust's own functions by own time (ms per enrollment, cumulative, calls per enrollment):")
    for own_time, cumulative, primitive, name in own_functions(batch)[:rows]:
        print(f"   {own_time * per:7.3f} {cumulative * per:8.3f} {primitive / count:6.1f}  {name}")


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 300
    directory = Path(argv[1]) if len(argv) > 1 else ROOT / "build" / "bench" / "profile"
    quiet_audit()
    batch = run_batch(count, CONCURRENCY, directory, workers=1, warmup=WARMUP * 4)
    if batch.failures or batch.not_enrolled:
        print("batch failures:", *batch.failures, f"{batch.not_enrolled} not enrolled", file=sys.stderr)
    shape_batch(count, CONCURRENCY, durable=True, profile_dir=directory)
    report("requester", directory / "requester.prof", directory / "shape-requester.prof", count)
    report("appliance", directory / "appliances.prof", directory / "shape-appliances.prof", count + WARMUP * 4)
    print(f"\nprofiles in {directory} (python -m pstats FILE)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
