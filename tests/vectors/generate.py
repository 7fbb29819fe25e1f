"""Generate tests/vectors/enrollment-v1.json: a full enrollment transcript from fixed inputs.

    .venv/bin/python tests/vectors/generate.py > tests/vectors/enrollment-v1.json

The same function feeds tests/unit/test_vectors.py, which regenerates the transcript and
compares it byte for byte with the committed file, and checks the values quoted in
docs/protocol.md. Inputs: two fixed certificates (PEM files beside this script; ECDSA
signatures are randomised, so certificates are inputs, not outputs), fixed secrets, salt,
SRP ephemerals and clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from enrollment_driver import run  # noqa: E402

from firsttrust.credentials import generate_secret  # noqa: E402
from firsttrust.enrollment import ClientEnrollment, ServerEnrollment  # noqa: E402
from firsttrust.identity import certificate_der, pin_of_certificate, pin_to_curl  # noqa: E402
from firsttrust.keyschedule import KeySchedule, hkdf, sha256  # noqa: E402
from firsttrust.srp6a import GROUP_3072_SHA512, IDENTITY, SRPClient, compute_verifier  # noqa: E402

CLOCK = 1700000000.0
SEED_A = hashlib.sha256(b"firsttrust vector a").digest()
SEED_B = hashlib.sha256(b"firsttrust vector b").digest()
_SALT_SEED = hashlib.sha256(b"firsttrust vector salt").digest()
SALT = bytes([0x80 | _SALT_SEED[0]]) + _SALT_SEED[1:]  # as srp6a.new_verifier_record makes them
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZpcnN0dHJ1c3QtdmVjdG9yLXNzaC1rZXktMDAwMA requester@vector"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZpcnN0dHJ1c3QtdmVjdG9yLWhvc3Qta2V5LTAwMDA root@appliance"


def _fixed(*chunks: bytes):
    queue = list(chunks)

    def random(n: int) -> bytes:
        value = queue.pop(0)
        assert len(value) == n, (len(value), n)
        return value

    return random


def _hex(data: bytes) -> str:
    return data.hex()


def build() -> dict:
    sec_a = generate_secret(_fixed(hashlib.sha256(b"firsttrust vector sec-a").digest()[:20]))
    sec_b = generate_secret(_fixed(hashlib.sha256(b"firsttrust vector sec-b").digest()[:20]))
    requester = certificate_der((HERE / "requester.pem").read_bytes())
    appliance = certificate_der((HERE / "appliance.pem").read_bytes())
    verifier = compute_verifier(sec_a.encode(), SALT)

    client = ClientEnrollment(sec_a=sec_a, sec_b=sec_b, certificate=requester, name="bringup-01",
                              ssh_key=SSH_KEY, random=_fixed(SEED_A), clock=lambda: CLOCK)
    server = ServerEnrollment(salt=SALT, verifier=verifier, sec_b=sec_b, certificate=appliance, api_port=8443,
                              ssh_host_keys=(HOST_KEY,), random=_fixed(SEED_B), clock=lambda: CLOCK)
    record = run(client, server, client_cert=requester, server_cert=appliance)

    # The intermediate values, recomputed from public pieces of the same code.
    srp = SRPClient(sec_a.encode(), SEED_A)
    challenge = json.loads(record.server_frames[0][4:])
    srp.process_challenge(SALT, base64.b64decode(challenge["B"]))
    K = srp.unverified_session_key
    keys = KeySchedule(K)
    plaintext = [record.client_frames[0], record.server_frames[0], record.client_frames[1], record.server_frames[1]]
    th = sha256(b"".join(plaintext))
    order = [("requester", record.client_frames[0], False), ("appliance", record.server_frames[0], False),
             ("requester", record.client_frames[1], False), ("appliance", record.server_frames[1], False),
             ("appliance", record.server_frames[2], True), ("requester", record.client_frames[2], True),
             ("appliance", record.server_frames[3], True)]
    frames = [{"from": side, "tls": tls, "type": json.loads(data[4:])["type"], "hex": _hex(data)}
              for side, data, tls in order]
    assert len(record.client_frames) == 3 and len(record.server_frames) == 4
    return {
        "description": "firsttrust enrollment v1: one full enrollment with fixed inputs (docs/protocol.md)",
        "inputs": {
            "srp_group": GROUP_3072_SHA512.name,
            "identity": IDENTITY.decode(),
            "sec_a": sec_a,
            "sec_b": sec_b,
            "salt": _hex(SALT),
            "a": _hex(SEED_A),
            "b": _hex(SEED_B),
            "clock": CLOCK,
            "requester_certificate": _hex(requester),
            "appliance_certificate": _hex(appliance),
            "name": "bringup-01",
            "ssh_key": SSH_KEY,
            "ssh_host_keys": [HOST_KEY],
            "api_port": 8443,
        },
        "derived": {
            "verifier": _hex(verifier),
            "K": _hex(K),
            "k_commit_requester": _hex(keys.commit_requester),
            "k_commit_appliance": _hex(keys.commit_appliance),
            "k_confirm_requester": _hex(keys.confirm_requester),
            "k_confirm_appliance": _hex(keys.confirm_appliance),
            "k_sec_b": _hex(hkdf(sec_b.encode(), K, b"firsttrust/v1 sec-b proof")),
            "transcript_hash": _hex(th),
            "requester_pin": pin_of_certificate(requester),
            "appliance_pin": pin_of_certificate(appliance),
            "appliance_pin_curl": pin_to_curl(pin_of_certificate(appliance)),
        },
        "frames": frames,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
