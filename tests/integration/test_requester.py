"""The requester library and CLI against real in-process appliances on loopback."""

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from agent_fixture import provisioned

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.identity import create_identity
from firsttrust.requester.library import enroll_appliance, open_session, pin_certificate, rotate_appliance
from firsttrust.requester.errors import ConnectionFailed, PinMismatch
from firsttrust.requester.truststore import ApplianceRecord, TrustStore

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args, home: Path, stdin: bytes | None = None):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firsttrust.requester.cli", *args, cwd=ROOT, env={**os.environ, "FIRSTTRUST_HOME": str(home)},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    return proc.returncode, out.decode(), err.decode()


def write_secrets(path: Path, secrets: EnrollmentSecrets) -> Path:
    path.write_text(json.dumps({"sec_a": secrets.sec_a, "sec_b": secrets.sec_b}))
    path.chmod(0o600)
    return path


async def test_library_enroll_then_pinned_session_then_rotate(tmp_path):
    app = provisioned(tmp_path / "app")
    await app.start(phase_timeout=2.0)
    from firsttrust.agent.api import start_api, stop_api
    runner, contexts = await start_api(app.store, "127.0.0.1", 0)
    api_port = runner.addresses[0][1]
    app.server.api_port = api_port
    app.server.on_enrolled = lambda _auth: _reload(contexts)
    store = TrustStore(tmp_path / "home")
    try:
        record = await enroll_appliance(f"127.0.0.1:{app.port}", app.secrets, name="app-01", store=store)
        assert record.pin == app.store.load_identity().pin and record.api_port == api_port
        assert store.get("app-01") == record
        async with open_session("app-01", store=store) as api:
            identity = await api.get("/v1/identity")
        assert identity["pin"] == record.pin
        rotated = await rotate_appliance("app-01", store=store)
        assert rotated.pin != record.pin and store.get("app-01").pin == rotated.pin
        async with open_session("app-01", store=store) as api:
            assert (await api.get("/v1/identity"))["pin"] == rotated.pin
        # a session still holding the old pin refuses the rotated appliance
        store.save(record)
        with pytest.raises((PinMismatch, ConnectionFailed)):
            async with open_session("app-01", store=store) as api:
                await api.get("/v1/health")
    finally:
        await stop_api(runner)
        await app.stop()


async def _reload(contexts):
    contexts.reload()


def test_trust_store_loses_nothing_under_50_parallel_writers(tmp_path, appliance_identity):
    store_home = tmp_path / "home"
    cert = appliance_identity.cert_pem.decode()

    def write(i: int) -> None:
        store = TrustStore(store_home)  # each writer its own object, as separate processes would be
        store.identity()
        store.save(ApplianceRecord(name=f"app-{i:02d}", address="10.0.0.1", pin=appliance_identity.pin,
                                   certificate=cert, api_port=8791))

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(write, range(50)))
    names = sorted(r.name for r in TrustStore(store_home).list())
    assert names == [f"app-{i:02d}" for i in range(50)]
    # the identity was created exactly once
    assert len({TrustStore(store_home).identity().pin for _ in range(3)}) == 1


def test_trust_store_parallel_processes(tmp_path, appliance_identity):
    home = tmp_path / "home"
    cert = tmp_path / "a.pem"
    cert.write_bytes(appliance_identity.cert_pem)
    procs = [subprocess.Popen([sys.executable, "-m", "firsttrust.requester.cli", "pin-cert", f"p{i}", "--address",
                               "127.0.0.1:8791", "--cert", str(cert)], cwd=ROOT,
                              env={**os.environ, "FIRSTTRUST_HOME": str(home)}, stdout=subprocess.DEVNULL)
             for i in range(20)]
    assert all(p.wait(120) == 0 for p in procs)
    assert len(TrustStore(home).list()) == 20
    identity = TrustStore(home).identity()  # one identity, created once by whichever process came first
    assert (home / "identity.crt").read_bytes() == identity.cert_pem


