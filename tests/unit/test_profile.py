"""requester/profile.py: the command line wins, then the environment, then the config file; a
config file that others may write, or one holding a password, is refused."""

from __future__ import annotations

import argparse

import pytest

from firsttrust.common.cli import UsageError
from firsttrust.requester.deployplan import InvalidDeployPlan, check_vcenter_url
from firsttrust.requester.profile import ProfileError, apply, config_path
from firsttrust.requester.setupcommands import read_certificate

URL, OTHER = "https://vc.example/sdk", "https://other.example/sdk"
TP = "AB:" * 19 + "AB"


def args(**given):
    return argparse.Namespace(**{"vcenter": None, "thumbprint": None, "ca_file": None, "credentials": None, **given})


def config(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "firsttrust" / "config.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return {"XDG_CONFIG_HOME": str(tmp_path)}


def test_the_command_line_wins_then_the_environment_then_the_config_file(tmp_path):
    environ = config(tmp_path, f'vcenter = "{OTHER}"\nthumbprint = "{TP}"\ncredentials = "/c.json"\n')
    assert apply(args(), environ).vcenter == OTHER
    assert apply(args(), {**environ, "FIRSTTRUST_VCENTER": URL}).vcenter == URL
    assert apply(args(vcenter="https://cli.example/sdk"), {**environ, "FIRSTTRUST_VCENTER": URL}).vcenter == \
        "https://cli.example/sdk"
    filled = apply(args(), environ)
    assert (filled.thumbprint, filled.credentials) == (TP, "/c.json")
    chosen = apply(args(ca_file="/ca.pem"), environ)  # the command line's trust choice wins as a whole
    assert (chosen.ca_file, chosen.thumbprint) == ("/ca.pem", None)
    from_env = apply(args(), {**environ, "FIRSTTRUST_VCENTER_THUMBPRINT": "cd" * 20})
    assert from_env.thumbprint == "cd" * 20


def test_a_config_file_others_may_write_is_refused(tmp_path):
    environ = config(tmp_path, f'vcenter = "{URL}"\nthumbprint = "{TP}"\n', mode=0o620)
    with pytest.raises(ProfileError, match="writable by group or others"):
        apply(args(), environ)
    assert apply(args(vcenter=URL, thumbprint=TP, credentials="/c.json"), environ).vcenter == URL  # not read


@pytest.mark.parametrize("key", ["password", "user"])
def test_a_config_file_never_holds_the_account(tmp_path, key):
    with pytest.raises(ProfileError, match="never from here") as raised:
        apply(args(), config(tmp_path, f'vcenter = "{URL}"\n{key} = "hunter2-not-shown"\n'))
    assert "hunter2" not in str(raised.value)


def test_an_unknown_key_or_no_vcenter_at_all_is_said(tmp_path):
    with pytest.raises(ProfileError, match="unknown key 'thumbprnt'"):
        apply(args(), config(tmp_path, f'vcenter = "{URL}"\nthumbprnt = "{TP}"\n'))
    with pytest.raises(ProfileError, match="which vCenter"):
        apply(args(), {"XDG_CONFIG_HOME": str(tmp_path / "none")})
    with pytest.raises(ProfileError, match="whom to trust"):
        apply(args(vcenter=URL), {"XDG_CONFIG_HOME": str(tmp_path / "none")})


def test_the_config_file_is_found_by_xdg_or_named_by_firsttrust_config(tmp_path):
    assert config_path({"XDG_CONFIG_HOME": "/x"}) == __import__("pathlib").Path("/x/firsttrust/config.toml")
    assert str(config_path({"FIRSTTRUST_CONFIG": "/etc/ft.toml"})) == "/etc/ft.toml"


@pytest.mark.parametrize("url", ["https://u:hunter2-not-shown@vc.example/sdk", "u:hunter2-not-shown@vc.example",
                                 "https://hunter2-not-shown@[::1/sdk",
                                 # a password holding what ends an authority, or an '@' of its own
                                 "https://admin:hunter2/not-shown@vc.example/sdk",
                                 "https://admin:hunter2?not-shown@vc.example/sdk",
                                 "https://admin:hunter2#not-shown@vc.example/sdk",
                                 "https://admin:hunter2@not-shown@vc.example/sdk",
                                 "admin:hunter2/x@vc.example/sdk"])
def test_no_message_quotes_the_credentials_a_vcenter_url_carries(tmp_path, url):
    with pytest.raises(ProfileError, match="whom to trust at .*\\*\\*\\*@") as raised:
        apply(args(vcenter=url), {"XDG_CONFIG_HOME": str(tmp_path / "none")})
    assert "hunter2" not in str(raised.value)
    with pytest.raises(InvalidDeployPlan) as refused:
        check_vcenter_url(url)
    assert "hunter2" not in str(refused.value)
    with pytest.raises(UsageError) as unread:
        read_certificate(url.replace("https://", "ftp://"))
    assert "hunter2" not in str(unread.value)


@pytest.mark.parametrize("url", ["https://a..b/sdk", "https://" + "a" * 64 + ".example/sdk"])
def test_a_host_no_lookup_can_take_is_bad_input_not_an_internal_error(url):
    """An empty DNS label, or one over 63 characters: socket's IDNA encoding raised UnicodeError
    inside the connect, printed as an internal error (exit 1)."""
    with pytest.raises(InvalidDeployPlan, match="not a valid host name"):
        check_vcenter_url(url)
    with pytest.raises(UsageError, match="is not an https"):
        read_certificate(url)
