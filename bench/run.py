"""firsttrust benchmark: `.venv/bin/python bench/run.py` (bench/README.md explains every number).

Measures, in one run on this machine, the crypto floor (one SRP-6a handshake and one TLS 1.3
handshake, both sides) and what is built on it (one enrollment, a batch of appliances, the
agent process), prints ratios against that floor and writes build/bench/results.md. The goals are
printed, never asserted: the exit status is 0 whenever every measurement completed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: make `bench` importable as a package

from firsttrust.common.files import write_atomic  # noqa: E402

from bench import floor  # noqa: E402
from bench.agent_process import STDLIB_IMPORTS, measure_agent, stdlib_start  # noqa: E402
from bench.batch import CONCURRENCY, run_batch  # noqa: E402
from bench.debian import debian_python  # noqa: E402
from bench.enrollment import enrollment_runner  # noqa: E402
from bench.fleet import line as fleet_line, measure_fleet  # noqa: E402
from bench.flood import CONNECTIONS, SOURCES, STALL_KINDS, STALLS, measure_flood  # noqa: E402
from bench.measure import (WARMUP, Sample, Stopwatch, Timings, interleave_timings, machine_busy_seconds,  # noqa: E402
                           own_cpu_seconds, paired_ratio, quiet_audit)
from bench.report import Goal, machine_line, write_results  # noqa: E402
from bench.rounds import shape_rounds  # noqa: E402
from bench.skeleton import shape_batch, shape_runner  # noqa: E402
from firsttrust.requester.library import default_workers  # noqa: E402

# The goals (bench/README.md says where each comes from).
# What firsttrust's own code adds to the message flow and the transaction it implements (issue 29):
# enrollment/shape (wall), requester/shape and appliance/shape (CPU per enrollment in a batch).
OVER_SHAPE_MAX = 1.15
# The floor ratios: supporting lines since issue 29, their former goals printed beside them.
ENROLLMENT_OVER_FLOOR_MAX = 1.3
SIDE_OVER_FLOOR_MAX = 1.25  # requester/floor and appliance/floor
BATCH_OVER_CPU_BOUND_MIN = 0.75
AGENT_RSS_MB_MAX = 30
AGENT_RSS_ENROLLED_MB_MAX = 40
COLD_START_MS_MAX = 150
FLOOD_OVER_BASELINE_MAX = 2.0
# Other processes' average CPU load (cores) above which the run warns that it was not alone.
FOREIGN_LOAD_WARN = 0.1


def write_atomic_cost(runs: int) -> Sample:
    """The agent's durable write (temp file, fsync, rename, fsync the directory) of a
    state.json-sized file, on the file system the benchmark's temp dirs live on."""
    timings = Timings()
    with tempfile.TemporaryDirectory(prefix="bench-fsync-") as tmp:
        target = Path(tmp) / "state.json"
        for i in range(runs):
            with Stopwatch() as sw:
                write_atomic(target, b"x" * 600, 0o600)
            timings.add(i, sw)
    return timings.sample()


