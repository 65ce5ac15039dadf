"""The input gate: bad files, non-radiographs and DICOM are answered with a reason; valid variants pass."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from osteo_edge.edge_runtime.gate import Gate, OODModel, image_features
from osteo_edge.edge_runtime.gate_fit import calibrate_gate, fit_ood
from osteo_edge.errors import BundleError, InvalidImageError
from osteo_edge.preprocess import MAX_PIXELS, decode_image

from test_runtime_fixtures import knee_images, png_bytes


def radiograph(h: int = 200, w: int = 160, seed: int = 0) -> np.ndarray:
    """A synthetic grey 'radiograph' with structure (passes the rule checks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.2 + 0.5 * np.exp(-((xx - w / 2) ** 2) / (2 * (w / 6) ** 2)) + 0.05 * rng.random((h, w))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def real_knee():
    return knee_images(1)[0]


# -- decoding failures: one line, InvalidImageError -------------------------------------------------


def _png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("w,h", [(7000, 7000), (20000, 20000), (100000, 100000)])
def test_decompression_bombs_refused_from_header(w, h):
    with pytest.raises(InvalidImageError, match=str(MAX_PIXELS)) as ei:
        decode_image(_png_header(w, h))
    assert "\n" not in str(ei.value)


def test_bad_files_raise_one_line(tmp_path, real_knee):
    good = real_knee.read_bytes()
    cases = {
        "empty.png": b"",
        "text.jpg": b"hello, not an image\n",
        "truncated.jpg": good[: len(good) // 3] if real_knee.suffix.lower() in (".jpg", ".jpeg") else good[:200],
        "garbage.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(InvalidImageError) as ei:
            decode_image(p)
        assert "\n" not in str(ei.value) and name in str(ei.value)
    with pytest.raises(InvalidImageError, match="directory"):
        decode_image(tmp_path)
    with pytest.raises(InvalidImageError, match="no such file"):
        decode_image(tmp_path / "missing.png")


def test_corrupted_bytes_never_escape_as_other_errors():
    rng = np.random.default_rng(1)
    arr = radiograph(64, 80)
    seeds = []
    for fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        b = io.BytesIO()
        Image.fromarray(arr).save(b, format=fmt)
        seeds.append(b.getvalue())
    for data in seeds:
        for i in range(60):
            d = bytearray(data)
            if i % 2:
                d = d[: int(rng.integers(1, len(d)))]
            else:
                for _ in range(int(rng.integers(1, 8))):
                    d[int(rng.integers(0, len(d)))] = int(rng.integers(0, 256))
            try:
                decode_image(bytes(d))
            except InvalidImageError:
                pass


# -- rule checks ------------------------------------------------------------------------------------


def test_rules_too_small_blank_colour():
    gate = Gate()
    assert gate.check(decode_image(radiograph())).ok
    r = gate.check(decode_image(radiograph(60, 50)))
    assert (r.ok, r.code) == (False, "too_small") and "60" in r.reason
    r = gate.check(decode_image(np.full((200, 200), 128, np.uint8)))
    assert (r.ok, r.code) == (False, "blank")
    rgb = np.stack([radiograph(), np.roll(radiograph(seed=1), 40, axis=1), radiograph(seed=2)[::-1]], axis=2)
    r = gate.check(decode_image(rgb))
    assert (r.ok, r.code) == (False, "colour")
    grey_rgb = np.repeat(radiograph()[:, :, None], 3, axis=2)  # radiographs stored as RGB pass
    assert gate.check(decode_image(grey_rgb)).ok


def test_real_knee_files_pass_rules():
    gate = Gate()
    for p in knee_images(4) + knee_images(3, "multiclass-kaggle"):
        assert gate.check(decode_image(p)).ok, p


# -- formats that must be processed, not rejected ---------------------------------------------------


def test_variants_are_processed(tmp_path, real_knee):
    gate = Gate()
    base = np.asarray(Image.open(real_knee).convert("L"))
    ref = image_features(decode_image(base))
    variants = {}
    variants["16bit.png"] = png_bytes((base.astype(np.uint16) * 257))
    b = io.BytesIO(); Image.fromarray(base).save(b, format="TIFF"); variants["plain.tiff"] = b.getvalue()
    b = io.BytesIO(); Image.fromarray(base.astype(np.uint16) * 16).save(b, format="TIFF"); variants["12bit.tiff"] = b.getvalue()
    rgba = np.dstack([base, base, base, np.full_like(base, 255)])
    b = io.BytesIO(); Image.fromarray(rgba, "RGBA").save(b, format="PNG"); variants["rgba.png"] = b.getvalue()
    b = io.BytesIO(); Image.fromarray(base).convert("CMYK").save(b, format="JPEG", quality=95); variants["cmyk.jpg"] = b.getvalue()
    # EXIF-rotated: store the image rotated with orientation 6 (rotate 90 CW to display).
    ex = Image.Exif(); ex[0x0112] = 6
    b = io.BytesIO(); Image.fromarray(np.ascontiguousarray(np.rot90(base, 1))).save(b, format="JPEG", quality=95, exif=ex); variants["exif.jpg"] = b.getvalue()
    for name, data in variants.items():
        dec = decode_image(data)
        assert gate.check(dec).ok, name
        assert dec.size == (base.shape[1], base.shape[0]), name
        assert np.abs(image_features(dec)[:64] - ref[:64]).max() < 0.06, name


# -- DICOM ------------------------------------------------------------------------------------------


def dicom_bytes(arr, photometric="MONOCHROME2", drop=(), pixel=True, samples=1, **tags) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if pixel:
        ds.PixelData = arr.astype(np.uint16).tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    for k in drop:
        delattr(ds, k)
    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()


RAMP = np.tile(np.arange(0, 4000, 20, dtype=np.uint16), (150, 1))  # 150 x 200, 12-bit


def test_dicom_monochrome2_and_1():
    d2 = decode_image(dicom_bytes(RAMP))
    assert d2.format == "DICOM" and d2.size == (200, 150)
    assert d2.pixels[0, 0] == 0.0 and d2.pixels[0, -1] == 1.0
    d1 = decode_image(dicom_bytes(RAMP, "MONOCHROME1"))
    np.testing.assert_allclose(d1.pixels, 1.0 - d2.pixels, atol=1e-6)


def test_dicom_rescale_and_window():
    # modality LUT: slope/intercept is monotonic, so after min-max the ramp is unchanged
    dr = decode_image(dicom_bytes(RAMP, RescaleSlope=2, RescaleIntercept=-1000))
    np.testing.assert_allclose(dr.pixels, decode_image(dicom_bytes(RAMP)).pixels, atol=1e-6)
    # VOI window 1000 +- 250: below 750 black, above 1250 white, linear between
    dw = decode_image(dicom_bytes(RAMP, WindowCenter=1000, WindowWidth=500))
    row = dw.pixels[0]
    raw = RAMP[0].astype(float)
    assert np.all(row[raw < 740] == 0.0) and np.all(row[raw > 1260] == 1.0)
    mid = (raw > 800) & (raw < 1200)
    assert np.all(np.diff(row[mid]) > 0)
    # a window on rescaled values: intercept shifts the window
    dws = decode_image(dicom_bytes(RAMP, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=500))
    np.testing.assert_allclose(dws.pixels, dw.pixels, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pixel": False}, "no pixel data"),
        ({"drop": ("Rows",)}, "Rows"),
        ({"drop": ("PhotometricInterpretation",)}, "PhotometricInterpretation"),
        ({"drop": ("BitsStored",)}, "BitsStored"),
    ],
)
def test_dicom_missing_parts_rejected(kwargs, match):
    with pytest.raises(InvalidImageError, match=match):
        decode_image(dicom_bytes(RAMP, **kwargs))


def test_dicom_colour_and_truncated_rejected():
    rgb = np.zeros((150, 200, 3), np.uint16)
    with pytest.raises(InvalidImageError, match="MONOCHROME"):
        decode_image(dicom_bytes(rgb, "RGB", samples=3))
    data = dicom_bytes(RAMP)
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) - 5000])


