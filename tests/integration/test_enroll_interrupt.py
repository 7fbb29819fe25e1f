"""Issue 28: an interrupted batch `enroll` writes its partial report and exits 130 within a second."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from agent_fixture import provisioned
from test_requester import ROOT, write_secrets

from firsttrust.requester.truststore import TrustStore


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_an_interrupted_batch_enroll_writes_its_partial_json_report_and_exits_130_within_a_second(
        tmp_path, signum):
    apps = [await provisioned(tmp_path / f"app{i}").start(phase_timeout=5.0) for i in range(2)]
    rows, waiting = ["name,address,secrets"], _closed_port()
    for i, app in enumerate(apps):
        write_secrets(tmp_path / f"s{i}.json", app.secrets)
        rows.append(f"app-{i},127.0.0.1:{app.port},s{i}.json")
    for i in range(2, 18):  # still booting: connection refused, retried until --deadline
        write_secrets(tmp_path / f"s{i}.json", provisioned(tmp_path / f"later{i}").secrets)
        rows.append(f"app-{i},127.0.0.1:{waiting},s{i}.json")
    (tmp_path / "targets.csv").write_text("\n".join(rows) + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firsttrust.requester.cli", "enroll", "--targets", str(tmp_path / "targets.csv"),
        "--json", "--workers", "2", "--deadline", "300", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")})
    try:
        seen = []
        while len(seen) < 2:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert line, "the batch ended early"
            seen.append(line)
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        latency = time.monotonic() - sent
    finally:
        for app in apps:
            await app.stop()
    assert proc.returncode == 130, err
    assert latency < 1.0, f"exit {latency:.2f} s after the signal"
    assert err.decode().splitlines()[-1].startswith("firsttrust: interrupted: 16 of 18 appliances not finished")
    report = json.loads(out)
    assert [entry["name"] for entry in report] == [f"app-{i}" for i in range(18)]
    assert [entry["status"] for entry in report] == ["enrolled"] * 2 + ["interrupted"] * 16
    assert {entry["error"]["code"] for entry in report[2:]} == {"interrupted"}
    assert sorted(r.name for r in TrustStore(tmp_path / "home").list()) == ["app-0", "app-1"]
    await asyncio.sleep(0.5)
    assert not _children_of(proc.pid), "the worker processes ended with the batch"


async def test_an_interrupted_batch_whose_report_reader_is_gone_still_exits_130_within_a_second(tmp_path):
    """`enroll --targets ... | head`, then Ctrl-C: the partial report meets a closed pipe; the
    batch must stop all the same, not run on to its deadline."""
    app = await provisioned(tmp_path / "app0").start(phase_timeout=5.0)
    rows, waiting = ["name,address,secrets"], _closed_port()
    write_secrets(tmp_path / "s0.json", app.secrets)
    rows.append(f"app-0,127.0.0.1:{app.port},s0.json")
    for i in range(1, 9):
        write_secrets(tmp_path / f"s{i}.json", provisioned(tmp_path / f"later{i}").secrets)
        rows.append(f"app-{i},127.0.0.1:{waiting},s{i}.json")
    (tmp_path / "targets.csv").write_text("\n".join(rows) + "\n")
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firsttrust.requester.cli", "enroll", "--targets", str(tmp_path / "targets.csv"),
        "--workers", "2", "--deadline", "300", cwd=ROOT, stdout=write_end, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")})
    os.close(write_end)
    os.close(read_end)  # the reader is gone before the report
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "the batch ended early"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        latency = time.monotonic() - sent
    finally:
        await app.stop()
    assert proc.returncode == 130, err
    assert latency < 1.0, f"exit {latency:.2f} s after the signal"
    assert b"Traceback" not in err


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # bytes: another process's name may be anything but UTF-8 (lab.procs.alive)
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_single_enroll_stopped_by_sigint_or_sigterm_exits_130_with_one_line(tmp_path, signum):
    write_secrets(tmp_path / "s.json", provisioned(tmp_path / "later").secrets)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firsttrust.requester.cli", "enroll", f"127.0.0.1:{_closed_port()}", "--secrets",
        str(tmp_path / "s.json"), "--name", "app-0", "--deadline", "300", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")})
    await asyncio.sleep(1.5)  # retrying the refused connection
    proc.send_signal(signum)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err
    assert err.decode().splitlines()[-1] == "firsttrust: interrupted (the same command again finishes the job)"
    assert "Traceback" not in err.decode()
