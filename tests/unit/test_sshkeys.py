"""Root writes the requester's SSH key under a home directory whose content the account's user
controls (agent/sshkeys.py). Whatever that user puts there, a symlink or a hard link to
/etc/shadow, a ~/.ssh swapped for a link between the check and the use, root never reads or
writes anything outside the account's real ~/.ssh.

The account is simulated (pwd.getpwnam patched): an unprivileged uid, a home under tmp_path, and
a root-owned "etc" directory with a shadow-like file that must stay untouched and unread."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from firsttrust.agent import sshkeys
from firsttrust.agent.sshkeys import (
    SSHKeyError,
    authorized_keys_target,
    has_authorized_key,
    install_authorized_key,
    remove_stale_authorized_keys_temps,
)

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGvnjiSSv8MoqgS7tDWk5fsZ2Ig9uk1IHYCg+ZDk6Y3q bringup"
UID = GID = 64123  # an unprivileged account: not root, not the test's user
SHADOW_LINE = "root:$6$not-a-real-hash-but-root-only:19000:0:99999:7:::"
SHADOW = SHADOW_LINE.encode() + b"\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to the account's uid needs root")


@pytest.fixture
def world(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, UID, GID)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    shadow = etc / "shadow"
    shadow.write_bytes(SHADOW)
    shadow.chmod(0o640)
    (etc / "authorized_keys").write_bytes(SHADOW)
    (etc / ".authorized_keys.0123456789ab.tmp").write_bytes(SHADOW)
    entry = SimpleNamespace(pw_uid=UID, pw_gid=GID, pw_dir=str(home))
    monkeypatch.setattr(sshkeys.pwd, "getpwnam", lambda name: entry if name == "acct" else (_ for _ in ()).throw(KeyError(name)))
    w = SimpleNamespace(home=home, ssh=home / ".ssh", keys=home / ".ssh" / "authorized_keys", etc=etc, shadow=shadow)
    w.etc_before = {p.name: p.read_bytes() for p in etc.iterdir()}
    return w


def make_ssh_dir(world, mode=0o700, uid=UID):
    world.ssh.mkdir(mode=mode)
    os.chmod(world.ssh, mode)
    os.chown(world.ssh, uid, GID)


def assert_nothing_outside_was_touched(world):
    """The shadow-like files are as they were, and no file under the home holds their content."""
    assert {p.name: p.read_bytes() for p in world.etc.iterdir()} == world.etc_before
    for root, dirs, files in os.walk(world.home, followlinks=False):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                assert b"not-a-real-hash" not in path.read_bytes(), f"{path} holds what root read through a link"


def test_a_key_is_installed_in_ssh_0700_and_authorized_keys_0600_owned_by_the_account(world):
    assert install_authorized_key("acct", SSH_KEY) == world.keys
    assert install_authorized_key("acct", SSH_KEY) == world.keys  # idempotent
    assert world.keys.read_text() == SSH_KEY + "\n"
    for path, mode in ((world.ssh, 0o700), (world.keys, 0o600)):
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, UID, GID)
    assert has_authorized_key("acct", SSH_KEY)


def test_the_key_is_installed_without_cap_fowner_as_the_agents_unit_runs_it(world, monkeypatch):
    """systemd/firsttrust-agent.service grants CAP_CHOWN and CAP_DAC_OVERRIDE, not CAP_FOWNER: root may
    not change the mode of a file it no longer owns. Simulated: fchmod of a descriptor whose owner is
    not root fails, as without CAP_FOWNER. (Caught first by the VM test: ssh then refused the key.)"""
    real_fchmod = os.fchmod

    def fchmod_without_fowner(fd, mode):
        if os.fstat(fd).st_uid != os.geteuid():
            raise PermissionError(1, "Operation not permitted")
        return real_fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod_without_fowner)
    assert install_authorized_key("acct", SSH_KEY) == world.keys
    for path, mode in ((world.ssh, 0o700), (world.keys, 0o600)):
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, UID, GID)


def test_a_symlinked_authorized_keys_is_never_read_or_written_through(world):
    make_ssh_dir(world)
    world.keys.symlink_to(world.shadow)
    with pytest.raises(SSHKeyError, match="symlink"):
        authorized_keys_target("acct")
    with pytest.raises(SSHKeyError, match="symlink"):
        install_authorized_key("acct", SSH_KEY)
    assert not has_authorized_key("acct", SHADOW_LINE)  # a line of the shadow file: not read through the link
    assert world.keys.is_symlink()
    assert_nothing_outside_was_touched(world)


def test_a_symlinked_ssh_dir_is_never_followed(world):
    world.ssh.symlink_to(world.etc)
    with pytest.raises(SSHKeyError, match="symlink or not a directory"):
        authorized_keys_target("acct")
    with pytest.raises(SSHKeyError, match="symlink or not a directory"):
        install_authorized_key("acct", SSH_KEY)
    assert not has_authorized_key("acct", SHADOW_LINE)
    assert remove_stale_authorized_keys_temps("acct") == 0
    assert_nothing_outside_was_touched(world)


def test_a_hard_link_to_another_file_is_refused_not_copied(world):
    make_ssh_dir(world)
    os.link(world.shadow, world.keys)
    with pytest.raises(SSHKeyError, match="one link"):
        install_authorized_key("acct", SSH_KEY)
    assert not has_authorized_key("acct", SHADOW_LINE)
    assert os.stat(world.keys).st_ino == os.stat(world.shadow).st_ino
    assert {p.name: p.read_bytes() for p in world.etc.iterdir()} == world.etc_before


@pytest.mark.parametrize("what", ["owner", "group-writable"])
def test_an_ssh_dir_of_another_user_or_writable_by_others_is_refused(world, what):
    make_ssh_dir(world, mode=0o770 if what == "group-writable" else 0o700, uid=UID + 1 if what == "owner" else UID)
    with pytest.raises(SSHKeyError, match="owned by|writable by group"):
        install_authorized_key("acct", SSH_KEY)
    assert not world.keys.exists()


@pytest.mark.parametrize("what", ["owner", "group-writable", "fifo"])
def test_an_authorized_keys_of_another_user_writable_by_others_or_not_a_file_is_refused(world, what):
    make_ssh_dir(world)
    if what == "fifo":
        os.mkfifo(world.keys, 0o600)  # O_NONBLOCK: opening it must not hang the agent
    else:
        world.keys.write_text("")
        os.chown(world.keys, UID + 1 if what == "owner" else UID, GID)
        world.keys.chmod(0o620 if what == "group-writable" else 0o600)
    with pytest.raises(SSHKeyError, match="regular file|writable by group"):
        install_authorized_key("acct", SSH_KEY)


def swap_ssh_dir_for_a_link(world):
    world.ssh.rename(world.home / ".ssh-real")
    world.ssh.symlink_to(world.etc)


def swap_authorized_keys_for_a_link(world):
    world.keys.unlink(missing_ok=True)
    world.keys.symlink_to(world.shadow)


@pytest.mark.parametrize("swap", [swap_ssh_dir_for_a_link, swap_authorized_keys_for_a_link])
@pytest.mark.parametrize("hook", ["parse_public_key_line", "_check_ssh_dir"])
def test_a_path_swapped_between_check_and_use_is_never_followed(world, monkeypatch, hook, swap):
    """The user swaps ~/.ssh, or ~/.ssh/authorized_keys, for a link to the shadow-like files at
    the worst moment: after the key line is checked (the old lstat-then-open window), or right
    after the ~/.ssh descriptor passed its fstat checks. Either the key goes into the account's
    real ~/.ssh or the install is refused; nothing outside is read or written."""
    make_ssh_dir(world)
    world.keys.write_text("")
    os.chown(world.keys, UID, GID)
    real = getattr(sshkeys, hook)

    def swapping(*args, **kwargs):
        result = real(*args, **kwargs)
        if not world.ssh.is_symlink() and not world.keys.is_symlink():
            swap(world)
        return result

    monkeypatch.setattr(sshkeys, hook, swapping)
    try:
        install_authorized_key("acct", SSH_KEY)
    except SSHKeyError as exc:
        assert "symlink" in str(exc)
    assert world.ssh.is_symlink() or world.keys.is_symlink()  # the swap happened
    assert_nothing_outside_was_touched(world)


def test_the_temp_sweep_removes_leftovers_only_in_the_real_ssh_dir(world):
    make_ssh_dir(world)
    (world.ssh / ".authorized_keys.aaaaaaaaaaaa.tmp").write_text("partial")
    (world.ssh / ".authorized_keys.bbbbbbbbbbbb.tmp").symlink_to(world.etc / ".authorized_keys.0123456789ab.tmp")
    (world.ssh / "id_ed25519").write_text("kept")
    assert remove_stale_authorized_keys_temps("acct") == 2
    assert sorted(p.name for p in world.ssh.iterdir()) == ["id_ed25519"]
    assert_nothing_outside_was_touched(world)


def test_an_unknown_account_or_missing_home_is_refused_by_name(world, tmp_path, monkeypatch):
    with pytest.raises(SSHKeyError, match="does not exist on the appliance"):
        authorized_keys_target("nobody-here")
    assert not has_authorized_key("nobody-here", SSH_KEY)
    monkeypatch.setattr(sshkeys.pwd, "getpwnam", lambda name: SimpleNamespace(pw_uid=UID, pw_gid=GID,
                                                                             pw_dir=str(tmp_path / "gone")))
    with pytest.raises(SSHKeyError, match="home directory"):
        install_authorized_key("acct", SSH_KEY)


def test_the_temp_sweep_never_follows_a_ssh_dir_swapped_after_its_check(world, monkeypatch):
    make_ssh_dir(world)
    leftover = ".authorized_keys.cccccccccccc.tmp"
    (world.ssh / leftover).write_text("partial")
    (world.etc / leftover).write_bytes(SHADOW)  # the same name where the swapped link points
    world.etc_before = {p.name: p.read_bytes() for p in world.etc.iterdir()}
    real = sshkeys._check_ssh_dir

    def swapping(*args):
        real(*args)
        swap_ssh_dir_for_a_link(world)

    monkeypatch.setattr(sshkeys, "_check_ssh_dir", swapping)
    assert remove_stale_authorized_keys_temps("acct") == 1
    assert list((world.home / ".ssh-real").iterdir()) == []  # removed where it was checked
    assert_nothing_outside_was_touched(world)



def test_host_keys_are_read_again_when_a_key_is_added_removed_or_rewritten_in_place(tmp_path, monkeypatch):
    """The enrollment sends the host keys HostKeys last read: it must notice every way a key
    changes (ssh-keygen -A adds files; a key rewritten in place keeps its name and inode)."""
    ed25519 = tmp_path / "ssh_host_ed25519_key.pub"
    ed25519.write_text("ssh-ed25519 AAAAone root@a\n")
    keys = sshkeys.HostKeys(str(tmp_path / "ssh_host_*_key.pub"))
    assert keys() == ("ssh-ed25519 AAAAone",)

    def changed(path, text):
        stamp = path.stat().st_mtime_ns if path.exists() else None
        path.write_text(text)
        os.utime(path, ns=(0, (stamp or 0) + 10**9))  # a later mtime whatever the clock's grain
        directory = path.parent.stat().st_mtime_ns
        os.utime(path.parent, ns=(0, directory + 10**9))

    changed(tmp_path / "ssh_host_rsa_key.pub", "ssh-rsa AAAAtwo root@a\n")
    assert keys() == ("ssh-ed25519 AAAAone", "ssh-rsa AAAAtwo")
    with open(ed25519, "r+") as f:  # in place: same inode, same size, same directory
        f.write("ssh-ed25519 AAAAnew root@a\n")
    os.utime(ed25519, ns=(0, ed25519.stat().st_mtime_ns + 10**9))
    assert keys() == ("ssh-ed25519 AAAAnew", "ssh-rsa AAAAtwo")
    (tmp_path / "ssh_host_rsa_key.pub").unlink()
    assert keys() == ("ssh-ed25519 AAAAnew",)
    reads = []
    monkeypatch.setattr(sshkeys, "_read_host_keys", lambda paths: reads.append(paths) or ("read",))
    assert keys() == ("ssh-ed25519 AAAAnew",) and reads == []  # nothing changed: not read again