def test_dicom_real_radiograph_passes_gate(real_knee):
    base = np.asarray(Image.open(real_knee).convert("L")).astype(np.uint16) * 16
    dec = decode_image(dicom_bytes(4095 - base, "MONOCHROME1"))  # stored inverted, as some CR systems do
    assert Gate().check(dec).ok
    ref = decode_image(np.asarray(Image.open(real_knee).convert("L")))
    assert np.corrcoef(dec.pixels.ravel(), ref.pixels.ravel())[0, 1] > 0.99


# -- the out-of-distribution score ------------------------------------------------------------------


def _shapes(n, seed=0):
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.new("L", (200, 160), int(rng.integers(0, 256)))
        d = ImageDraw.Draw(im)
        for _ in range(6):
            x, y = int(rng.integers(0, 180)), int(rng.integers(0, 140))
            d.rectangle([x, y, x + int(rng.integers(10, 80)), y + int(rng.integers(10, 60))], fill=int(rng.integers(0, 256)))
        out.append(np.asarray(im))
    return out


@pytest.fixture(scope="module")
def small_gate():
    knees = knee_images(40, "multiclass-kaggle") + knee_images(20, "wani-mendeley")
    return calibrate_gate(knees[::2], knees[1::2], {"shapes": _shapes(10)}, min_accept=0.9, components=(4, 8), protocol="test"), knees


