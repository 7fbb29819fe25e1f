"""`firsttrust-agent serve --listen/--api-listen`: ADDR:PORT, [IPV6]:PORT and their short forms
parse; anything malformed is refused there (exit 2), not passed on to a bind that fails as if
the address were only unreachable (exit 1)."""

from __future__ import annotations

import pytest

from firsttrust.agent.cli import main
from firsttrust.agent.service import Listen


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    (":80", ("0.0.0.0", 80)),
    ("appliance.example", ("appliance.example", 8790)),
    ("[::1]:80", ("::1", 80)),
    ("[::]", ("::", 8790)),
    ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
])
def test_a_listen_address_parses(text, expected):
    assert tuple(Listen.parse(text, 8790)) == expected


@pytest.mark.parametrize("text", ["[::1", "[]:80", "[::1]x", "[not-ipv6]:80", "::1", "::1:80", "h:99999", "h:x"])
def test_a_malformed_listen_address_is_a_usage_error(text, tmp_path, capsys):
    with pytest.raises(ValueError, match="invalid listen address"):
        Listen.parse(text, 8790)
    assert main(["serve", "--state-dir", str(tmp_path), "--listen", text]) == 2
    err = capsys.readouterr().err
    assert "invalid listen address" in err and err.count("\n") == 1
