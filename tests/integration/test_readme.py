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


def test_the_readme_first_boot_recipe_runs_and_leaves_no_secret_in_a_file_others_can_read(tmp_path):
    """Issue 28: the recipe wrote the deployment spec, secrets and all, through `>` (0644 under umask 022)."""
    block = (ROOT / "README.md").read_text().split("## Try the first-boot path by hand", 1)[1]
    commands = re.findall(r"^```sh\n(.*?)^```", block, flags=re.S | re.M)[0]
    commands = commands.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")
    result = subprocess.run(["bash", "-ec", f"umask 022\n{commands}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    sec_a = __import__("json").loads((tmp_path / "secrets.json").read_text())["sec_a"]
    for path in tmp_path.iterdir():
        if path.is_file() and sec_a in path.read_text(errors="replace"):
            assert path.stat().st_mode & 0o077 == 0, f"{path.name} holds a secret and others can read it"
