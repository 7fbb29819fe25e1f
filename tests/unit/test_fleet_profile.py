"""The fleet profile ($FIRSTTRUST_HOME/fleet.json, docs/fleet.md sections 1 and 3): the membership
high-water marks only ever rise, and a corrupt value is a typed error."""

from __future__ import annotations

import pytest

from firsttrust.requester.store.config import FleetProfile, load_profile, remember_members, save_profile
from firsttrust.requester.store.errors import StoreConfigError

ANCHOR = "sha256:" + "ab" * 32


def test_membership_high_water_marks_only_rise_and_survive_a_rewrite(tmp_path):
    save_profile(tmp_path, FleetProfile(ANCHOR, None))
    remember_members(tmp_path, {"host-b": 2, "host-c": 1})
    remember_members(tmp_path, {"host-b": 1, "host-c": 3})  # an older view never lowers a mark
    assert load_profile(tmp_path) == FleetProfile(ANCHOR, None, {"host-b": 2, "host-c": 3})


@pytest.mark.parametrize("members", ['{"host-b": "2"}', '{"host-b": -1}', '["host-b"]', '{"host-b": 1.5}'])
def test_a_corrupt_high_water_mark_is_store_config(tmp_path, members):
    (tmp_path / "fleet.json").write_text(f'{{"anchor_pin": "{ANCHOR}", "store": null, "members": {members}}}')
    with pytest.raises(StoreConfigError, match="corrupt"):
        load_profile(tmp_path)
