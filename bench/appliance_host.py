"""The batch's appliances, hosted in their own process:
`python -m bench.appliance_host ROOT COUNT [PROFILE_FILE]`.

Serves COUNT provisioned appliances (ROOT/appliance-NNNN/state, each with its own identity,
salt, verifier and SEC-B) with one EnrollmentServer each, on COUNT ports of 127.0.0.1, in one
event loop, as one agent per appliance would, only all in one process. Prints one JSON line
{"ports": [...]} once every listener is bound, then serves until stdin closes. With
PROFILE_FILE, the serving (not the start-up) runs under cProfile and the stats go there.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import sys
import time
from pathlib import Path

from . import appliances
from .measure import quiet_audit


async def main(root: Path, count: int, profile: Path | None) -> None:
    quiet_audit()
    served = [await appliances.serve(appliances.state_dir(root, i)) for i in range(count)]
    print(json.dumps({"ports": [a.port for a in served]}), flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    profiler = cProfile.Profile(time.thread_time) if profile else None
    if profiler:
        profiler.enable()
    await stdin.read()  # EOF: the parent is done
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    await appliances.stop(served)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None))