def test_ood_gate_calibrated_and_round_trips(small_gate):
    gate, knees = small_gate
    assert gate.ood is not None and np.isfinite(gate.ood.threshold)
    cal = gate.ood.calibration["calibration_sets"]
    assert cal["in_distribution"]["accept_rate"] >= 0.9
    assert cal["out_of_distribution"]["shapes"]["n"] == 10
    d = json.loads(json.dumps(gate.to_dict()))
    back = Gate.from_record(d)
    f = image_features(decode_image(knees[1]))
    assert back.ood.score(f) == pytest.approx(gate.ood.score(f), rel=1e-4)
    assert back.ood.threshold == pytest.approx(gate.ood.threshold, rel=1e-6)


def test_ood_gate_rejects_unseen_non_radiographs(small_gate):
    gate, _ = small_gate
    unseen = _shapes(10, seed=99)
    rejected = [not gate.check(decode_image(a)).ok for a in unseen]
    assert sum(rejected) >= 8
    r = gate.check(decode_image(unseen[0]))
    if not r.ok and r.code == "out_of_distribution":
        assert "threshold" in r.reason and r.ood_score > gate.ood.threshold


def test_gate_manifest_errors():
    assert Gate.from_record(None).ood is None
    with pytest.raises(BundleError):
        Gate.from_record({"version": 99})
    with pytest.raises(BundleError):
        Gate.from_record({"version": 1, "ood": {"features": "other", "threshold": 1}})
    m = fit_ood(np.random.default_rng(0).normal(size=(30, 102)), 4).to_dict()
    m["components"] = m["components"][:2]
    with pytest.raises(BundleError, match="inconsistent"):
        Gate.from_record({"version": 1, "ood": {**m, "threshold": 1.0}})


def test_threshold_keeps_min_acceptance_within_every_source():
    """Pooled 99% acceptance can hide a small source whose knees are refused (the Wani films in issue 17)."""
    from osteo_edge.edge_runtime.gate_fit import choose_threshold

    big = np.linspace(0.0, 1.0, 200)  # source A: scores 0..1
    small = np.array([0.5, 0.6, 1.4, 1.6])  # source B: half of it above A's range
    ood = np.linspace(1.2, 3.0, 50)
    knees = np.concatenate([big, small])
    names = ["A"] * big.size + ["B"] * small.size
    pooled = choose_threshold(knees, ood, 0.98)
    assert np.mean(small <= pooled) < 0.98  # pooled: source B loses knees
    per_source = choose_threshold(knees, ood, 0.98, names)
    assert np.mean(big <= per_source) >= 0.98 and np.mean(small <= per_source) >= 0.98


