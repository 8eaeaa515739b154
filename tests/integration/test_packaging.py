"""Provenance from a wheel: the commit a run is tagged with is stamped into the package when it is built."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from microseg.runtime.provenance import git_commit

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_a_built_wheel_carries_the_commit_and_the_cli_prints_it(tmp_path):
    head = _head().strip()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    (wheel,) = tmp_path.glob("microseg-*.whl")
    stamped = zipfile.ZipFile(wheel).read("microseg/_version.py").decode()
    assert f'commit = "g{head}"' in stamped
    version = stamped.split('version = "', 1)[1].split('"', 1)[0]
    assert wheel.name.startswith(f"microseg-{version.replace('-', '_')}-")

    # Installed from the wheel (no git anywhere near it), provenance reads the stamp.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    probe = "import microseg.runtime.provenance as p; print(p.__file__); print(p.git_commit())"
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, check=True)  # fmt: skip
    where, commit = ran.stdout.split()
    assert where.startswith(str(site)) and commit == head

    assert git_commit() == head  # in this checkout: git's own answer
    shown = subprocess.run([str(Path(sys.executable).parent / "microseg"), "--version"], capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout.strip().endswith(f"(commit {head})")