async def test_batch_enroll_of_20_with_one_bad_secret_reports_exactly_one_failure(tmp_path):
    apps = []
    for i in range(20):
        app = provisioned(tmp_path / f"app{i}")
        await app.start(phase_timeout=5.0)
        apps.append(app)
    rows = ["name,address,secrets"]
    for i, app in enumerate(apps):
        secrets = app.secrets if i != 7 else EnrollmentSecrets(EnrollmentSecrets.generate().sec_a, app.secrets.sec_b)
        write_secrets(tmp_path / f"s{i}.json", secrets)
        rows.append(f"app-{i:02d},127.0.0.1:{app.port},s{i}.json")
    (tmp_path / "targets.csv").write_text("\n".join(rows) + "\n")
    try:
        code, out, err = await cli("enroll", "--targets", str(tmp_path / "targets.csv"), "--json",
                                   home=tmp_path / "home")
    finally:
        for app in apps:
            await app.stop()
    assert code == 1, err
    results = json.loads(out)
    failed = [r for r in results if not r["ok"]]
    assert len(results) == 20 and [r["name"] for r in failed] == ["app-07"]
    assert failed[0]["error"]["code"] == "auth_failed"
    assert len(TrustStore(tmp_path / "home").list()) == 19
    # stderr is not a terminal here: one plain progress line per appliance, stdout only the JSON
    lines = err.splitlines()
    assert len(lines) == 20 and all(line.startswith("firsttrust: app-") for line in lines), err
    assert sum(": failed (" in line for line in lines) == 1 and sum(": enrolled (" in line for line in lines) == 19


async def test_batch_rerun_skips_what_is_pinned_and_shows_a_bar_on_a_terminal(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios
    apps = [await provisioned(tmp_path / f"app{i}").start(phase_timeout=5.0) for i in range(3)]
    rows = ["name,address,secrets"]
    for i, app in enumerate(apps):
        write_secrets(tmp_path / f"s{i}.json", app.secrets)
        rows.append(f"app-{i},127.0.0.1:{app.port},s{i}.json")
    (tmp_path / "targets.csv").write_text("\n".join(rows) + "\n")
    try:
        code, out, err = await cli("enroll", "--targets", str(tmp_path / "targets.csv"), home=tmp_path / "home")
        assert code == 0 and out.splitlines()[-1] == "3 enrolled, 0 already pinned, 0 failed", out
        # The same batch again, stderr on a terminal: everything already pinned, exit 0, a progress bar.
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firsttrust.requester.cli", "enroll", "--targets", str(tmp_path / "targets.csv"),
            stdout=asyncio.subprocess.PIPE, stderr=terminal, cwd=ROOT,
            env={**os.environ, "FIRSTTRUST_HOME": str(tmp_path / "home")})
        os.close(terminal)
        out2, _ = await asyncio.wait_for(proc.communicate(), 60)
        bar = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(controller, 65536):
                bar += chunk
        os.close(controller)
    finally:
        for app in apps:
            await app.stop()
    assert proc.returncode == 0
    assert out2.decode().splitlines()[-1] == "0 enrolled, 3 already pinned, 0 failed"
    assert b"3/3 appliances" in bar and b"0 failed" in bar


