"""The wheel built from the tree is the whole product: every package and sub-package, the shipped
profiles, no tests or bench; and `hostd --version` runs from a plain (non-editable) install of it."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "hostd", "vcpu", "irqsrc", "tests", "bench"):
        p = Path(ROOT, name)
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(p, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("haltpoll_emu-*.whl")
    return whl


def test_the_wheel_holds_every_package_and_the_profiles(wheel) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = sorted(str(p.parent.relative_to(ROOT)) for top in ("hostd", "vcpu", "irqsrc")
                      for p in Path(ROOT, top).rglob("__init__.py"))
    assert packages and all(f"{p}/__init__.py" in names for p in packages), sorted(set(packages) - {
        n.rsplit("/", 1)[0] for n in names})
    profiles = sorted(p.name for p in Path(ROOT, "hostd", "profiles").glob("*.json"))
    assert profiles and all(f"hostd/profiles/{p}" in names for p in profiles)
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_version_runs_from_a_plain_install_of_the_wheel(wheel, tmp_path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # Its dependencies from this venv, by a path entry: that directory's own .pth files (this tree's
    # editable install among them) are not read, so `hostd` can only come from the wheel.
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    r = subprocess.run([str(venv / "bin" / "hostd"), "--version"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "0.1.0" in r.stdout and "format" in r.stdout, r.stdout
    where = subprocess.check_output([str(py), "-c", "import hostd; print(hostd.__file__)"], text=True, cwd=tmp_path)
    assert where.startswith(str(site)), where
