"""The suite-wide guard in tests/conftest.py fails a test whose stderr or logs show a secret."""

from pathlib import Path

CONFTEST = (Path(__file__).resolve().parents[1] / "conftest.py").read_text()


def test_guard_fails_a_test_that_leaks_a_secret_to_stderr(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaky="""
        import logging, sys
        from firsttrust.credentials import EnrollmentSecrets
        def test_stderr():
            print(EnrollmentSecrets.generate().sec_a, file=sys.stderr)
        def test_log():
            logging.getLogger("x").warning("value %s", EnrollmentSecrets.generate().sec_b)
        def test_stdout_is_allowed():
            print(EnrollmentSecrets.generate().sec_a)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
