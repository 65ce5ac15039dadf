"""Shared test fixtures. The real data lives in ../shared/data beside the repository (never copied in)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
KNEE = SHARED_DATA / "knee"
KNEE_SOURCES = [KNEE / "multiclass-kaggle", KNEE / "wani-mendeley", KNEE / "2class-kaggle"]


def _require_shared_data() -> Path:
    if not KNEE.is_dir():
        msg = f"real data not found at {SHARED_DATA} (clone the repo beside ../shared)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # CI always has it: a skip there would hide a broken set-up
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require_shared_data()


@pytest.fixture(scope="session")
def knee_sources(shared_data: Path) -> list[Path]:
    return KNEE_SOURCES


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@pytest.fixture()
def mini_sources(shared_data: Path, tmp_path: Path) -> list[Path]:
    """A small real subset as two ImageFolder sources with known structure.

    - source A: 3 Normal, 3 Osteoporosis knees from multiclass-kaggle (+ one byte-identical copy
      of normal_0001.png under another name, + a downscaled 128x256 re-encode of it),
    - source B: wani N1.JPEG (Normal) and OP13.JPEG (Osteopenia): the same radiograph under two
      labels (a known conflict), plus 2class normal_0001.png (byte-identical to A's normal_0001).
    """
    mc, wani, two = KNEE_SOURCES
    a, b = tmp_path / "srcA", tmp_path / "srcB"
    for name in ("normal_0001.png", "normal_0002.png", "normal_0003.jpg"):
        _copy(mc / "Normal" / name, a / "Normal" / name)
    _copy(mc / "Normal" / "normal_0001.png", a / "Normal" / "copy_of_0001.png")
    _copy(mc / "Normal" / "normal_0439.jpg", a / "Normal" / "normal_0439.jpg")  # 128x256 re-encode of 0001
    for name in sorted(p.name for p in (mc / "Osteoporosis").iterdir())[:3]:
        _copy(mc / "Osteoporosis" / name, a / "Osteoporosis" / name)
    _copy(wani / "Normal" / "N1.JPEG", b / "Normal" / "N1.JPEG")
    _copy(wani / "Osteopenia" / "OP13.JPEG", b / "Osteopenia" / "OP13.JPEG")
    _copy(two / "Normal" / "normal_0001.png", b / "Normal" / "two_normal_0001.png")
    return [a, b]


@pytest.fixture(scope="session", autouse=True)
def _demo_workspace_in_tmp(tmp_path_factory):
    """The demo's private folder (uploads, heat maps, CSVs) of in-process tests lives under tmp."""
    base = tmp_path_factory.mktemp("demo-workspace")
    old = os.environ.get("OSTEO_EDGE_DEMO_TMP")
    os.environ["OSTEO_EDGE_DEMO_TMP"] = str(base)
    yield base
    if old is None:
        os.environ.pop("OSTEO_EDGE_DEMO_TMP", None)
    else:
        os.environ["OSTEO_EDGE_DEMO_TMP"] = old
