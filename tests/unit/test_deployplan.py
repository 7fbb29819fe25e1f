"""The deploy plan without any server: names, extraConfig, what --dry-run shows, read-back rules."""

from __future__ import annotations

import json

import pytest

from firsttrust.credentials import EnrollmentSecrets
from firsttrust.deployment import REQUESTER_CERT, guestinfo_key
from firsttrust.requester.deployplan import (
    MAX_COUNT,
    NOT_REMOVED,
    REMOVED,
    SCRUB_KEYS,
    InvalidDeployPlan,
    appliance_names,
    check_vcenter_url,
    missing_config,
    plan_deployment,
    scrub_status,
    steps,
    usable_guest_ip,
)
from firsttrust.requester.deployspec import HARDENING_VMX_SETTINGS

URL = "https://vc.example/sdk"


def test_names_from_a_prefix_are_zero_padded_so_they_sort():
    assert appliance_names(prefix="app", count=2) == ["app-01", "app-02"]
    names = appliance_names(prefix="app", count=120)
    assert names[0] == "app-001" and names[-1] == "app-120" and names == sorted(names)


def test_a_single_name_is_one_appliance():
    assert appliance_names(name="edge-7") == ["edge-7"]


@pytest.mark.parametrize("kwargs", [
    {}, {"name": "a", "prefix": "b", "count": 2}, {"prefix": "app"}, {"prefix": "app", "count": 0},
    {"prefix": "app", "count": MAX_COUNT + 1}, {"name": "a", "count": 3}, {"name": "../etc"},
    {"name": "-leading-dash"}, {"prefix": "x" * 62, "count": 10},
])
def test_bad_names_and_counts_are_refused(kwargs):
    with pytest.raises(InvalidDeployPlan):
        appliance_names(**kwargs)


@pytest.mark.parametrize("url", ["http://vc.example/sdk", "https://user:pw@vc.example/sdk", "vc.example",
                                 "https:///sdk", "https://vc.example:99999/sdk"])
def test_only_an_https_url_without_credentials_is_a_vcenter_url(url):
    with pytest.raises(InvalidDeployPlan):
        check_vcenter_url(url)
    assert check_vcenter_url("https://127.0.0.1:8989/sdk")


def test_each_appliance_gets_fresh_secrets_in_its_clone_extraconfig():
    plan = plan_deployment(URL, "tmpl", ["a-01", "a-02"])
    first, second = plan.appliances
    assert first.secrets != second.secrets
    for appliance in plan.appliances:
        config = dict(appliance.extra_config)
        assert config[guestinfo_key("firsttrust.sec-a")] == appliance.secrets.sec_a
        assert config[guestinfo_key("firsttrust.sec-b")] == appliance.secrets.sec_b
        assert appliance.extra_config[-len(HARDENING_VMX_SETTINGS):] == HARDENING_VMX_SETTINGS
        assert appliance.secrets_file == f"{appliance.name}.json"


def test_the_plan_carries_the_optional_properties(requester_identity):
    plan = plan_deployment(URL, "tmpl", ["a"], requester_cert=requester_identity.cert_pem, enroll_window="2h")
    config = dict(plan.appliances[0].extra_config)
    assert config[guestinfo_key(REQUESTER_CERT) + ".encoding"] == "base64"
    assert config[guestinfo_key("firsttrust.enroll-window")] == "2h"


def test_repeated_names_and_an_empty_template_are_refused():
    with pytest.raises(InvalidDeployPlan):
        plan_deployment(URL, "tmpl", ["a", "a"])
    with pytest.raises(InvalidDeployPlan):
        plan_deployment(URL, "", ["a"])


def test_describe_shows_every_key_and_no_secret_value():
    plan = plan_deployment(URL, "tmpl", ["a-01", "a-02"], enroll_window="1h")
    text = json.dumps(plan.describe())
    for appliance in plan.appliances:
        for value in appliance.secret_values:
            assert value not in text
        assert appliance.name in text
    described = plan.describe()["appliances"][0]["extra_config"]
    assert described[SCRUB_KEYS[0]] == "<secret>" and described[guestinfo_key("firsttrust.enroll-window")] == "1h"
    assert not any(value in repr(plan) for a in plan.appliances for value in a.secret_values)


def test_the_steps_stop_after_power_on_without_enrollment():
    assert steps(False)[-1] == "power on"
    assert steps(True)[-1] == "remove secret keys"
    assert plan_deployment(URL, "t", ["a"], enroll=False).describe()["scrub_after_enroll"] == []


def test_the_generator_is_injectable():
    fixed = EnrollmentSecrets("a" * 20 + "-x", "b" * 20 + "-y")
    plan = plan_deployment(URL, "t", ["a"], generate=lambda: fixed)
    assert plan.appliances[0].secrets is fixed


# --- read-back -------------------------------------------------------------------------------------


def test_missing_config_names_what_the_vm_does_not_hold_by_its_last_entry():
    planned = [("k1", "v1"), ("k2", "v2")]
    assert missing_config([("govcsim", "TRUE"), ("k1", "v1"), ("k2", "v2")], planned) == []
    assert missing_config([("k1", "v1")], planned) == ["k2"]
    assert missing_config([("k1", "v1"), ("k2", "v2"), ("k1", "")], planned) == ["k1"]


def test_scrub_status_esxi_semantics_a_deleted_key_is_removed():
    read_back = [("govcsim", "TRUE"), ("guestinfo.firsttrust.enroll-window", "1h")]
    assert scrub_status(read_back) == {key: REMOVED for key in SCRUB_KEYS}


def test_scrub_status_vcsim_semantics_an_appended_empty_entry_is_not_removal():
    sec_a, sec_b = SCRUB_KEYS
    read_back = [(sec_a, "secret-a"), (sec_b, "secret-b"), (sec_a, ""), (sec_b, "")]
    assert scrub_status(read_back) == {sec_a: NOT_REMOVED, sec_b: NOT_REMOVED}
    assert scrub_status([(sec_a, ""), (sec_b, "secret-b")]) == {sec_a: REMOVED, sec_b: NOT_REMOVED}


def test_the_guest_ip_skips_what_cannot_be_enrolled_at():
    assert usable_guest_ip([None]) is None
    assert usable_guest_ip(["", "169.254.3.4", "fe80::1%eth0", "not-an-ip"]) is None
    assert usable_guest_ip(["169.254.3.4", "fe80::1", "10.0.0.7", "10.0.0.8"]) == "10.0.0.7"
    assert usable_guest_ip(["2001:db8::5"]) == "2001:db8::5"
    assert usable_guest_ip(["127.5.6.7"]) == "127.5.6.7"  # the lab's appliances


@pytest.mark.parametrize("names", [["/tmp/outside"], ["../x"], ["a/b"], [".."], [""], ["ok", 5], "app-1"],
                         ids=["absolute", "dotdot", "slash", "parent", "empty", "not-a-str", "one-string"])
def test_a_name_that_could_lead_out_of_the_secrets_directory_is_refused_before_anything(names):
    """plan_deployment is the library's way in too: its names become the secrets files (NAME.json)
    that deploy writes SEC-A and SEC-B to, under the secrets directory and nowhere else."""
    with pytest.raises(InvalidDeployPlan) as caught:
        plan_deployment(URL, "tmpl", names)
    assert "name" in str(caught.value)
