"""No traceback anywhere: every subcommand of the three CLIs against a matrix of bad inputs
answers with a documented exit code (1, 2, or the agent's 3) and exactly one line on stderr."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from firsttrust.agent import cli as agent_cli
from firsttrust.lab import cli as lab_cli
from firsttrust.requester import cli as requester_cli

MAINS = {"firsttrust": requester_cli.main, "firsttrust-agent": agent_cli.main, "firsttrust-lab": lab_cli.main}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "dir").mkdir()
    (root / "file").write_text("not what you expected\n")
    (root / "bad.json").write_text("{not json")
    (root / "list.json").write_text('[{"name": "x"}]')
    (root / "toml").write_text("max_failures = [\n")
    (root / "empty").mkdir()
    return {"missing": str(root / "missing"), "dir": str(root / "dir"), "file": str(root / "file"),
            "badjson": str(root / "bad.json"), "list": str(root / "list.json"), "toml": str(root / "toml"),
            "empty": str(root / "empty"), "proc": "/proc/self/mem", "procdir": "/proc/self"}


@pytest.fixture(scope="module")
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def http_port():
    """An HTTP server where the agent should be: it answers the first bytes with an HTTP error."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def handle(self):
            self.request.recv(4096)
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


CASES = [
    # the requester
    ("firsttrust", "secrets new --out {dir}"),
    ("firsttrust", "secrets new --out {procdir}/x"),
    ("firsttrust", "deploy-spec --secrets {missing} --format ovf-env"),
    ("firsttrust", "deploy-spec --secrets {dir} --format ovf-env"),
    ("firsttrust", "deploy-spec --secrets {badjson} --format ovf-env"),
    ("firsttrust", "deploy-spec --secrets {proc} --format ovf-env"),
    ("firsttrust", "deploy-spec --secrets {file} --format nonsense"),
    ("firsttrust", "enroll 127.0.0.1:{closed} --secrets {missing} --name a"),
    ("firsttrust", "enroll 127.0.0.1:{closed} --secrets {dir} --name a"),
    ("firsttrust", "enroll 127.0.0.1:{closed} --secrets {badjson} --name a"),
    ("firsttrust", "enroll not:an:address --secrets {file} --name a"),
    ("firsttrust", "enroll 127.0.0.1 --secrets {file} --name 'bad name'"),
    ("firsttrust", "enroll --targets {missing}"),
    ("firsttrust", "enroll --targets {dir}"),
    ("firsttrust", "enroll --targets {badjson}"),
    ("firsttrust", "enroll --targets {list}"),
    ("firsttrust", "pins show nobody"),
    ("firsttrust", "pins show ../etc"),
    ("firsttrust", "pins remove nobody"),
    ("firsttrust", "pins export nobody --format curl"),
    ("firsttrust", "pins export nobody --format nonsense"),
    ("firsttrust", "call nobody GET /v1/identity"),
    ("firsttrust", "call nobody GET no-slash"),
    ("firsttrust", "pin-cert a --address 127.0.0.1 --cert {missing}"),
    ("firsttrust", "pin-cert a --address 127.0.0.1 --cert {dir}"),
    ("firsttrust", "pin-cert a --address 127.0.0.1 --cert {file}"),
    ("firsttrust", "rotate nobody"),
    ("firsttrust", "nonsense"),
    ("firsttrust", "--store-that-is-a-file pins list"),
    ("firsttrust", "--store-that-is-a-file identity"),
    ("firsttrust", "--store-that-is-a-file pins show x"),
    # the agent
    ("firsttrust-agent", "provision --source file:{missing} --state-dir {empty}/s --no-set-password"),
    ("firsttrust-agent", "provision --source file:{dir} --state-dir {empty}/s --no-set-password"),
    ("firsttrust-agent", "provision --source file:{file} --state-dir {empty}/s --no-set-password"),
    ("firsttrust-agent", "provision --source file:{proc} --state-dir {empty}/s --no-set-password"),
    ("firsttrust-agent", "provision --source nonsense --state-dir {empty}/s"),
    ("firsttrust-agent", "provision --source file:{file} --state-dir {file} --no-set-password"),
    ("firsttrust-agent", "status --state-dir {file}"),
    ("firsttrust-agent", "status --config {dir} --state-dir {empty}"),
    ("firsttrust-agent", "status --config {toml} --state-dir {empty}"),
    ("firsttrust-agent", "authorize --cert {missing} --state-dir {empty}"),
    ("firsttrust-agent", "authorize --cert {dir} --state-dir {empty}"),
    ("firsttrust-agent", "authorize --cert {file} --state-dir {empty}"),
    ("firsttrust-agent", "authorize --cert {proc} --state-dir {empty}"),
    ("firsttrust-agent", "show-identity --state-dir {file}"),
    ("firsttrust-agent", "show-identity --state-dir {empty}"),
    ("firsttrust-agent", "show-identity --state-dir {procdir}"),
    ("firsttrust-agent", "serve --state-dir {file}"),
    ("firsttrust-agent", "serve --state-dir {empty} --listen nonsense:port"),
    ("firsttrust-agent", "nonsense"),
    # the lab
    ("firsttrust-lab", "up 0 --root {empty}/lab"),
    ("firsttrust-lab", "up 1 --root {file}"),
    ("firsttrust-lab", "status --root {file}"),
    ("firsttrust-lab", "down --root {file}"),
    ("firsttrust-lab", "nonsense"),
]


@pytest.mark.parametrize("program, template", CASES, ids=[f"{p} {t}" for p, t in CASES])
def test_bad_input_is_one_line_and_a_documented_exit_code(program, template, paths, closed_port, tmp_path,
                                                          monkeypatch, capsys):
    home = tmp_path / "home"
    if template.startswith("--store-that-is-a-file "):
        template = template.removeprefix("--store-that-is-a-file ")
        home.write_text("a file, not a directory")
    monkeypatch.setenv("FIRSTTRUST_HOME", str(home))
    import shlex
    argv = shlex.split(template.format(closed=closed_port, **paths))
    code = MAINS[program](argv)
    out, err = capsys.readouterr()
    assert code in (1, 2, 3), (code, err)
    assert err.count("\n") == 1 and err.startswith(f"{program}: "), err
    assert "Traceback" not in err + out


def test_an_http_server_instead_of_an_agent_is_one_line(paths, http_port, tmp_path, monkeypatch, capsys):
    from firsttrust.credentials import EnrollmentSecrets
    from firsttrust.requester.deployspec import secrets_to_json
    secrets = tmp_path / "s.json"
    secrets.write_bytes(secrets_to_json(EnrollmentSecrets.generate()))
    secrets.chmod(0o600)
    monkeypatch.setenv("FIRSTTRUST_HOME", str(tmp_path / "home"))
    code = requester_cli.main(["enroll", f"127.0.0.1:{http_port}", "--secrets", str(secrets), "--name", "a"])
    out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err


def test_output_to_a_closed_pipe_exits_quietly(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run(f"{sys.executable} -m firsttrust.requester.cli --help | head -c 1 >/dev/null; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True, text=True,
                          timeout=60)
    assert proc.stderr == "" and proc.returncode in (0, 141)
