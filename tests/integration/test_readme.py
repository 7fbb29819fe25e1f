"""The README's Python example runs as written, against a local appliance: the address and the
secrets come from the variables it reads (APPLIANCE, SECRETS), nothing else is contacted."""

import os
import re
import subprocess
import sys
from pathlib import Path

import asyncio
from agent_fixture import provisioned
from test_serve import Serve

from firsttrust.requester.deployspec import secrets_to_json

ROOT = Path(__file__).resolve().parents[2]


def readme_python() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, "the README has exactly one Python example"
    return blocks[0]


def test_the_readme_python_example_runs_as_written(tmp_path):
    app = provisioned(tmp_path)
    secrets = tmp_path / "app-01.json"
    secrets.write_bytes(secrets_to_json(app.secrets))
    secrets.chmod(0o600)
    script = tmp_path / "example.py"
    script.write_text(readme_python())
    serve = Serve(app.store.path)
    asyncio.run(serve.ready())
    try:
        env = {**os.environ, "APPLIANCE": f"127.0.0.1:{serve.enroll_port}", "SECRETS": str(secrets),
               "FIRSTTRUST_HOME": str(tmp_path / "home")}
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120,
                             cwd=tmp_path)
    finally:
        serve.stop()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"app-01 {app.store.load_identity().pin} True"
