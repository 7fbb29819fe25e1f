import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

sys.path.insert(0, str(Path(__file__).resolve().parent))

from firsttrust.credentials import EnrollmentSecrets  # noqa: E402
from firsttrust.identity import create_identity  # noqa: E402

# The mutation gate (tests/mutation/run.py) runs the suite in a scratch copy of the tree; the
# venv's editable install points at the real one. Make sure every firsttrust module under test
# is the copy's, or a mutant would be "killed" or "survive" by testing the wrong code.
_EXPECTED_TREE = os.environ.get("FIRSTTRUST_EXPECT_TREE")
if _EXPECTED_TREE:
    import firsttrust, firsttrust.agent, firsttrust.common, firsttrust.lab, firsttrust.requester  # noqa: E401,E402
    for _module in (firsttrust, firsttrust.agent, firsttrust.common, firsttrust.lab, firsttrust.requester):
        assert _module.__file__.startswith(_EXPECTED_TREE + os.sep), \
            f"{_module.__name__} imports from {_module.__file__}, not from {_EXPECTED_TREE}"


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
# Every secret the suite generates (firsttrust.credentials.generate_secret, which
# EnrollmentSecrets.generate and the lab call) is remembered as its 12-character windows, with
# and without the group dashes, so a fragment of a secret is caught as well as the whole value.
# Each phase of each test (setup, call, teardown) is searched in:
#   - the captured stderr and log sections pytest reports for that phase;
#   - stderr a test consumed itself (capsys/capfd/capsysbinary/capfdbinary .readouterr());
#   - every log record created anywhere in the process, whatever its logger, level or handler
#     (a log record factory: records that go only to a file or the journal count too);
#   - stderr of subprocesses the test captured (subprocess.Popen.communicate, which
#     subprocess.run uses, and asyncio's Process.communicate);
#   - at teardown, every *.log file under the test's tmp_path (agents run as processes write
#     their stderr there).
# stdout is exempt: `deploy-spec` prints secrets there by design. A test marked
# `allow_secret_output` is not checked. A secret generated inside a subprocess is unknown here.

import asyncio.subprocess as _asyncio_subprocess  # noqa: E402
import logging as _logging  # noqa: E402
import re as _re  # noqa: E402
import subprocess as _subprocess  # noqa: E402

import _pytest.capture  # noqa: E402

import firsttrust.credentials as _credentials  # noqa: E402


class SecretGuard:
    """Remembers secrets as their distinctive windows and finds any of them in text."""

    WINDOW = 12  # 12 symbols of the secret alphabet are 60 bits: no accidental match
    _CANDIDATE = _re.compile(r"[0-9a-z-]{%d,}" % WINDOW)

    def __init__(self) -> None:
        self.windows: set[str] = set()
        self.observed: list[tuple[str, str]] = []  # (channel, text) seen during the current phase

    def remember(self, secret: str) -> None:
        for form in {secret, secret.replace("-", "")}:
            for start in range(len(form) - self.WINDOW + 1):
                self.windows.add(form[start:start + self.WINDOW])

    def leaks(self, text: str | bytes | None) -> bool:
        if not text or not self.windows:
            return False
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        for run in self._CANDIDATE.findall(text.lower()):
            for start in range(len(run) - self.WINDOW + 1):
                if run[start:start + self.WINDOW] in self.windows:
                    return True
        return False

    def observe(self, channel: str, text: str | bytes | None) -> None:
        if text:
            self.observed.append((channel, text if isinstance(text, str) else text.decode("utf-8", "replace")))

    def drain(self) -> list[tuple[str, str]]:
        observed, self.observed = self.observed, []
        return observed


SECRET_GUARD = SecretGuard()
GENERATED_SECRETS: set[str] = set()
_original_generate = _credentials.generate_secret


def _remembering_generate(*args, **kwargs):
    value = _original_generate(*args, **kwargs)
    GENERATED_SECRETS.add(value)
    SECRET_GUARD.remember(value)
    return value


_credentials.generate_secret = _remembering_generate

# Consumed capture: what readouterr() hands the test is gone from the report, so look at it here.
_original_readouterr = _pytest.capture.CaptureFixture.readouterr


def _observed_readouterr(self):
    result = _original_readouterr(self)
    SECRET_GUARD.observe("stderr consumed with readouterr()", result.err)
    return result


_pytest.capture.CaptureFixture.readouterr = _observed_readouterr

# Every log record, wherever it goes.
_original_record_factory = _logging.getLogRecordFactory()


def _observed_record(*args, **kwargs):
    record = _original_record_factory(*args, **kwargs)
    try:
        text = record.getMessage()
    except Exception:  # a malformed call is the logging module's problem to report, not ours
        text = str(record.msg)
    if record.exc_info and record.exc_info[1] is not None:
        text += "\n" + repr(record.exc_info[1])
    SECRET_GUARD.observe(f"log record ({record.name})", text)
    return record


_logging.setLogRecordFactory(_observed_record)

# Captured subprocess stderr.
_original_communicate = _subprocess.Popen.communicate


def _observed_communicate(self, *args, **kwargs):
    out, err = _original_communicate(self, *args, **kwargs)
    SECRET_GUARD.observe(f"stderr of subprocess {self.args!r:.60}", err)
    return out, err


_subprocess.Popen.communicate = _observed_communicate
_original_async_communicate = _asyncio_subprocess.Process.communicate


async def _observed_async_communicate(self, *args, **kwargs):
    out, err = await _original_async_communicate(self, *args, **kwargs)
    SECRET_GUARD.observe("stderr of an asyncio subprocess", err)
    return out, err


_asyncio_subprocess.Process.communicate = _observed_async_communicate


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    SECRET_GUARD.drain()  # what happened between tests (collection, session fixtures) is no test's
    yield


def _tmp_path_logs(item):
    tmp_path = (getattr(item, "funcargs", None) or {}).get("tmp_path")
    if tmp_path is None or not Path(tmp_path).is_dir():
        return
    for log_file in sorted(Path(tmp_path).rglob("*.log")):
        if log_file.is_file():
            yield f"file {log_file.relative_to(tmp_path)}", log_file.read_bytes()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    observed = SECRET_GUARD.drain()
    if report.failed or "allow_secret_output" in item.keywords:
        return
    channels = [(title, text) for title, text in report.sections
                if title.endswith(f" {report.when}") and "stdout" not in title]
    channels += observed
    if report.when == "teardown":
        channels += list(_tmp_path_logs(item))
    for title, text in channels:
        if SECRET_GUARD.leaks(text):
            report.outcome = "failed"
            # The report names the channel, never the secret: the report is output too.
            report.longrepr = (f"a generated secret (or a 12-character part of it) appeared in {title} "
                               f"during {report.when} (no secret may reach a log or stderr)")
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
    # And its handler on the libraries' loggers (systemd_glue.LIBRARY_LOGGERS): its no-traceback
    # filter strips exc_info from the record, which a later test's caplog then never saw.
    for name in ("aiohttp", "asyncio"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, "_firsttrust_glue", False)]:
            logger.removeHandler(handler)
