import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from firsttrust.credentials import EnrollmentSecrets  # noqa: E402
from firsttrust.identity import create_identity  # noqa: E402


@pytest.fixture(scope="session")
def requester_identity():
    return create_identity("requester")


@pytest.fixture(scope="session")
def appliance_identity():
    return create_identity("appliance", dns_names=["appliance.example"], ip_addresses=["127.0.0.1"])


@pytest.fixture(scope="session")
def stranger_identity():
    return create_identity("stranger")


@pytest.fixture
def secrets():
    return EnrollmentSecrets.generate()
