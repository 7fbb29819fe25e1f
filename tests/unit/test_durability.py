"""Files that matter are durable once written and private from creation, on both sides.

The agent's state.json (the commit point), sec-b and identity are renamed into place and then
their directory is fsynced (common/files.py): until the directory is on disk a power loss
can bring the old file back, or none. The requester's private key, which every enrolled
appliance's API trusts, is 0600 from creation (requester/truststore.py), whatever the umask."""

from __future__ import annotations

import os
import stat

import pytest

from firsttrust.agent.state import AgentState, StateDir
from firsttrust.identity import create_identity
from firsttrust.requester.truststore import TrustStore


@pytest.fixture
def syscalls(monkeypatch):
    """os.replace and os.fsync as they happen: ("replace", final name) and ("fsync", what the
    descriptor is: the path of a directory, or "file")."""
    seen: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        seen.append(("replace", os.path.basename(dst)))

    def fsync(fd):
        real_fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        seen.append(("fsync", path if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def directory_synced_after_rename(seen, name: str, directory) -> bool:
    renamed = [i for i, call in enumerate(seen) if call == ("replace", name)]
    return bool(renamed) and ("fsync", str(directory)) in seen[renamed[-1] + 1:]


@pytest.mark.parametrize("name, write", [
    ("state.json", lambda store: store.save(AgentState(phase="provisioned"))),
    ("sec-b", lambda store: store.save_sec_b("not-a-real-sec-b")),
    ("identity.key", lambda store: store.save_key(create_identity("appliance").key_pem)),
    ("identity.crt", lambda store: store.save_certificate(create_identity("appliance").cert_pem)),
])
def test_the_agent_fsyncs_the_directory_after_renaming_state_sec_b_and_identity(tmp_path, syscalls, name, write):
    store = StateDir(tmp_path / "state")
    store.ensure()
    write(store)
    assert ("fsync", "file") in syscalls  # the content first
    assert directory_synced_after_rename(syscalls, name, store.path), syscalls


def test_the_requester_fsyncs_the_directory_after_renaming_its_identity(tmp_path, syscalls):
    store = TrustStore(tmp_path / "home")
    store.identity()
    for name in ("identity.key", "identity.crt"):
        assert directory_synced_after_rename(syscalls, name, store.home), syscalls


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_requester_private_key_is_0600_and_its_home_0700(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = TrustStore(tmp_path / "home")
        store.identity()
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(store.home.stat().st_mode) == 0o700


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_agent_private_files_are_0600_in_a_0700_directory(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = StateDir(tmp_path / "state")
        store.ensure()
        store.save(AgentState())
        store.save_sec_b("not-a-real-sec-b")
        identity = create_identity("appliance")
        store.save_key(identity.key_pem)
        store.save_certificate(identity.cert_pem)
        store.authorize(create_identity("requester").cert_pem, name="r", source="test")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in store.path.iterdir()}
    assert modes == {"state.json": 0o600, "sec-b": 0o600, "identity.key": 0o600, "identity.crt": 0o644,
                     "authorized.json": 0o600}
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o700


def test_a_state_directory_that_exists_with_a_looser_mode_is_made_0700(tmp_path):
    (tmp_path / "state").mkdir(mode=0o755)
    os.chmod(tmp_path / "state", 0o755)
    StateDir(tmp_path / "state").ensure()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_requesters_pinned_appliance_records_are_0600(tmp_path, appliance_identity, umask):
    from firsttrust.requester.truststore import ApplianceRecord
    old = os.umask(umask)
    try:
        store = TrustStore(tmp_path / "home")
        store.save(ApplianceRecord("app-01", "10.0.0.5", appliance_identity.pin,
                                   appliance_identity.cert_pem.decode(), 8791))
    finally:
        os.umask(old)
    for path in (store.appliances, *store.appliances.iterdir()):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