def test_crossfit_gate_accepts_every_source_and_refuses_other_radiographs():
    """The cross-fitted two-part gate (issue 17): its thresholds come from out-of-fold knee scores with
    min_accept in every source; unseen shapes and spine-like bars are refused by the knee-vs-other
    discriminator, and the whole gate (discriminator included) round-trips through the manifest."""
    from osteo_edge.edge_runtime.gate_fit import calibrate_gate_crossfit

    a, b = knee_images(30, "multiclass-kaggle"), knee_images(30, "wani-mendeley")
    knees = a + b
    sources = ["multiclass-kaggle"] * len(a) + ["wani-mendeley"] * len(b)
    folds = [i % 3 for i in range(len(knees))]
    gate = calibrate_gate_crossfit(knees, sources, folds, {"shapes": _shapes(20)}, min_accept=0.95, components=8, protocol="test")
    assert gate.discriminator is not None and np.isfinite(gate.discriminator.threshold)
    by_source = gate.ood.calibration["calibration_sets"]["in_distribution_by_source"]
    assert set(by_source) == {"multiclass-kaggle", "wani-mendeley"}
    assert all(r["accept_rate"] >= 0.95 for r in by_source.values())
    unseen = _shapes(10, seed=7)
    assert sum(not gate.check(decode_image(x)).ok for x in unseen) >= 8
    # the discriminator alone refuses them too, with its own one-line reason
    disc = gate.discriminator
    assert sum(disc.score(image_features(decode_image(x))) > disc.threshold for x in unseen) >= 8
    o = gate.ood
    loose = Gate(gate.min_side, gate.blank_std, gate.colour_chroma, OODModel(o.mean, o.components, o.variances, o.noise, float("inf")), disc)
    assert any("knee-vs-other" in (loose.check(decode_image(x)).reason or "") for x in unseen)
    back = Gate.from_record(json.loads(json.dumps(gate.to_dict())))
    f = image_features(decode_image(knees[0]))
    assert back.discriminator.score(f) == pytest.approx(gate.discriminator.score(f), rel=1e-4, abs=1e-4)
    d = gate.to_dict()
    d["discriminator"]["weights"] = d["discriminator"]["weights"][:5]
    with pytest.raises(BundleError, match="inconsistent"):
        Gate.from_record(d)


# -- osteo-edge gate calibrate (the library function and the command) ---------------------------------


def _fold_split(tmp, n_per_source=18):
    """A split.csv with folds over real knees of two sources: 3 folds of non-test rows, a few test rows."""
    import csv

    rows = []
    for src in ("multiclass-kaggle", "wani-mendeley"):
        for i, p in enumerate(knee_images(n_per_source, src)):
            split, fold = ("test", -1) if i % 6 == 5 else ("val" if i % 6 == 4 else "train", i % 3)
            rows.append([str(p), p.parent.name, p.parent.name, src, len(rows), split, fold, ""])
    path = tmp / "split.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "orig_label", "source", "group", "split", "fold", "sha256"])
        w.writerows(rows)
    return path