async def test_cli_pins_export_call_and_errors(tmp_path):
    app = provisioned(tmp_path / "app")
    host_keys = tmp_path / "hostkeys"
    host_keys.mkdir()
    (host_keys / "ssh_host_ed25519_key.pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTheTestsHostKeyForTheTests0 root@app\n")
    await app.start(phase_timeout=2.0, host_key_glob=str(host_keys / "ssh_host_*_key.pub"))
    from firsttrust.agent.api import ApiInfo, start_api, stop_api
    runner, contexts = await start_api(app.store, "127.0.0.1", 0,
                                       ApiInfo(host_key_glob=str(host_keys / "ssh_host_*_key.pub")))
    app.server.api_port = runner.addresses[0][1]
    app.server.on_enrolled = lambda _auth: _reload(contexts)
    home = tmp_path / "home"
    secrets = write_secrets(tmp_path / "s.json", app.secrets)
    pin = app.store.load_identity().pin
    try:
        code, out, err = await cli("enroll", f"127.0.0.1:{app.port}", "--secrets", str(secrets), "--name", "app",
                                   home=home)
        assert code == 0 and out.strip() == f"enrolled app: {pin}", err
        assert (await cli("pins", "export", "app", "--format", "kubeadm", home=home))[1].strip() == pin
        curl = (await cli("pins", "export", "app", "--format", "curl", home=home))[1].split()
        assert curl[:2] == ["-k", "--pinnedpubkey"] and curl[2].startswith("sha256//") and curl[2].endswith("=")
        assert curl[3:] == ["--cert", str(home / "identity.crt"), "--key", str(home / "identity.key")]
        if shutil.which("curl"):  # the flags curl accepts: the pinned key checked, the certificate's name not
            url = f"https://127.0.0.1:{app.server.api_port}/v1/identity"
            fetched = await asyncio.create_subprocess_exec("curl", "-sS", *curl, url, stdout=subprocess.PIPE,
                                                           stderr=subprocess.PIPE)
            body, problem = await fetched.communicate()
            assert fetched.returncode == 0 and json.loads(body)["pin"] == pin, problem
            wrong = [*curl[:2], "sha256//" + "A" * 43 + "=", *curl[3:]]
            refused = await asyncio.create_subprocess_exec("curl", "-sS", *wrong, url, stdout=subprocess.PIPE,
                                                           stderr=subprocess.PIPE)
            await refused.communicate()
            assert refused.returncode == 90  # CURLE_SSL_PINNEDPUBKEYNOTMATCH
        known = (await cli("pins", "export", "app", "--format", "known_hosts", "--ssh-port", "2222",
                           home=home))[1].strip()
        assert known == "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTheTestsHostKeyForTheTests0"
        pem = (await cli("pins", "export", "app", "--format", "pem", home=home))[1]
        assert pem.startswith("-----BEGIN CERTIFICATE-----")
        listing = json.loads((await cli("pins", "list", "--json", home=home))[1])
        assert [r["name"] for r in listing] == ["app"] and listing[0]["embodiment"] == "srp"
        code, out, err = await cli("call", "app", "GET", "/v1/identity", home=home)
        assert code == 0 and json.loads(out)["pin"] == pin, err
        for args, expected in ((("call", "nope", "GET", "/v1/health"), 2),
                               (("call", "app", "GET", "v1/health"), 2),
                               (("call", "app", "POST", "/v1/authorized-keys", "--data", "{bad"), 2),
                               (("pins", "export", "app", "--format", "x509"), 2),
                               (("enroll", "127.0.0.1:1", "--secrets", str(secrets), "--name", "x", "--deadline", "0"), 1),
                               (("enroll", "not an address", "--secrets", str(secrets), "--name", "x"), 2),
                               (("enroll", "--targets", str(tmp_path / "missing.csv")), 2)):
            code, out, err = await cli(*args, home=home)
            assert code == expected, (args, code, err)
            assert err.startswith("firsttrust: error: ") and err.count("\n") == 1 and "Traceback" not in err
    finally:
        await stop_api(runner)
        await app.stop()


def test_pin_certificate_for_fig2_and_fig3(tmp_path, appliance_identity):
    store = TrustStore(tmp_path / "home")
    record = pin_certificate("app-fig2", "127.0.0.1:9000", appliance_identity.cert_pem, store=store)
    assert (record.pin, record.api_port, record.embodiment) == (appliance_identity.pin, 9000, "injected-certificate")
    record = pin_certificate("app-fig3", "127.0.0.1", appliance_identity.cert_der, embodiment="guest-command",
                             store=store)
    assert record.api_port == 8791 and store.get("app-fig3").certificate.startswith("-----BEGIN")


@pytest.mark.parametrize("worker_kind", ["process", "thread"])
async def test_enroll_many_over_two_workers_keeps_order_types_and_progress(tmp_path, worker_kind):
    """The batch spread over workers: every outcome in the order of the targets, a failure
    still a typed error with its code, and on_done called here once per appliance."""
    from firsttrust.errors import PeerRefused
    from firsttrust.requester.library import Target, enroll_many

    apps = []
    for i in range(16):
        app = provisioned(tmp_path / f"app{i}")
        await app.start(phase_timeout=5.0)
        apps.append(app)
    targets = [Target(f"app-{i:02d}", f"127.0.0.1:{app.port}",
                      app.secrets if i != 5 else EnrollmentSecrets(EnrollmentSecrets.generate().sec_a, app.secrets.sec_b))
               for i, app in enumerate(apps)]
    seen = []
    try:
        outcomes = await enroll_many(targets, store=TrustStore(tmp_path / "home"), workers=2,
                                     worker_kind=worker_kind, on_done=lambda o: seen.append(o.target.name))
    finally:
        for app in apps:
            await app.stop()
    assert [o.target.name for o in outcomes] == [t.name for t in targets]
    assert sorted(seen) == sorted(t.name for t in targets)
    failed = [o for o in outcomes if not o.ok]
    assert [o.target.name for o in failed] == ["app-05"]
    assert isinstance(failed[0].error, PeerRefused) and failed[0].error.code == "auth_failed"
    assert len(TrustStore(tmp_path / "home").list()) == 15



