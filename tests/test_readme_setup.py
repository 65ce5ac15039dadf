"""The README's set-up works as written off this machine, and skips are never silent (issue 23,
items 1, 2, 3, 12, 13, 14 and the exit codes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def _block(marker: str) -> str:
    """The fenced block after ``<!-- ci: marker -->``, as .ci/run extracts it."""
    after = README.split(f"<!-- ci: {marker} -->\n", 1)[1]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


def test_setup_says_cpu_torch_system_programs_and_activation() -> None:
    setup = _section("Set-up")
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup and "torch==2.13.0" in setup
    assert "Linux x86_64" in setup and "macOS" in setup
    assert "source .venv/bin/activate" in setup and ".venv/bin/osteo-edge" in setup
    system = _block("system")  # the system programs in one line, in the set-up, before the project install
    assert setup.index("<!-- ci: system -->") < setup.index("<!-- ci: setup -->")
    assert all(p in system for p in ("dcmtk", "libgdcm-tools", "orthanc", "openssh-server", "chromium"))
    # CI keeps installing the README's way, offline here: no remote index in the block CI runs
    assert "download.pytorch.org" not in _block("setup") and 'pip install -e ".[all]"' in _block("setup")
    # the dcmtk / pynetdicom name clash is said, with the way out
    assert "/usr/bin/storescu" in setup


def test_clinic_install_never_asks_a_registry_for_osteo_edge() -> None:
    setup = _section("Set-up")
    assert 'pip install "osteo-edge[runtime]"' not in README  # not on a registry: it fails as written
    assert 'pip install ".[runtime]"' in setup and "pip wheel --no-deps -w dist ." in setup
    assert 'osteo_edge-0.1.0-py3-none-any.whl[runtime]' in setup
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert f"osteo_edge-{version}-py3-none-any.whl" in setup  # the wheel name matches the version built


def test_exit_codes_are_documented() -> None:
    text = " ".join(README.split())
    assert "**Exit codes**" in text and "`0` it worked" in text and "`1` a gate or check failed" in text and "`2` a usage error" in text


def test_quick_start_trains_with_the_table_recipe() -> None:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    train = next(ln for ln in block.splitlines() if ln.startswith("osteo-edge train"))
    assert "--epochs 10" in train  # the training table's runs: benchmarks/training/run_all.sh
    run_all = (REPO / "benchmarks" / "training" / "run_all.sh").read_text()
    lite0 = " ".join(run_all.split("train runs/knee-lite0", 1)[1].split("\n  #", 1)[0].replace("\\\n", " ").split())
    for opt in ("--epochs 10", "--lr 5e-4", "--patience 4", "--arch efficientnet_lite0", "--weights imagenet"):
        assert opt in lite0 and opt in train, opt


def test_clinic_folder_is_ignored_by_git() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "clinic/record.db"], cwd=REPO)
    assert ignored.returncode == 0  # the record and the DICOM spool hold patient data


def test_skipped_tests_show_their_reason_and_failures_stay_listed(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("import pytest\n\ndef test_y():\n    pytest.skip('gdcmconv is missing')\n")
    (tmp_path / "test_z.py").write_text("def test_fails():\n    assert 1 == 2\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
                          "-p", "no:cacheprovider", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert re.search(r"SKIPPED \[1\] .*gdcmconv is missing", res.stdout), res.stdout
    assert "FAILED test_z.py::test_fails" in res.stdout, res.stdout  # -rs alone would hide the failures' summary