def test_gate_calibrate_command_writes_a_crossfitted_gate_into_a_bundle(tmp_path):
    from typer.testing import CliRunner

    from osteo_edge.artifact import load_bundle
    from osteo_edge.cli import app
    from test_export_fixtures import make_run

    split = _fold_split(tmp_path)
    bundle = make_run(tmp_path / "run")
    assert load_bundle(bundle).gate is None
    res = CliRunner().invoke(app, ["gate", "calibrate", "--split", str(split), "--bundle", str(bundle), "--crossfit",
                                   "--synthetic", "40", "--no-package-images", "--min-accept", "0.9", "--out", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    b = load_bundle(bundle)  # re-sealed through a recorded revision, and verifies
    assert b.revisions[-1].step == "gate calibration"
    gate = Gate.from_record(b.gate)
    assert gate.discriminator is not None and np.isfinite(gate.ood.threshold)
    report = json.loads((tmp_path / "g" / "gate_calibration.json").read_text())
    assert report["sets"]["non_knee"]["synthetic_grey"] == 40 and report["sets"]["test_knee"] == 6
    assert "cross-fitted" in report["calibration"]["protocol"] and report["threshold"] == pytest.approx(gate.ood.threshold)
    assert json.loads((tmp_path / "g" / "gate.json").read_text()) == b.gate
    by_source = report["calibration"]["calibration_sets"]["in_distribution_by_source"]
    assert set(by_source) == {"multiclass-kaggle", "wani-mendeley"} and "wani-mendeley" in res.output


def test_gate_calibrate_on_val_rows_without_a_bundle(tmp_path):
    from typer.testing import CliRunner

    from osteo_edge.cli import app

    split = _fold_split(tmp_path, 36)  # 24 train, 6 val, 6 test knees per source
    res = CliRunner().invoke(app, ["gate", "calibrate", "--split", str(split), "--synthetic", "40", "--no-package-images",
                                   "--min-accept", "0.9", "--out", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    assert "val rows" in res.output and "sign" not in res.output  # nothing was written into a bundle
    report = json.loads((tmp_path / "g" / "gate_calibration.json").read_text())
    assert report["sets"]["fit_knee"] == 48 and report["sets"]["calib_knee"] == 12
    gate = Gate.from_record(json.loads((tmp_path / "g" / "gate.json").read_text()))
    assert gate.discriminator is None and np.isfinite(gate.ood.threshold)
    assert "max Youden J" in report["calibration"]["protocol"]


def test_gate_calibrate_refuses_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from osteo_edge.cli import app

    split = _fold_split(tmp_path, 6)
    runner = CliRunner()
    res = runner.invoke(app, ["gate", "calibrate", "--split", str(split), "--bundle", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "not a model bundle" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["gate", "calibrate", "--split", str(split), "--non-knee", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "no such folder" in res.output
    flat = tmp_path / "flat.csv"  # no folds: --crossfit cannot work
    flat.write_text(split.read_text().replace(",0,\n", ",-1,\n").replace(",1,\n", ",-1,\n").replace(",2,\n", ",-1,\n"))
    res = runner.invoke(app, ["gate", "calibrate", "--split", str(flat), "--crossfit", "--synthetic", "40", "--no-package-images"])
    assert res.exit_code == 1 and "folds" in res.output


def test_synthetic_non_knee_images_are_those_the_shipped_gate_was_fitted_against():
    """The seeded synthetic set must not drift: with the same split, `osteo-edge gate calibrate --crossfit`
    rebuilds the shipped gate bit for bit only if these images stay the same (sha256 of the first 12,
    two of each kind, taken when the library's set was checked equal to the script's it replaced)."""
    import hashlib

    from osteo_edge.release.gate import synthetic_photos

    h = hashlib.sha256()
    for a in synthetic_photos(12):
        assert a.dtype == np.uint8 and a.ndim == 2
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    assert h.hexdigest() == "7dbbaa7023eef9e3b0f33b04150b3922a22a9bd99d6879a4c7023c07a7fd10b4"


def test_gate_calibrate_refuses_too_few_knees_before_fitting(tmp_path):
    """Too few knees to fit a fold's density model was found deep in the fitting, after featurising every image."""
    from typer.testing import CliRunner

    from osteo_edge.cli import app

    split = _fold_split(tmp_path, 6)  # 10 non-test knees in 3 folds: 6 or 7 outside each fold; 8 train rows
    for extra in (["--crossfit"], []):
        res = CliRunner().invoke(app, ["gate", "calibrate", "--split", str(split), "--synthetic", "40", "--no-package-images",
                                       "--out", str(tmp_path / "g"), *extra])
        assert res.exit_code == 1 and "at least 10" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "g").exists()
    bad_out = tmp_path / "file.txt"
    bad_out.write_text("x")
    for extra, msg in ((["--out", str(bad_out)], "is a file"), (["--min-accept", "2"], "[0.5, 1]")):  # out: a traceback after fitting
        res = CliRunner().invoke(app, ["gate", "calibrate", "--split", str(split), "--synthetic", "40", "--no-package-images", *extra])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output
