"""Calibration profiles: written, read back, and every bad file refused in one line naming it."""
import json
import os

import pytest

from hostd.plumbing.published import SEED
from hostd.plumbing import calibration
from hostd.plumbing.errors import UsageError
from hostd.plumbing.policy_options import cycles_to_ns

COSTS = {name: 1000 * (i + 1) for i, (name, _) in enumerate(calibration.COSTS)}
ELSEWHERE = {"cpu_model": "Some Other CPU 9000", "kernel": "6.1.0", "tsc_khz": 3000000, "nested": False}


def v1_doc() -> dict:
    """A profile as haltpoll-emu's format version 1 wrote it: the submit was a port exit to user space."""
    costs = {("port_exit_ns" if name == "submit_exit_ns" else name): v for name, v in COSTS.items()}
    return profile_doc(version=1, costs_ns=costs)


def write_v1(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(v1_doc(), f, indent=2)
    return str(path)


def profile_doc(**changes) -> dict:
    doc = {"format": calibration.FORMAT, "version": calibration.VERSION, "label": "test", "derived": False,
           "machine": calibration.this_machine(), "date": "2026-11-27T19:05:00+00:00", "costs_ns": dict(COSTS),
           "detail": {}}
    doc.update(changes)
    return doc


def test_write_then_load_is_the_same_profile(tmp_path):
    path = str(tmp_path / "deep" / "dir" / "cal.json")
    written = calibration.write(path, COSTS, {"vm_exit_samples": [1, 2, 3]}, date="2026-11-27T19:05:00+00:00")
    loaded = calibration.load(path)
    assert loaded == written
    assert loaded.path == path and not loaded.derived
    assert loaded.machine == calibration.this_machine()
    assert loaded.cost("submit_exit_ns") == COSTS["submit_exit_ns"]
    assert loaded.to_dict()["costs_ns"] == COSTS and loaded.to_dict()["path"] == path
    assert loaded.name == f"this machine's ({loaded.machine['cpu_model']}, 2026-11-27)"
    assert calibration.name_of(loaded.to_dict()) == loaded.name  # as results JSON names it
    assert not [n for n in os.listdir(tmp_path / "deep" / "dir") if n != "cal.json"]  # no temp file left


def test_write_refuses_a_cost_out_of_range(tmp_path):
    path = tmp_path / "cal.json"
    with pytest.raises(UsageError, match="vm_exit_ns = 10,000,000 ns is out of range"):
        calibration.write(str(path), {**COSTS, "vm_exit_ns": calibration.MAX_NS}, {})
    assert not path.exists()


def test_default_path_honours_xdg_config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert calibration.default_path() == str(tmp_path / "haltpoll-emu" / "calibration.json")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert calibration.default_path() == os.path.expanduser("~/.config/haltpoll-emu/calibration.json")


def test_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert calibration.resolve(None) is None  # no profile yet: the raw emulator
    written = calibration.write(calibration.default_path(), COSTS, {})
    assert calibration.resolve(None) == written
    assert calibration.resolve("none") is None
    assert calibration.name_of(None) == "none (the raw emulator)"
    assert calibration.resolve(calibration.default_path()) == written
    seed = calibration.resolve("seed-2015")
    assert seed.derived and seed.name == "seed-2015 (derived from quoted figures, not measured)"


def test_a_broken_default_profile_says_it_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    os.makedirs(os.path.dirname(calibration.default_path()))
    with open(calibration.default_path(), "w") as f:
        f.write("{")
    with pytest.raises(UsageError, match="the default profile; --calibration none runs without it"):
        calibration.resolve(None)


def _costs(**changes):
    return {**COSTS, **changes}


@pytest.mark.parametrize("content, says", [
    (None, "no such file (run `hostd calibrate`"),
    ("directory", "cannot read it: Is a directory"),
    (b"\xff\xfe not utf-8", "cannot read it: not UTF-8"),
    ("{not json", "cannot read it: not JSON"),
    ([1, 2], "not a calibration profile (a JSON list"),
    ({"format": "something else"}, "not a calibration profile"),
    (profile_doc(version=calibration.VERSION + 1), f"profile format version {calibration.VERSION + 1}, this "
     f"haltpoll-emu reads version {calibration.VERSION}: a newer haltpoll-emu wrote it"),
    (profile_doc(version=1), f"profile format version 1, older than this haltpoll-emu's {calibration.VERSION}: "
     "measure this machine again with `hostd calibrate --out "),
    (profile_doc(machine="AMD"), "not a calibration profile (\"machine\" is not an object)"),
    (profile_doc(costs_ns=[1]), "\"costs_ns\" is not an object"),
    (profile_doc(costs_ns={k: v for k, v in COSTS.items() if k != "poll_wake_ns"}), "cost poll_wake_ns is missing"),
    (profile_doc(costs_ns=_costs(exit_ns=5)), "unknown cost exit_ns"),
    (profile_doc(costs_ns=_costs(poll_wake_ns=-3)), "cost poll_wake_ns = -3 ns is out of range (0 .. 9,999,999 ns)"),
    (profile_doc(costs_ns=_costs(vm_exit_ns=10_000_000)), "cost vm_exit_ns = 10,000,000 ns is out of range"),
    (profile_doc(costs_ns=_costs(vm_exit_ns=True)), "cost vm_exit_ns = true is not an integer number of ns"),
    (profile_doc(costs_ns=_costs(vm_exit_ns=1.5)), "cost vm_exit_ns = 1.5 is not an integer number of ns"),
])
def test_bad_profile_is_one_line_naming_the_file(tmp_path, content, says):
    path = tmp_path / "cal.json"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_text(json.dumps(content))
    with pytest.raises(UsageError) as exc:
        calibration.load(str(path))
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"--calibration {path}: ")
    assert says in message


