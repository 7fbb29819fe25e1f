"""An input nested thousands deep (json and tomllib recurse per level) is refused with the
reader's typed error, never an internal error (RecursionError) or a traceback; so is a JSON
number of more than 4300 digits (ValueError, not JSONDecodeError)."""

from __future__ import annotations

import os

import pytest

from firsttrust.agent.config import ConfigError, load_config
from firsttrust.agent.state import StateDir, StateError
from firsttrust.requester.batch import InvalidTargets, read_targets
from firsttrust.requester.deployspec import InvalidDeploySpec, secrets_from_json
from firsttrust.requester.profile import ProfileError, read_config
from firsttrust.requester.truststore import ApplianceRecord, TrustStoreError

DEEP_JSON = b"[" * 60000
DEEP_TOML = b"a = " + b"[" * 5000 + b"\n"


@pytest.mark.parametrize("document", [DEEP_JSON, b'{"sec_a": ' + b"9" * 5000 + b', "sec_b": "x"}'])
def test_a_secrets_file_nested_too_deeply_or_with_a_huge_number_is_not_a_secrets_file(document):
    with pytest.raises(InvalidDeploySpec):
        secrets_from_json(document)


def test_a_targets_file_nested_too_deeply_is_refused(tmp_path):
    path = tmp_path / "targets.json"
    path.write_bytes(DEEP_JSON)
    with pytest.raises(InvalidTargets, match="targets file"):
        read_targets(str(path))


def test_state_json_and_a_pinned_record_nested_too_deeply_are_corrupt(tmp_path):
    store = StateDir(tmp_path)
    store.state_path.write_bytes(DEEP_JSON)
    with pytest.raises(StateError, match="corrupt"):
        store.load()
    with pytest.raises(TrustStoreError, match="corrupt"):
        ApplianceRecord.from_json(DEEP_JSON, tmp_path / "app.json")


def test_a_config_file_nested_too_deeply_is_refused_on_both_sides(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(DEEP_TOML)
    os.chmod(path, 0o600)
    with pytest.raises(ProfileError, match="not TOML"):
        read_config(path)
    with pytest.raises(ConfigError):
        load_config(path, tmp_path)
