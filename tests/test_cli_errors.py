"""Bad input: one line naming the option, exit code 2, no traceback, nothing left running."""
import pytest

BASE = ("run", "--workload", "timer", "--duration", "1")


@pytest.mark.parametrize(
    "args, option",
    [
        (("--halt-poll-ns", "-5"), "--halt-poll-ns"),
        (("--halt-poll-ns", "abc"), "--halt-poll-ns"),
        (("--halt-poll", "2e6x"), "--halt-poll"),
        (("--halt-poll", "-1"), "--halt-poll"),
        (("--workload", "disk"), "--workload"),
        (("--policy", "turbo"), "--policy"),
        (("--cpus", "99"), "--cpus"),
        (("--cpus", "1-x"), "--cpus"),
        (("--device-cpu", "512"), "--device-cpu"),
        (("--vcpus", "0"), "--vcpus"),
        (("--vcpus", "two"), "--vcpus"),
        (("--duration", "0"), "--duration"),
        (("--duration", "-3"), "--duration"),
        (("--duration", "nan"), "--duration"),
        (("--tick-hz", "0"), "--tick-hz"),
        (("--interval-us", "0"), "--interval-us"),
        (("--io-file", "/nonexistent-dir/x"), "--io-file"),
        (("--tsc-khz", "fast"), "--tsc-khz"),
    ],
)
def test_bad_value_is_one_line_and_exit_2(hostd, args, option):
    r = hostd.run(*BASE, *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert option in lines[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_no_subcommand_prints_help_and_exit_2(hostd):
    r = hostd.run()
    assert r.returncode == 2
    assert "run" in r.stderr
