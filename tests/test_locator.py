"""The learned knee locator (issue 26): decoding, the letterbox mapping, the shipped int8 model on
real films, the boxes it was trained on, and the ``knee_locator`` framing that uses it."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from osteo_edge import locator as L
from osteo_edge.errors import BundleError, ConfigError
from osteo_edge.preprocess import PreprocessSpec, frames, to_gray
from osteo_edge.images import decode_image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BOXES = ROOT / "benchmarks" / "locator" / "knee_boxes.csv"


def _map(peaks: list[tuple[int, int, float, float, float, float]]) -> np.ndarray:
    """An output map with the given (row, col, score, dx, dy, side px) peaks."""
    out = np.full((L.GRID, L.GRID, L.CHANNELS), -8.0, np.float32)
    out[..., 1:3] = 0.5
    for r, c, score, dx, dy, side in peaks:
        out[r, c] = (np.log(score / (1 - score)), dx, dy, np.log(side / L.INPUT))
    return out.reshape(-1)


def test_letterbox_maps_original_pixels_into_the_square():
    g = np.zeros((400, 200), np.float32)
    g[300, 50] = 1.0
    lb, scale, left, top = L.letterbox(g)
    assert lb.shape == (L.INPUT, L.INPUT) and scale == pytest.approx(L.INPUT / 400)
    assert (left, top) == ((L.INPUT - 112) // 2, 0)
    y, x = np.unravel_index(np.argmax(lb), lb.shape)
    assert abs(x - (50 * scale + left)) <= 1 and abs(y - 300 * scale) <= 1


def test_two_peaks_are_two_knees_left_to_right_in_film_pixels():
    h, w = 300, 600
    lb, scale, left, top = L.letterbox(np.zeros((h, w), np.float32))
    out = _map([(6, 10, 0.9, 0.5, 0.5, 60.0), (6, 3, 0.8, 0.5, 0.5, 60.0)])
    dets = L.detections(out, h, w, scale, left, top, min_score=0.3)
    assert len(dets) == 2 and dets[0].cx < dets[1].cx
    cx = (3.5 * L.STRIDE - left) / scale
    cy = (6.5 * L.STRIDE - top) / scale
    assert dets[0].cx == pytest.approx(cx) and dets[0].cy == pytest.approx(cy)
    assert dets[0].box.side == round(60 / scale)
    for d in dets:
        assert 0 <= d.box.left <= w - d.box.side and 0 <= d.box.top <= h - d.box.side


def test_no_peak_above_the_threshold_still_gives_the_best_one_with_its_low_score():
    out = _map([(2, 2, 0.1, 0.2, 0.2, 40.0), (9, 9, 0.2, 0.5, 0.5, 40.0)])
    (d,) = L.detections(out, 224, 224, 1.0, 0, 0, min_score=0.3)
    assert d.score == pytest.approx(0.2, abs=1e-4) and d.cx == pytest.approx(9.5 * L.STRIDE)


def test_at_most_two_knees_and_neighbours_of_a_peak_are_not_knees():
    out = _map([(5, 5, 0.9, 0.5, 0.5, 40.0), (5, 6, 0.85, 0.5, 0.5, 40.0), (1, 1, 0.7, 0.5, 0.5, 40), (12, 12, 0.6, 0.5, 0.5, 40)])
    dets = L.detections(out, 224, 224, 1.0, 0, 0, min_score=0.3)
    assert len(dets) == 2
    assert {(round(d.cx), round(d.cy)) for d in dets} == {(round(5.5 * 16), round(5.5 * 16)), (round(1.5 * 16), round(1.5 * 16))}


def test_a_box_larger_than_the_film_is_cut_to_it():
    b = L.to_box(10, 10, 1000, 50, 80)
    assert b.side == 50 and b.left == 0 and b.top == 0


# ------------------------------------------------------------------------------------------------
# the knee_locator framing and bundles


def test_spec_pins_the_installed_locator_and_older_specs_are_unchanged():
    spec = PreprocessSpec(input_size=64, resize="knee_locator")
    assert spec.locator == L.installed_sha256()
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    assert "locator" not in PreprocessSpec(input_size=64, resize="knee").to_dict()  # old bundles' JSON keeps its bytes
    with pytest.raises(ConfigError, match="only for the knee_locator"):
        PreprocessSpec(input_size=64, resize="knee", locator="ab12")


def test_a_bundle_trained_with_another_locator_is_refused_in_one_line():
    spec = PreprocessSpec(input_size=64, resize="knee_locator", locator="0" * 64)
    with pytest.raises(ConfigError, match="trained with knee locator 000000000000; the installed locator is"):
        frames(np.random.default_rng(0).random((200, 300), dtype=np.float32), spec)


def test_a_damaged_or_swapped_locator_file_is_refused(tmp_path):
    shutil.copytree(L.MODEL_DIR, tmp_path / "loc")
    p = tmp_path / "loc" / L.MODEL_FILE
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(BundleError, match="does not match locator.json"):
        L.KneeLocator(tmp_path / "loc")
    (tmp_path / "loc" / "locator.json").write_text(json.dumps({"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}))
    with pytest.raises(BundleError, match="LiteRT cannot load the knee locator"):
        L.KneeLocator(tmp_path / "loc")
    with pytest.raises(BundleError, match="no knee locator"):
        L.KneeLocator(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------
# the shipped model on real films, and its boxes


def _rows() -> list[dict]:
    return list(csv.DictReader(BOXES.read_text().splitlines()))


def test_boxes_csv_says_who_made_and_checked_every_box():
    rows = _rows()
    assert len({r["id"] for r in rows}) >= 300
    for r in rows:
        assert r["made_by"] and r["checked"], r["id"]
        assert r["path"].startswith("knee/") and ".." not in r["path"]
        assert 0 < float(r["side"]) <= max(int(r["width"]), int(r["height"]))


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
def test_shipped_locator_finds_the_checked_joints_of_held_out_films():
    meta = json.loads((L.MODEL_DIR / "locator.json").read_text())
    test_groups = set(meta["test_groups"])
    by_path: dict[str, list[dict]] = {}
    for r in _rows():
        if r["group"] in test_groups:
            by_path.setdefault(r["path"], []).append(r)
    loc = L.default_locator()
    hits = total = 0
    for path, rows in sorted(by_path.items())[:40]:
        dets = loc.detect(to_gray(decode_image(DATA / path, "scale")))
        for r in rows:
            cx, cy = float(r["cx"]), float(r["cy"])
            total += 1
            hits += any(abs(cx - (d.box.left + d.box.side / 2)) <= d.box.side / 4 and abs(cy - (d.box.top + d.box.side / 2)) <= d.box.side / 4
                        for d in dets)
    assert total >= 40 and hits / total >= 0.9


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
def test_knee_locator_framing_gives_a_view_per_knee_of_a_bilateral_film():
    bilateral = next(r for r in _rows() if r["source"] == "wani-mendeley" and r["knee"] == "1")
    g = to_gray(decode_image(DATA / bilateral["path"], "scale"))
    views = frames(g, PreprocessSpec(input_size=96, resize="knee_locator"))
    assert len(views) == 2 and all(v.shape == (96, 96) for v in views)


# ------------------------------------------------------------------------------------------------
# training targets (torch side) agree with the runtime's decoding


def test_training_targets_decode_back_to_the_knees():
    from osteo_edge.train.locator import targets

    knees = [(40.3, 101.7, 50.0), (170.9, 99.2, 61.0)]
    t = targets(knees)
    out = np.full((L.GRID, L.GRID, L.CHANNELS), -8.0, np.float32)
    pos = t[..., 4] > 0
    out[..., 0] = np.where(t[..., 0] >= 1.0, 4.0, np.where(t[..., 0] > 0.5, -1.0, -8.0))
    out[..., 1:4][pos] = t[..., 1:4][pos]
    found = sorted(L.peaks(out.reshape(-1), min_score=0.5))
    assert len(found) == 2
    for (score, x, y, side), (kx, ky, ks) in zip(sorted(found, key=lambda f: f[1]), knees):
        assert score > 0.9 and x == pytest.approx(kx, abs=1e-3) and y == pytest.approx(ky, abs=1e-3) and side == pytest.approx(ks, rel=1e-4)


def test_locator_accuracy_scores_a_perfect_and_a_wrong_answer():
    from osteo_edge.framing import Box
    from osteo_edge.train.locator import Film, score_films

    film = Film("knee/x.png", "wani-mendeley", "1", np.zeros((200, 400), np.float32), [(100, 100, 80), (300, 100, 80)], 1.0)
    perfect = score_films([film], lambda f: [Box(60, 60, 80), Box(260, 60, 80)])["wani-mendeley"]
    assert perfect["mean_iou"] == 1.0 and perfect["films_crop_contains_joint"] == 1.0 and perfect["films_right_knee_count"] == 1.0
    one = score_films([film], lambda f: [Box(60, 60, 80)])["all"]
    assert one["mean_iou"] == 0.5 and one["films_crop_contains_joint"] == 0.0 and one["films_right_knee_count"] == 0.0
    off = score_films([film], lambda f: [Box(60, 95, 80), Box(260, 95, 80)])["all"]  # joint 35 px from the centre of an 80 px crop
    assert off["films_crop_contains_joint"] == 0.0 and 0.0 < off["mean_iou"] < 0.6


def test_locator_cli_answers_each_image_and_refuses_bad_tables_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from osteo_edge.cli import app

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    good = DATA / "knee" / "wani-mendeley" / "Normal" / "N1.JPEG"
    args = ["locator", "show", str(bad), "--json"] + ([str(good)] if good.is_file() else [])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "not a recognised image" in r.output
    if good.is_file():
        knees = json.loads([ln for ln in r.output.splitlines() if ln.startswith("{")][0])["knees"]
        assert len(knees) == 2  # a bilateral Wani film
    r = CliRunner().invoke(app, ["locator", "train", "--boxes", str(bad), "--split", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "Traceback" not in r.output and "not a knee boxes CSV" in r.output


def test_two_neighbouring_cells_tied_by_int8_rounding_are_one_knee():
    out = _map([(6, 6, 0.9, 0.5, 0.5, 60.0), (6, 7, 0.9, 0.5, 0.5, 60.0), (7, 6, 0.9, 0.5, 0.5, 60.0)])
    assert len(L.detections(out, 224, 224, 1.0, 0, 0, min_score=0.3)) == 1


@pytest.mark.parametrize("text", ["{", "[1, 2]", '{"sha256": "abc"}', '{"sha256": "%s", "min_score": "x"}' % ("a" * 64)])
def test_a_broken_locator_description_is_refused_in_one_line(tmp_path, text):
    shutil.copytree(L.MODEL_DIR, tmp_path / "loc")
    (tmp_path / "loc" / "locator.json").write_text(text)
    with pytest.raises(BundleError, match="not a knee locator description") as err:
        L.KneeLocator(tmp_path / "loc")
    assert "\n" not in str(err.value)


def test_a_locator_pin_must_be_a_whole_sha256():
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        PreprocessSpec(input_size=64, resize="knee_locator", locator="f")


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")
def test_the_shared_locator_gives_each_thread_its_own_answer():
    from concurrent.futures import ThreadPoolExecutor

    rows = _rows()
    films = [to_gray(decode_image(DATA / p, "scale")) for p in sorted({r["path"] for r in rows})[:6]]
    loc = L.default_locator()
    serial = [loc.boxes(g) for g in films]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(loc.boxes, films)) == serial
