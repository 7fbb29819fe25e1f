import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

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


# --- no secret in any log line or stderr, across the whole suite --------------------------------
# Every secret the suite generates is remembered; after each test, its captured stderr and log
# output are searched for them. stdout is exempt: `deploy-spec` prints secrets there by design.

import firsttrust.credentials as _credentials  # noqa: E402

GENERATED_SECRETS: set[str] = set()
_original_generate = _credentials.generate_secret


def _remembering_generate(*args, **kwargs):
    value = _original_generate(*args, **kwargs)
    GENERATED_SECRETS.add(value)
    return value


_credentials.generate_secret = _remembering_generate


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or report.failed or "allow_secret_output" in item.keywords:
        return
    for title, text in report.sections:
        if "stdout" in title:
            continue
        leaked = [s for s in GENERATED_SECRETS if s in text]
        if leaked:
            report.outcome = "failed"
            report.longrepr = f"a generated secret appeared in '{title}' (no secret may reach a log or stderr)"
            return


@pytest.fixture(autouse=True)
def _reset_agent_logging():
    """The agent's commands attach their log handlers process-wide (as a service should);
    in-process CLI tests must not leave them to the next test."""
    import logging
    yield
    for name in ("firsttrust", "firsttrust.audit"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