def test_machine_warning_only_for_another_cpu(tmp_path, capsys):
    here = calibration.write(str(tmp_path / "here.json"), COSTS, {})
    assert calibration.machine_warning(here) is None
    there = calibration.write(str(tmp_path / "there.json"), COSTS, {}, machine=ELSEWHERE)
    warning = calibration.machine_warning(there)
    assert warning == (f"calibration {there.path} was measured on Some Other CPU 9000, this machine is "
                       f"{calibration.this_machine()['cpu_model']}: its costs are used as they are")
    assert calibration.machine_warning(calibration.resolve("seed-2015")) is None  # says so in its name
    capsys.readouterr()
    assert calibration.resolve(there.path) == there
    assert capsys.readouterr().err == f"hostd: warning: {warning}\n"


def test_seed_profile_follows_from_the_quoted_figures():
    seed = calibration.load(calibration.SHIPPED["seed-2015"])
    tsc_khz = seed.machine["tsc_khz"]
    with_poll = cycles_to_ns(sum(SEED["timer_cycles_with_poll"]) // 2, tsc_khz)  # midpoints
    without_poll = cycles_to_ns(sum(SEED["timer_cycles_without_poll"]) // 2, tsc_khz)
    assert (tsc_khz, with_poll, without_poll) == (2_600_000, 3462, 26923)
    assert seed.costs == {
        "vm_exit_ns": 0, "poll_wake_ns": with_poll, "timer_poll_wake_ns": with_poll, "running_inject_ns": 0,
        "block_wake_ns": without_poll, "timer_block_wake_ns": without_poll, "submit_exit_ns": 0,
        "isr_exit_ns": 0, "timer_isr_exit_ns": 0,
        "block_penalty_ns": without_poll - with_poll, "timer_block_penalty_ns": without_poll - with_poll,
    }
    assert seed.detail["timer_cycles_with_poll"] == SEED["timer_cycles_with_poll"]
    assert seed.detail["timer_cycles_without_poll"] == SEED["timer_cycles_without_poll"]
    assert sorted(seed.detail["not_quoted"]) == sorted(n for n, v in seed.costs.items() if v == 0)


# The CLI wiring of --calibration into `hostd run` is another change; this passes once it lands.
def test_cli_missing_profile_is_one_line_and_exit_2(hostd):
    r = hostd.run("run", "--calibration", "/nonexistent.json", "--duration", "0.2")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "hostd: error: --calibration /nonexistent.json: no such file (run `hostd calibrate` to measure "
        "this machine, or --calibration none)"]


# --- format version 1 (port_exit_ns, a port exit to user space) against this version 2 (submit_exit_ns) ---

def test_an_older_format_is_told_apart(tmp_path):
    assert calibration.VERSION == 2
    old = write_v1(str(tmp_path / "old.json"))
    assert calibration.format_version(old) == 1 and calibration.older_format(old) == 1
    current = calibration.write(str(tmp_path / "current.json"), COSTS, {}).path
    assert calibration.format_version(current) == 2 and calibration.older_format(current) is None
    (tmp_path / "broken.json").write_text("{")
    for path in (tmp_path / "broken.json", tmp_path / "absent.json", tmp_path):
        assert calibration.older_format(str(path)) is None  # load() says what is wrong with those
    assert calibration.older_format(calibration.SHIPPED["seed-2015"]) is None  # migrated with the format


def test_the_default_older_profile_is_refused_not_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = write_v1(calibration.default_path())
    with pytest.raises(UsageError) as exc:
        calibration.resolve(None)  # never None (the raw emulator) in its place
    assert str(exc.value) == (
        f"--calibration {path}: profile format version 1, older than this haltpoll-emu's 2: measure this "
        "machine again with `hostd calibrate` (the default profile; --calibration none runs without it)")
    assert calibration.format_version(path) == 1  # untouched


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_cli_refuses_an_explicit_older_profile(hostd, tmp_path):
    path = write_v1(str(tmp_path / "v1 profile.json"))
    r = hostd.run("run", "--calibration", path, "--duration", "0.2")
    assert r.returncode == 2, r.stderr
    assert _one_line(r.stderr) == (
        f"hostd: error: --calibration {path}: profile format version 1, older than this haltpoll-emu's 2: "
        f"measure this machine again with `hostd calibrate --out '{path}'`")


def test_cli_refuses_the_default_older_profile(hostd, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # the hostd processes inherit it
    path = write_v1(calibration.default_path())
    for command in (("run", "--duration", "0.2"), ("compare", "--quick", "--backend", "emu", "--out",
                                                   str(tmp_path / "out"))):
        r = hostd.run(*command, timeout=60)
        assert r.returncode == 2, (command, r.stderr)
        line = _one_line(r.stderr)
        assert line.startswith(f"hostd: error: --calibration {path}: profile format version 1, "), line
        assert "`hostd calibrate`" in line
    assert calibration.format_version(path) == 1


def test_if_missing_moves_an_older_profile_aside_where_kvm_is_unusable(hostd, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HPEMU_KVM_DEV", "/nonexistent")
    path = write_v1(calibration.default_path())
    with open(path) as f:
        content = f.read()
    r = hostd.run("calibrate", "--if-missing")
    assert r.returncode == 0, r.stderr
    line = _one_line(r.stderr)
    assert line.startswith(f"hostd: calibrate: {path} is format version 1 (this haltpoll-emu writes 2), and it "
                           "cannot be measured again here (needs /dev/kvm: /nonexistent"), line
    assert line.endswith(f"): moved to {path}.v1; the emulator runs raw"), line
    assert not os.path.exists(path)
    with open(f"{path}.v1") as f:
        assert f.read() == content  # kept as it was
    # ./run.sh goes on with the raw emulator: no default profile now, rather than a refused one.
    assert calibration.resolve(None) is None
    # Another old profile later does not overwrite the one already moved aside.
    write_v1(path)
    r = hostd.run("calibrate", "--if-missing")
    assert r.returncode == 0 and _one_line(r.stderr).endswith(f"moved to {path}.v1.2; the emulator runs raw")
    assert sorted(os.listdir(os.path.dirname(path))) == ["calibration.json.v1", "calibration.json.v1.2"]
    # Without --if-missing nothing is moved: calibrate needs /dev/kvm, as before.
    write_v1(path)
    r = hostd.run("calibrate")
    assert r.returncode == 2 and "/nonexistent" in _one_line(r.stderr)
    assert calibration.format_version(path) == 1


def test_if_missing_measures_an_older_profile_again(hostd, kvm, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = write_v1(calibration.default_path())
    r = hostd.run("calibrate", "--if-missing", "--seconds", "0.1", "--repeat", "1", "--json", timeout=90)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "format version" in line]
    assert said == [f"hostd: calibrate: {path} is format version 1 (this haltpoll-emu writes 2): measuring again"]
    profile = calibration.load(path)  # version 2 now, this machine's
    assert json.loads(r.stdout)["costs_ns"] == profile.costs and profile.costs["submit_exit_ns"] > 0
    assert os.listdir(os.path.dirname(path)) == ["calibration.json"]  # nothing moved aside
    # ...and once it is current, --if-missing leaves it alone.
    r = hostd.run("calibrate", "--if-missing")
    assert r.returncode == 0 and _one_line(r.stderr) == (
        f"hostd: calibrate: {path} exists; `hostd calibrate` measures this machine again")
    assert calibration.load(path) == profile