_CANCELLED_BATCH = """
import asyncio, socket, sys, time
from pathlib import Path
from firsttrust.credentials import EnrollmentSecrets
from firsttrust.requester import workers
from firsttrust.requester.library import Target, enroll_many
from firsttrust.requester.truststore import TrustStore

async def main(home, worker_kind):
    silent = socket.socket()  # connections complete in its backlog; nothing ever answers them
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    targets = [Target(f"app-{i:02d}", f"127.0.0.1:{silent.getsockname()[1]}", EnrollmentSecrets.generate())
               for i in range(16)]
    try:
        await asyncio.wait_for(enroll_many(targets, store=TrustStore(Path(home)), workers=2,
                                           worker_kind=worker_kind, deadline=30), 2)
    except TimeoutError:
        print("cancelled", flush=True)

if __name__ == "__main__":
    if sys.argv[3] == "forkserver":
        workers.other_threads = lambda: 1
    get_context = workers.multiprocessing.get_context
    def recording(method):  # the start method the pool used: what this case is named for
        print(f"start method {method}", flush=True)
        return get_context(method)
    workers.multiprocessing.get_context = recording
    asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("worker_kind,start_method", [("process", "fork"), ("process", "forkserver"), ("thread", "-")])
def test_a_cancelled_enroll_many_returns_within_seconds_not_at_its_deadline(tmp_path, worker_kind, start_method):
    """A library caller's timeout (or Ctrl-C in its asyncio.run) cancels enroll_many: its workers
    stop their enrollments, and enroll_many and then asyncio.run return within seconds. They used
    to wait for every worker's enrollments to reach their deadline (the workers ignore SIGINT),
    and asyncio.run's end for the thread reading the workers' queue. `forkserver` is what
    enroll_many uses when the caller runs other threads. In a process of its own, as a caller
    runs it: asyncio.run, not the test's event loop."""
    import time

    script = tmp_path / "cancelled_batch.py"
    script.write_text(_CANCELLED_BATCH)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "home"), worker_kind, start_method],
                          capture_output=True, text=True, timeout=60)
    used = "" if worker_kind == "thread" else f"start method {start_method}\n"
    assert (done.returncode, done.stdout) == (0, f"{used}cancelled\n"), done.stderr[-2000:]
    assert time.monotonic() - started < 12


async def test_a_rotation_whose_pin_could_not_be_stored_is_never_asked_for(tmp_path):
    """`rotate` with a full or read-only store: the appliance re-keyed, the pin stayed on the old
    key, and SRP is closed: the appliance was reachable only by copying its certificate off it."""
    from firsttrust.requester.truststore import TrustStoreError

    class FullStore(TrustStore):
        full = False

        def _write(self, path, record, **kwargs):
            if self.full:
                raise TrustStoreError(f"cannot write {path}: No space left on device")
            super()._write(path, record, **kwargs)

    app = provisioned(tmp_path / "app")
    await app.start(phase_timeout=2.0)
    from firsttrust.agent.api import start_api, stop_api
    runner, contexts = await start_api(app.store, "127.0.0.1", 0)
    app.server.api_port = runner.addresses[0][1]
    app.server.on_enrolled = lambda _auth: _reload(contexts)
    store = FullStore(tmp_path / "home")
    try:
        record = await enroll_appliance(f"127.0.0.1:{app.port}", app.secrets, name="app-01", store=store)
        store.full = True
        with pytest.raises(TrustStoreError, match="No space left"):
            await rotate_appliance("app-01", store=store)
        assert app.store.load_identity().pin == record.pin  # nothing was asked of the appliance
        store.full = False
        async with open_session("app-01", store=store) as api:
            assert (await api.get("/v1/identity"))["pin"] == record.pin
    finally:
        await stop_api(runner)
        await app.stop()
