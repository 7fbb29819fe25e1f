"""Issue 28's redeploy scenario on loopback: an appliance pinned under a name is redeployed at the
same address; `enroll` refuses naming what changed (exit 3), `call` says so, `--replace` pins the
new one. Nothing is sent to the new appliance's enrollment port before `--replace`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from agent_fixture import provisioned
from test_requester import cli

from firsttrust.agent.apidoor import ApiDoor, bind_api_socket
from firsttrust.requester.truststore import TrustStore

ID_1, ID_2 = "fd-1111111111111111", "fd-2222222222222222"


def secrets_file(path: Path, app, deployment_id: str | None) -> str:
    document = {"sec_a": app.secrets.sec_a, "sec_b": app.secrets.sec_b}
    if deployment_id:
        document["deployment_id"] = deployment_id
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return str(path)


async def appliance(root: Path, api_port: int = 0):
    app = await provisioned(root).start(phase_timeout=5.0)
    door = ApiDoor(app.store, bind_api_socket("127.0.0.1", api_port))
    await door.start()
    app.server.api_port = door.port
    app.server.on_enrolled = lambda _authorized: door.open()
    return app, door


async def test_a_redeployed_appliance_is_refused_naming_the_change_and_replace_pins_the_new_one(tmp_path):
    home = tmp_path / "home"
    first, first_door = await appliance(tmp_path / "first")
    api_port = first_door.port
    old = secrets_file(tmp_path / "old.json", first, ID_1)
    try:
        code, out, err = await cli("enroll", f"127.0.0.1:{first.port}", "--secrets", old, "--name", "app-01", home=home)
        assert code == 0, err
        pinned = TrustStore(home).get("app-01")
        assert pinned.deployment_id == ID_1
        code, out, err = await cli("enroll", f"127.0.0.1:{first.port}", "--secrets", old, "--name", "app-01", home=home)
        assert code == 0 and out.startswith("already-pinned app-01"), err  # the probe saw the pinned key
    finally:
        await first_door.close()
        await first.stop()

    second, second_door = await appliance(tmp_path / "second", api_port)  # redeployed: the same address
    new = secrets_file(tmp_path / "new.json", second, ID_2)
    address = f"127.0.0.1:{second.port}"
    try:
        code, out, err = await cli("enroll", address, "--secrets", new, "--name", "app-01", home=home)
        assert code == 3, err
        assert ID_1 in err and ID_2 in err and pinned.pin in err and "redeployed" in err
        TrustStore(home).save(replace(pinned, address="127.0.0.9"))  # redeployed at another address this time
        code, out, err = await cli("enroll", address, "--secrets", new, "--name", "app-01", home=home)
        assert code == 3 and ID_1 in err and ID_2 in err, err
        TrustStore(home).save(pinned)
        assert f"firsttrust enroll {address} --secrets {new} --name app-01 --replace" in err

        undated = secrets_file(tmp_path / "undated.json", second, None)  # a secrets file from before ids
        code, out, err = await cli("enroll", address, "--secrets", undated, "--name", "app-01", home=home)
        assert code == 3 and "closes the connection before TLS" in err and "looks redeployed or reset" in err, err

        code, out, err = await cli("call", "app-01", "GET", "/v1/identity", home=home)
        assert code == 3 and "looks redeployed or reset" in err, err
        assert second.connections_started == 0, "nothing reached the new appliance's enrollment port"
        assert TrustStore(home).get("app-01") == pinned

        code, out, err = await cli("enroll", address, "--secrets", new, "--name", "app-01", "--replace", home=home)
        assert code == 0, err
        replaced = TrustStore(home).get("app-01")
        assert replaced.pin == second.store.load_identity().pin != pinned.pin and replaced.deployment_id == ID_2
        assert out == f"enrolled app-01: {replaced.pin}\n" and f"replaced app-01: 127.0.0.1 {pinned.pin}" in err
        code, out, err = await cli("call", "app-01", "GET", "/v1/identity", home=home)
        assert code == 0 and json.loads(out)["pin"] == replaced.pin, err

        # The old pin back, the same deployment's secrets: the appliance there presents another key.
        TrustStore(home).save(pinned)
        code, out, err = await cli("enroll", address, "--secrets", old, "--name", "app-01", home=home)
        assert code == 3 and f"pinned {pinned.pin}, presented {replaced.pin}" in err, err
        code, out, err = await cli("call", "app-01", "GET", "/v1/identity", home=home)
        assert code == 3 and "now presents another key" in err, err
    finally:
        await second_door.close()
        await second.stop()
