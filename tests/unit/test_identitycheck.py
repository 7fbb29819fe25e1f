"""requester/identitycheck.py's decisions: which change is refused, and what the message names."""

from __future__ import annotations

from firsttrust.identity import create_identity
from firsttrust.requester.identitycheck import Probe, changed, different_deployment
from firsttrust.requester.truststore import ApplianceRecord

IDENTITY = create_identity("appliance")
RECORD = ApplianceRecord(name="app-01", address="10.0.0.5", pin=IDENTITY.pin, certificate=IDENTITY.cert_pem.decode(),
                         api_port=8791, deployment_id="fd-1111111111111111")
OTHER_PIN = "sha256:" + "ab" * 32


def test_another_deployments_secrets_are_refused_naming_both_ids_the_pin_and_the_replace_command():
    error = different_deployment(RECORD, "fd-2222222222222222")
    assert error is not None and error.code == "identity_changed"
    for part in ("fd-1111111111111111", "fd-2222222222222222", RECORD.pin, "--name app-01 --replace"):
        assert part in str(error)


def test_the_same_or_an_unknown_deployment_id_leaves_the_question_to_the_probe():
    assert different_deployment(RECORD, "fd-1111111111111111") is None
    assert different_deployment(RECORD, None) is None  # a secrets file from before ids
    assert different_deployment(ApplianceRecord(**{**vars(RECORD), "deployment_id": None}), "fd-2222222222222222") is None


def test_another_key_is_a_change_naming_both_pins():
    error = changed(RECORD, Probe(pin=OTHER_PIN))
    assert error is not None and RECORD.pin in str(error) and OTHER_PIN in str(error)
    assert "presents another key" in str(error)


def test_an_api_that_closes_before_tls_looks_redeployed_or_reset():
    error = changed(RECORD, Probe(closed_before_tls=True))
    assert error is not None and "looks redeployed or reset" in str(error)


def test_the_pinned_key_or_no_answer_is_no_change():
    assert changed(RECORD, Probe(pin=RECORD.pin)) is None
    assert Probe().unreachable and changed(RECORD, Probe()) is None


def test_a_peer_that_accepts_and_says_nothing_is_no_answer_not_a_change():
    """TimeoutError is an OSError since Python 3.10: the probe's timeout must not be read as
    "closed before TLS", which tells the operator to --replace a pin that nothing disproved."""
    import asyncio
    import socket

    from firsttrust.requester.identitycheck import probe

    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        seen = asyncio.run(probe("127.0.0.1", port, timeout=0.3))
    assert seen.unreachable and not seen.closed_before_tls
    assert changed(RECORD, seen) is None
