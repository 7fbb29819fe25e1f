"""The suite-wide guard in tests/conftest.py fails a test that shows a secret, or a 12-character
part of one, on any channel but stdout: captured or consumed stderr, setup and teardown output,
log records wherever they go, captured subprocess stderr, and *.log files under tmp_path."""

from pathlib import Path

CONFTEST = (Path(__file__).resolve().parents[1] / "conftest.py").read_text()

LEAKY = """
    import asyncio, logging, subprocess, sys
    import pytest
    from firsttrust.credentials import EnrollmentSecrets

    def secret():
        return EnrollmentSecrets.generate().sec_a

    @pytest.fixture
    def noisy_setup():
        print(secret(), file=sys.stderr)

    @pytest.fixture
    def noisy_teardown():
        yield
        print(secret(), file=sys.stderr)

    def test_leak_stderr():
        print(secret(), file=sys.stderr)
    def test_leak_log_warning():
        logging.getLogger("x").warning("value %s", EnrollmentSecrets.generate().sec_b)
    def test_leak_log_record_without_handler():
        quiet = logging.getLogger("quiet")
        quiet.propagate = False
        quiet.setLevel(logging.DEBUG)
        try:
            quiet.debug("value %s", secret())
        finally:
            quiet.propagate = True
    def test_leak_in_setup(noisy_setup):
        pass
    def test_leak_in_teardown(noisy_teardown):
        pass
    def test_leak_consumed_with_capsys(capsys):
        print(secret(), file=sys.stderr)
        assert capsys.readouterr().err
    def test_leak_consumed_with_capfd(capfd):
        subprocess.run(["sh", "-c", "echo " + secret() + " >&2"])
        assert capfd.readouterr().err
    def test_leak_captured_subprocess_stderr():
        subprocess.run(["sh", "-c", "echo " + secret() + " >&2"], capture_output=True)
    async def test_leak_captured_asyncio_subprocess_stderr():
        proc = await asyncio.create_subprocess_exec("sh", "-c", "echo " + secret() + " >&2",
                                                    stderr=asyncio.subprocess.PIPE)
        await proc.communicate()
    def test_leak_in_a_log_file_under_tmp_path(tmp_path):
        (tmp_path / "agent").mkdir()
        (tmp_path / "agent" / "serve.log").write_text("started " + secret())
    def test_leak_partial_secret():
        print("prefix " + secret()[3:17] + " suffix", file=sys.stderr)
    def test_leak_partial_secret_without_dashes():
        print(secret().replace("-", "")[5:19].upper(), file=sys.stderr)

    def test_ok_stdout_is_allowed(capsys):
        print(secret())
        assert capsys.readouterr().out
    def test_ok_eleven_characters_are_not_a_leak():
        print(secret()[:11], file=sys.stderr)
    @pytest.mark.allow_secret_output
    def test_ok_marked_allow_secret_output():
        print(secret(), file=sys.stderr)
    def test_ok_other_file_under_tmp_path(tmp_path):
        (tmp_path / "sec-b").write_text(secret())
"""


def test_guard_catches_every_channel_and_fragment(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nasyncio_mode = auto\nmarkers =\n    allow_secret_output: on purpose\n")
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-rA")
    leaks = [line.split("(")[0].split()[-1] for line in LEAKY.splitlines()
             if line.strip().startswith(("def test_leak", "async def test_leak"))]
    assert len(leaks) == 12
    for test in leaks:
        assert [line for line in result.outlines if line.startswith(("FAILED", "ERROR")) and f"::{test}" in line], \
            f"{test} leaked a secret and was not caught:\n" + "\n".join(result.outlines)
    for name in ("test_ok_stdout_is_allowed", "test_ok_eleven_characters_are_not_a_leak",
                 "test_ok_marked_allow_secret_output", "test_ok_other_file_under_tmp_path"):
        assert [line for line in result.outlines if line.startswith("PASSED") and f"::{name}" in line], name
    # The guard's own report never shows the secret it found.
    assert "appeared in" in result.stdout.str()
