"""The guest-command way in the deploy plan (issue 27): a guest password per appliance, from the
secrets' generator (so the suite's secret guard knows it), hidden wherever the plan is shown,
removed with the secrets; `firsttrust deploy --embodiment` takes the way's name."""

from __future__ import annotations

import json

import pytest

from firsttrust.deployment import GUEST_PASSWORD, guestinfo_key
from firsttrust.requester.deployplan import (
    GUEST_COMMAND_WAY,
    SCRUB_KEYS,
    InvalidDeployPlan,
    plan_deployment,
)

URL = "https://vc.example/sdk"


def suite_conftest(pytestconfig):
    """tests/conftest.py as pytest loaded it (the suite's secret guard), found among pytest's plugins.
    Not `import conftest`: tests/fault/conftest.py is a module named `conftest` too, and whichever was
    loaded last holds that name in sys.modules."""
    from pathlib import Path

    wanted = Path(__file__).resolve().parents[1] / "conftest.py"
    for plugin in pytestconfig.pluginmanager.get_plugins():
        path = getattr(plugin, "__file__", None)
        if path and Path(path).resolve() == wanted:
            return plugin
    raise AssertionError("tests/conftest.py is not loaded")


def test_each_appliance_gets_its_own_guest_password_that_the_secret_guard_knows(pytestconfig):
    plan = plan_deployment(URL, "tpl", ["a", "b"], way=GUEST_COMMAND_WAY)
    passwords = [a.guest_password for a in plan.appliances]
    assert all(passwords) and len(set(passwords)) == 2
    for appliance in plan.appliances:
        assert (guestinfo_key(GUEST_PASSWORD), appliance.guest_password) in appliance.extra_config
        conftest = suite_conftest(pytestconfig)
        assert appliance.guest_password in conftest.GENERATED_SECRETS
        assert conftest.SECRET_GUARD.leaks(f"log line {appliance.guest_password}")


def test_the_guest_password_is_hidden_in_the_dry_run_and_removed_with_the_secrets():
    plan = plan_deployment(URL, "tpl", ["a"], way=GUEST_COMMAND_WAY)
    described = json.dumps(plan.describe())
    assert plan.appliances[0].guest_password not in described and "<secret>" in described
    assert plan.scrub_keys == (guestinfo_key(GUEST_PASSWORD),)  # the guest-command way injects no SRP secrets
    assert not {key for key, _ in plan.appliances[0].extra_config} & set(SCRUB_KEYS)
    assert plan.appliances[0].secrets_file == "a.guest.json" and not plan.appliances[0].srp
    injected = plan_deployment(URL, "tpl", ["a"], guest_account=True)  # a guest account beside the secrets
    assert injected.scrub_keys == SCRUB_KEYS + (guestinfo_key(GUEST_PASSWORD),)
    assert plan_deployment(URL, "tpl", ["a"]).scrub_keys == SCRUB_KEYS  # srp: no guest account
    assert plan_deployment(URL, "tpl", ["a"]).appliances[0].guest_password is None


def test_a_guest_account_needs_a_template_and_an_unknown_way_is_refused():
    with pytest.raises(InvalidDeployPlan, match="template"):
        plan_deployment(URL, None, ["a"], ova="x.ova", way=GUEST_COMMAND_WAY)
    with pytest.raises(InvalidDeployPlan, match="unknown way"):
        plan_deployment(URL, "tpl", ["a"], way="fig-3")


def test_deploy_takes_the_way_by_its_mode_name_as_pin_cert_does(capsys, tmp_path):
    from firsttrust.requester.cli import main

    code = main(["deploy", "--vcenter", URL, "--thumbprint", "AA:" * 31 + "AA", "--template", "tpl", "--name", "a",
                 "--secrets-dir", str(tmp_path), "--embodiment", "guest-command", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and guestinfo_key(GUEST_PASSWORD) in json.loads(out)["scrub_after_enroll"]
    assert main(["deploy", "--vcenter", URL, "--thumbprint", "AA:" * 31 + "AA", "--template", "tpl", "--name", "a",
                 "--secrets-dir", str(tmp_path), "--embodiment", "fig3", "--dry-run"]) == 2
    capsys.readouterr()