async def in_turns(rounds: int) -> tuple[Sample, Sample, Sample, Sample, Sample, float]:
    """Steps 1-3a in the same rounds: the floor's SRP and TLS handshakes, one enrollment and its
    shape without and with the durable writes, each once per round, so that the drift of this
    machine's speed moves every ratio's numerator and denominator together. Last, enrollment/shape:
    the median over the rounds of each round's enrollment over its shape with the durable writes."""
    async with floor.tls_runner() as tls, enrollment_runner(WARMUP + rounds) as single, \
            shape_runner() as shape, shape_runner(durable=True) as shape_durable:
        timings = await interleave_timings(rounds, {"srp": floor.srp_runner(), "tls": tls, "enrollment": single,
                                                    "shape": shape, "shape_durable": shape_durable})
    over_shape = paired_ratio(timings["enrollment"].walls, timings["shape_durable"].walls)
    samples = {name: timing.sample() for name, timing in timings.items()}
    return (samples["srp"], samples["tls"], samples["enrollment"], samples["shape"], samples["shape_durable"],
            over_shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50,
                        help="timed SRP and TLS handshakes of the splits and after the batch (default 50)")
    parser.add_argument("--enrollments", type=int, default=50,
                        help="rounds of steps 1-3a, each one enrollment beside the floor and its shape (default 50)")
    parser.add_argument("--batch", type=int, default=500, help="appliances in the batch (default 500)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help=f"enroll_many concurrency (default {CONCURRENCY})")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="enroll_many workers for the batch (default: one per CPU)")
    parser.add_argument("--worker-kind", choices=("process", "thread"), default="process",
                        help="enroll_many's workers: processes (default) or threads")
    parser.add_argument("--shape-rounds", type=int, default=5, metavar="N",
                        help="rounds of requester/shape and appliance/shape, each a 1-worker batch and the shape "
                             "with the durable writes (default 5)")
    parser.add_argument("--shape-batch", type=int, default=100, metavar="N",
                        help="enrollments per batch in each of those rounds, after a warm-up of 20 (default 100)")
    parser.add_argument("--single-worker-batch", type=int, default=0, metavar="N",
                        help="size of a supporting batch of that many run with 1 worker (default 0: skipped; the "
                             "shape rounds' 1-worker batches give that throughput)")
    parser.add_argument("--cold-runs", type=int, default=9, help="timed agent cold starts (default 9)")
    parser.add_argument("--agent-python", default=None, metavar="PYTHON",
                        help="interpreter for the agent process (steps 5-6; default: Debian 12's /usr/bin/python3 "
                             "with its python3-* packages, set up in build/bench/debian12-venv)")
    parser.add_argument("--flood-runs", type=int, default=5, help="timed enrollments with and without the flood "
                                                                  "(default 5)")
    parser.add_argument("--flood-connections", type=int, default=CONNECTIONS,
                        help=f"hostile connections held during the flood (default {CONNECTIONS})")
    parser.add_argument("--profile-batch", type=Path, metavar="DIR",
                        help="cProfile both sides of the batch into DIR (slows the batch down)")
    parser.add_argument("--fleet-appliances", type=int, default=60,
                        help="fleet/one-host: appliances enrolled by two hosts on PostgreSQL vs one on files "
                             "(default 60; 0 skips it)")
    parser.add_argument("--output", type=Path, default=ROOT / "build" / "bench" / "results.md")
    args = parser.parse_args(argv)
    quiet_audit()
    started, busy, own = time.perf_counter(), machine_busy_seconds(), own_cpu_seconds()

    def step(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    step("0/7 the agent's interpreter")
    agent_python, agent_python_note = args.agent_python, "given with --agent-python"
    if agent_python is None:
        agent_python, agent_python_note = debian_python()
        if agent_python is None:
            print(f"WARNING: {agent_python_note}; the agent runs on {sys.executable}", file=sys.stderr)
            agent_python = sys.executable
    step(f"1-3a/7 in turns, {args.enrollments} rounds: an SRP handshake, a TLS handshake, one enrollment, its shape "
         "without and with the agent's durable writes")
    srp, tls, single, shape, shape_durable, enrollment_over_shape = asyncio.run(in_turns(args.enrollments))
    srp_client, srp_server = floor.srp_split(args.runs)
    tls_client_bio, tls_server_bio = floor.tls_split(args.runs)
    contexts = floor.context_build_cost(args.runs)
    durable_write = write_atomic_cost(20)
    step(f"4/7 batch of {args.batch}, {args.workers} {args.worker_kind} workers (provisioning first, not timed)")
    batch = run_batch(args.batch, args.concurrency, args.profile_batch, args.workers, args.worker_kind)
    step(f"4a/7 the enrollment's shape as a batch of {args.batch} (one requester and one appliance process)")
    bare_shape = shape_batch(args.batch, args.concurrency)
    # The floor again, right after the batch: this machine's speed drifts by up to ~30 % within a
    # minute, so the batch's ratios divide by the mean of the floor taken before and after it.
    step("4b/7 SRP and TLS floor again, after the batch")
    srp_after, tls_after = floor.srp_floor(args.runs), floor.tls_floor(args.runs)
    srp_split_after = floor.srp_split(args.runs)
    single_worker = None
    if args.single_worker_batch:
        step(f"4c/7 batch of {args.single_worker_batch}, 1 worker (supporting)")
        single_worker = run_batch(args.single_worker_batch, args.concurrency, None, 1)
    step(f"4d/7 {args.shape_rounds} rounds, in alternating order: a batch of {args.shape_batch} (1 worker) and the "
         f"shape with both sides' durable writes as a batch of {args.shape_batch}")
    rounds = shape_rounds(args.shape_rounds, args.shape_batch, args.concurrency)
    step("5-6/7 agent process: idle and enrolled RSS, cold start")
    ready, idle, enrolled = measure_agent(args.cold_runs, agent_python, enrolled=True)
    stdlib_ready = stdlib_start(args.cold_runs, agent_python)
    dev_idle = measure_agent(1, sys.executable)[1] if agent_python != sys.executable else None
    step(f"7/7 flood: enrollments against an agent process while {args.flood_connections} hostile connections are held")
    flood = measure_flood(args.flood_runs, args.flood_connections, SOURCES, args.agent_python or sys.executable)
    step(f"7b/7 flood, post-hello stall variant: {STALLS} connections from {SOURCES} addresses say hello and stall")
    stalls = measure_flood(args.flood_runs, STALLS, SOURCES, args.agent_python or sys.executable, STALL_KINDS)
    fleet = "skipped (--fleet-appliances 0)"
    if args.fleet_appliances:
        step(f"8/8 fleet/one-host: {args.fleet_appliances} appliances, two hosts on PostgreSQL vs one on files")
        fleet = measure_fleet(args.fleet_appliances)
    rss = idle.rss_mb
    total = time.perf_counter() - started
    foreign = max(0.0, machine_busy_seconds() - busy - (own_cpu_seconds() - own)) / total

    floor_wall = srp.wall + tls.wall
    # For the batch's lines: the floor's CPU as the mean of its measurements before and after the batch.
    srp_cpu, tls_cpu = (srp.cpu + srp_after.cpu) / 2, (tls.cpu + tls_after.cpu) / 2
    srp_client, srp_server = (srp_client + srp_split_after[0]) / 2, (srp_server + srp_split_after[1]) / 2
    floor_cpu = srp_cpu + tls_cpu
    ideal = (os.cpu_count() or 1) / floor_cpu
    # The halves of the floor: SRP split as measured; the TLS floor's CPU split in the proportion
    # the two sides take over memory BIOs (the sockets' and event loop's share, split alike).
    tls_client = tls_cpu * tls_client_bio / (tls_client_bio + tls_server_bio)
    requester_half, appliance_half = srp_client + tls_client, srp_server + tls_cpu - tls_client
    per = 1 / batch.count
    requester_ratio = batch.requester_cpu * per / requester_half
    appliance_ratio = batch.appliances_cpu * per / appliance_half
    # What firsttrust's own code adds: medians of rounds that alternate with the shape.
    goals = [
        Goal(f"enrollment/shape = {enrollment_over_shape:.2f}", enrollment_over_shape, OVER_SHAPE_MAX, at_most=True),
        Goal(f"requester/shape = {rounds.requester:.2f}", rounds.requester, OVER_SHAPE_MAX, at_most=True),
        Goal(f"appliance/shape = {rounds.appliance:.2f}", rounds.appliance, OVER_SHAPE_MAX, at_most=True),
        Goal(f"agent RSS MB = {rss:.1f}", rss, AGENT_RSS_MB_MAX, at_most=True),
        Goal(f"agent RSS enrolled MB = {enrolled.rss_mb:.1f}", enrolled.rss_mb, AGENT_RSS_ENROLLED_MB_MAX,
             at_most=True),
        Goal(f"cold start ms = {ready * 1e3:.0f}", ready * 1e3, COLD_START_MS_MAX, at_most=True),
        Goal(f"flood/baseline = {flood.ratio:.2f}", flood.ratio, FLOOD_OVER_BASELINE_MAX, at_most=True),
    ]
    # Against the crypto floor: supporting since issue 29 (bench/README.md, "Where the rest goes").
    supporting = [
        Goal(f"enrollment/floor = {single.wall / floor_wall:.2f}", single.wall / floor_wall,
             ENROLLMENT_OVER_FLOOR_MAX, at_most=True),
        Goal(f"requester/floor = {requester_ratio:.2f}", requester_ratio, SIDE_OVER_FLOOR_MAX, at_most=True),
        Goal(f"appliance/floor = {appliance_ratio:.2f}", appliance_ratio, SIDE_OVER_FLOOR_MAX, at_most=True),
        Goal(f"batch/cpu-bound = {batch.throughput / ideal:.2f}", batch.throughput / ideal,
             BATCH_OVER_CPU_BOUND_MIN, at_most=False),
    ]
    round_shape_requester = statistics.median(r.shape.requester_cpu for r in rounds.rounds)
    round_shape_appliance = statistics.median(r.shape.appliance_cpu for r in rounds.rounds)
    round_batch_requester = statistics.median(r.batch.requester_cpu / r.batch.count for r in rounds.rounds)
    round_batch_appliance = statistics.median(r.batch.appliances_cpu / r.batch.count for r in rounds.rounds)
    per = 1e3 / batch.count
    # A single-threaded requester runs the client half of every enrollment on one core: with no
    # overhead at all it tops out at 1 / (client SRP + half the TLS pair).
    requester_bound = 1 / (srp_client + tls_cpu / 2)
    details = [
        ("SRP-6a handshake, both sides (3072-bit, SHA-512)", str(srp)),
        ("TLS 1.3 handshake, both sides (P-256 mutual, loopback)", str(tls)),
        ("SRP and TLS floor CPU after the batch (the batch's lines use the mean of before and after)",
         f"{srp_after.cpu * 1e3:.2f} ms / {tls_after.cpu * 1e3:.2f} ms"),
        ("SRP CPU split, mean of before and after the batch: client / server half",
         f"{srp_client * 1e3:.2f} ms / {srp_server * 1e3:.2f} ms"),
        ("TLS CPU split over memory BIOs: client / server half",
         f"{tls_client_bio * 1e3:.2f} ms / {tls_server_bio * 1e3:.2f} ms"),
        ("floor halves (CPU): requester = client SRP + client TLS / appliance = server SRP + server TLS",
         f"{requester_half * 1e3:.2f} ms / {appliance_half * 1e3:.2f} ms"),
        ("floor = SRP + TLS (in turns with the enrollment, before the batch)", f"{floor_wall * 1e3:.2f} ms wall, {(srp.cpu + tls.cpu) * 1e3:.2f} ms CPU"),
        ("one enrollment in-process (both sides)", str(single)),
        ("enrollment CPU above the floor CPU", f"{(single.cpu - srp.cpu - tls.cpu) * 1e3:.2f} ms"),
        ("the enrollment's shape alone (its 7 frames on asyncio streams, STARTTLS and SRP, nothing else: "
         "bench/skeleton.py)", f"{shape} = {shape.wall / floor_wall:.2f} x floor"),
        ("the same plus the agent's durable writes (failure charge beside the proof's check, commit, "
         "authorization): the lowest enrollment/floor for a transaction on asyncio streams",
         f"{shape_durable} = {shape_durable.wall / floor_wall:.2f} x floor"),
        ("building the two TLS contexts from files (once per side and process now, was per connection)",
         str(contexts)),
        ("agent write_atomic (fsync file + dir) on the temp dir's FS", str(durable_write)),
        (f"batch wall ({batch.count} appliances, concurrency {args.concurrency}, {args.workers} {args.worker_kind} "
         "workers)", f"{batch.wall:.2f} s"),
        ("batch throughput", f"{batch.throughput:.1f} enrollments/s"),
        ("batch throughput: 1 worker / " + f"{args.workers} workers",
         (f"{single_worker.throughput:.1f} / " if single_worker else
          f"{statistics.median(r.batch.throughput for r in rounds.rounds):.1f} (median of the shape rounds' "
          f"batches of {args.shape_batch}) / ")
         + f"{batch.throughput:.1f} enrollments/s"),
        ("batch cores used (both sides' CPU / wall): 1 worker / " + f"{args.workers} workers",
         (f"{(single_worker.requester_cpu + single_worker.appliances_cpu) / single_worker.wall:.2f} / "
          if single_worker else "not run / ")
         + f"{(batch.requester_cpu + batch.appliances_cpu) / batch.wall:.2f} of {os.cpu_count()}"),
        ("CPU-bound ideal = cores / floor CPU (mean of before and after the batch)", f"{ideal:.1f} enrollments/s ({os.cpu_count()} cores)"),
        ("one single-threaded requester at floor cost (client SRP + TLS/2 per enrollment)",
         f"{requester_bound:.1f} enrollments/s = {requester_bound / ideal:.2f} of the ideal"),
        ("batch CPU per enrollment: requester / appliances",
         f"{batch.requester_cpu * per:.2f} ms / {batch.appliances_cpu * per:.2f} ms"),
        ("batch core utilisation (both processes' CPU / wall)",
         f"{(batch.requester_cpu + batch.appliances_cpu) / batch.wall:.2f} of {os.cpu_count()} cores"),
        (f"the enrollment's shape as a batch (bench/skeleton.py: {bare_shape.count} enrollments, concurrency "
         f"{args.concurrency}, one requester and one appliance process), CPU per enrollment: requester / appliance",
         f"{bare_shape.requester_cpu * 1e3:.2f} ms = {bare_shape.requester_cpu / requester_half:.2f} x its half / "
         f"{bare_shape.appliance_cpu * 1e3:.2f} ms = {bare_shape.appliance_cpu / appliance_half:.2f} x its half"),
        (f"the same plus both sides' durable writes, median of the {len(rounds.rounds)} shape rounds "
         f"({args.shape_batch} each), CPU per enrollment: requester / appliance",
         f"{round_shape_requester * 1e3:.2f} ms = {round_shape_requester / requester_half:.2f} x its half / "
         f"{round_shape_appliance * 1e3:.2f} ms = {round_shape_appliance / appliance_half:.2f} x its half"),
        (f"the rounds' 1-worker batches ({args.shape_batch} each), median CPU per enrollment: requester / appliance",
         f"{round_batch_requester * 1e3:.2f} ms / {round_batch_appliance * 1e3:.2f} ms"),
        ("requester/shape, each round (sorted)", rounds.spread("requester")),
        ("appliance/shape, each round (sorted)", rounds.spread("appliance")),
        ("one enrollment / the shape with the durable writes, medians of the rounds of steps 1-3a (enrollment/shape "
         "is the median of the rounds' own ratios)", f"{single.wall / shape_durable.wall:.2f}"),
        ("batch failures", "none" if not batch.failures and not batch.not_enrolled
         else "; ".join(batch.failures) + f"; {batch.not_enrolled} appliances not enrolled"),
        ("provisioning the batch (not timed in the ratio)", f"{batch.provision_wall:.1f} s"),
        ("agent idle RSS: private (RssAnon) / mapped files (RssFile)",
         f"{idle.rss_anon_mb:.1f} MB / {idle.rss_file_mb:.1f} MB"),
        ("agent enrolled RSS (API serving): private (RssAnon) / mapped files (RssFile)",
         f"{enrolled.rss_anon_mb:.1f} MB / {enrolled.rss_file_mb:.1f} MB"),
        (f"the floor under the cold start: `python3 -I -c \"{STDLIB_IMPORTS}\"`, spawn to exit (median of "
         f"{args.cold_runs})", f"{stdlib_ready * 1e3:.0f} ms"),
        ("agent interpreter", f"{agent_python} ({agent_python_note})"),
        ("agent idle RSS on the development venv (its cryptography wheel has its own OpenSSL): total / "
         "RssAnon / RssFile",
         f"{dev_idle.rss_mb:.1f} / {dev_idle.rss_anon_mb:.1f} / {dev_idle.rss_file_mb:.1f} MB" if dev_idle
         else "same interpreter"),
        ("flood's agent interpreter", args.agent_python or sys.executable),
        (f"enrollment against an agent process: alone / during the flood (median of {flood.runs} each)",
         f"{flood.baseline * 1e3:.1f} ms / {flood.flooded * 1e3:.1f} ms"),
        (f"the flood ({flood.connections} connections from {flood.sources} addresses; its own counters, last run)",
         flood.flood_stats),
        (f"flood/baseline, post-hello stall variant ({stalls.connections} hellos with A = 2 that stall, from "
         f"{stalls.sources} addresses; issue #25): alone / stalled (median of {stalls.runs} each)",
         f"{stalls.ratio:.2f} ({stalls.baseline * 1e3:.1f} ms / {stalls.flooded * 1e3:.1f} ms)"),
        ("the stall flood's own counters, last run", stalls.flood_stats),
        ("fleet (bench/fleet.py: on one machine the store's overhead and contention, not scale)", fleet_line(fleet)),
        ("other processes' CPU load: whole run / during the batch",
         f"{foreign:.2f} / {batch.others_cpu / batch.wall:.2f} cores (near 0 for numbers worth comparing)"),
    ]
    machine = machine_line()
    warnings = []
    if foreign > FOREIGN_LOAD_WARN:
        warnings.append(f"WARNING: other processes used {foreign:.2f} cores on average during this run; "
                        "the numbers are not this code's alone. Rerun on an idle machine.")
    write_results(args.output, goals, machine, details, total, warnings, supporting)

    print()
    for name, value in details:
        print(f"  {name}: {value}")
    print()
    for goal in supporting:
        print(f"{goal.line}   (supporting; former goal {goal.goal_text}: {'met' if goal.met else 'missed'})")
    for goal in goals:
        print(f"{goal.line}   (goal {goal.goal_text}: {'met' if goal.met else 'MISSED'})")
    print(fleet_line(fleet))
    print(machine)
    print(f"run time s = {total:.1f}; written to {args.output}")
    for warning in warnings:
        print(warning)
    if batch.failures or batch.not_enrolled:
        print("batch failures:", *batch.failures, f"{batch.not_enrolled} appliances not enrolled", sep="\n  ")
    if rounds.failures():
        print("shape rounds' batch failures:", *rounds.failures(), sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
