"""Every MAC and proof (the SRP proofs M1 and M2, both certificate commitments, both TLS
bindings, both key confirmations, the SEC-B proof) is compared in constant time: through
hmac.compare_digest, on the success path and on every refusal path alike."""

from __future__ import annotations

import ast
import hmac
import sys
from collections import Counter
from pathlib import Path

import pytest

from enrollment_driver import run
from firsttrust.enrollment import ClientEnrollment, ServerEnrollment
from firsttrust.errors import FirsttrustError
from firsttrust.srp6a import new_verifier_record

ROOT = Path(__file__).resolve().parents[2]
# Where each comparison is made (the function that calls hmac.compare_digest, or firsttrust's
# keyschedule.equal, which is nothing but that call), and how often one enrollment makes it.
EXPECTED = Counter({
    ("srp6a.py", "verify"): 2,  # M1 (the agent's SRPServer), M2 (the requester's SRPClient)
    ("enrollment.py", "_check_peer_certificate"): 2,  # each side's TLS peer certificate vs its commitment
    ("enrollment.py", "_proceed"): 1,  # the requester's commitment (after the verdict on M1)
    ("enrollment.py", "_on_server_proof"): 1,  # the appliance's commitment
    ("enrollment.py", "_on_finish"): 1,  # the requester's confirmation
    ("enrollment.py", "_on_appliance_proof"): 2,  # the appliance's confirmation, the SEC-B proof
})


@pytest.fixture
def comparisons(monkeypatch):
    seen: Counter = Counter()
    real = hmac.compare_digest

    def recording(a, b):
        frame = sys._getframe(1)
        if frame.f_code.co_name == "equal":
            frame = frame.f_back
        seen[(Path(frame.f_code.co_filename).name, frame.f_code.co_name)] += 1
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    return seen


def machines(secrets, requester, appliance, *, sec_b=None):
    salt, verifier = new_verifier_record(secrets.sec_a.encode())
    client = ClientEnrollment(sec_a=secrets.sec_a, sec_b=secrets.sec_b, certificate=requester.cert_der, name="x")
    server = ServerEnrollment(salt=salt, verifier=verifier, sec_b=sec_b or secrets.sec_b,
                              certificate=appliance.cert_der, api_port=8443, ssh_host_keys=())
    return client, server


def test_every_mac_and_proof_of_an_enrollment_goes_through_compare_digest(comparisons, secrets, requester_identity,
                                                                          appliance_identity):
    client, server = machines(secrets, requester_identity, appliance_identity)
    record = run(client, server, client_cert=requester_identity.cert_der, server_cert=appliance_identity.cert_der)
    assert record.client_result is not None
    names = {name for _, name in EXPECTED}
    assert Counter({k: v for k, v in comparisons.items() if k[1] in names}) == EXPECTED


def test_a_refused_proof_is_refused_by_compare_digest_too(comparisons, secrets, requester_identity,
                                                          appliance_identity):
    """A wrong SEC-B: every comparison up to the SEC-B proof succeeds, the proof's own fails,
    and it was compare_digest that said so (not a short-circuiting == before it)."""
    from firsttrust.credentials import EnrollmentSecrets
    client, server = machines(secrets, requester_identity, appliance_identity,
                              sec_b=EnrollmentSecrets.generate().sec_b)
    with pytest.raises(FirsttrustError):
        run(client, server, client_cert=requester_identity.cert_der, server_cert=appliance_identity.cert_der)
    assert comparisons[("enrollment.py", "_on_appliance_proof")] == 2


MAC_NAMES = {"M", "M1", "M2", "H_AMK", "commitment", "confirm", "sec_b_proof", "_peer_commitment"}


def _mentions_a_mac(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in MAC_NAMES:
            return True
        if isinstance(sub, ast.Attribute) and sub.attr in MAC_NAMES:
            return True
        if isinstance(sub, ast.Constant) and sub.value in MAC_NAMES:
            return True
    return False


@pytest.mark.parametrize("module", ["firsttrust/enrollment.py", "firsttrust/srp6a.py", "firsttrust/keyschedule.py"])
def test_no_mac_or_proof_is_compared_with_eq(module):
    tree = ast.parse((ROOT / module).read_text())
    offending = [f"{module}:{node.lineno}" for node in ast.walk(tree)
                 if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops)
                 and _mentions_a_mac(node)]
    assert offending == []
