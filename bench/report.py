"""What a run prints and writes: the four goal lines, the machine line, supporting numbers, and
bench/results.md (overwritten each run)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import ssl
from dataclasses import dataclass
from pathlib import Path

import firsttrust.srp6a as srp6a


@dataclass(frozen=True)
class Goal:
    line: str  # e.g. "enrollment/floor = 1.42"
    value: float
    target: float
    at_most: bool  # True: value <= target is met; False: value >= target

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.at_most else self.value >= self.target

    @property
    def goal_text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.target:g}"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _libssl_loaded() -> str:
    """Which libssl this process mapped (pysrp's ctypes backend and the ssl module)."""
    names = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                    if "libssl" in line.split()[-1]})
    return ", ".join(names) or "none"


def machine_line() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        crypto_openssl = backend.openssl_version_text()
    except Exception:  # noqa: BLE001 - only for the label
        crypto_openssl = "unknown"
    cores = len(os.sched_getaffinity(0))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"machine: {_cpu_model()}, {cores} cores; Python {platform.python_version()}; "
            f"{ssl.OPENSSL_VERSION} (ssl, TLS), {crypto_openssl} (cryptography); "
            f"pysrp {importlib.metadata.version('srp')} backend {srp6a.BACKEND} ({_libssl_loaded()}); {date}")


def write_results(path: Path, goals: list[Goal], machine: str, details: list[tuple[str, str]],
                  total_seconds: float, warnings: list[str], supporting: list[Goal] = ()) -> None:
    rows = "\n".join(f"| `{g.line.split(' = ')[0]}` | {g.line.split(' = ')[1]} | {g.goal_text} | "
                     f"{'yes' if g.met else '**no**'} |" for g in goals)
    supporting_rows = "\n".join(f"| `{g.line.split(' = ')[0]}` | {g.line.split(' = ')[1]} | {g.goal_text} | "
                                f"{'yes' if g.met else 'no'} |" for g in supporting)
    detail_rows = "\n".join(f"| {name} | {value} |" for name, value in details)
    raw = "\n".join([*(g.line for g in supporting), *(g.line for g in goals), machine, f"run time s = {total_seconds:.1f}", *warnings])
    notes = "".join(f"**{w}**\n\n" for w in warnings)
    path.write_text(f"""# firsttrust benchmark results

Written by `bench/run.py` (overwritten each run); bench/README.md says what each number means.

{machine}

{notes}| metric | value | goal | met |
|---|---|---|---|
{rows}

| against the crypto floor (supporting) | value | former goal | met |
|---|---|---|---|
{supporting_rows}

| supporting number | value |
|---|---|
{detail_rows}

Raw lines:

```
{raw}
```
""")
