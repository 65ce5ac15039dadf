"""The preprocessing contract: one spec, one implementation, every input kind."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from osteo_edge.errors import ConfigError, InvalidImageError
from osteo_edge.preprocess import (
    MAX_PIXELS,
    PreprocessSpec,
    decode_image,
    finalize,
    preprocess,
    resize,
    to_gray,
)

SPEC = PreprocessSpec(input_size=64)


def _gradient(w: int = 96, h: int = 80) -> np.ndarray:
    """A deterministic 8-bit test pattern with structure in both axes (no symmetry)."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 2 + y * 3 + (x * y) % 17) % 256).astype(np.uint8)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_spec_json_round_trip_and_validation():
    spec = PreprocessSpec(input_size=128, interpolation="bicubic", mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2))
    again = PreprocessSpec.from_json(spec.to_json())
    assert again == spec
    assert json.loads(spec.to_json())["mean"] == [0.4, 0.4, 0.4]
    with pytest.raises(ConfigError, match="unknown preprocess spec field"):
        PreprocessSpec.from_dict({**spec.to_dict(), "evil": "__import__('os')"})
    with pytest.raises(ConfigError, match="interpolation"):
        PreprocessSpec(interpolation="magic")
    with pytest.raises(ConfigError, match="input_size"):
        PreprocessSpec(input_size=3)
    with pytest.raises(ConfigError, match="mean and std"):
        PreprocessSpec(mean=(0.5,), std=(0.5,))
    with pytest.raises(ConfigError, match="not valid JSON"):
        PreprocessSpec.from_json("{nope")


def test_output_shape_layout_and_normalisation():
    arr = _gradient()
    x = preprocess(arr, SPEC)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert np.allclose(x[0], x[1]) and np.allclose(x[1], x[2])  # grey replicated
    assert -1.0 <= x.min() and x.max() <= 1.0  # mean=std=0.5 maps [0,1] to [-1,1]
    nhwc = preprocess(arr, SPEC.with_layout("NHWC"))
    assert nhwc.shape == (64, 64, 3)
    assert np.array_equal(np.transpose(nhwc, (2, 0, 1)), x)
    single = preprocess(arr, PreprocessSpec(input_size=64, grayscale="single", channels=1, mean=(0.0,), std=(1.0,)))
    assert single.shape == (1, 64, 64) and 0.0 <= single.min() and single.max() <= 1.0
    in_graph = preprocess(arr, PreprocessSpec(input_size=64, normalize_in_graph=True))
    assert 0.0 <= in_graph.min() and in_graph.max() <= 1.0


@pytest.mark.parametrize("policy", ["center_crop", "letterbox", "stretch"])
def test_resize_policies(policy):
    spec = PreprocessSpec(input_size=32, resize=policy)
    tall = np.ones((100, 50), dtype=np.float32)
    out = resize(tall, spec)
    assert out.shape == (32, 32)
    if policy == "letterbox":  # aspect kept: dark bars left and right
        assert out[:, 0].max() == 0.0 and out[16, 16] == pytest.approx(1.0)
    else:
        assert out.min() == pytest.approx(1.0)


def test_16bit_png_matches_8bit():
    arr8 = _gradient()
    a = preprocess(_png(Image.fromarray(arr8, mode="L")), SPEC)
    arr16 = arr8.astype(np.uint16) * 257
    b_bytes = _png(Image.fromarray(arr16))
    decoded = decode_image(b_bytes)
    assert decoded.bits == 16
    b = preprocess(b_bytes, SPEC)
    assert np.allclose(a, b, atol=1e-5)


def test_12bit_data_in_16bit_png_uses_its_range():
    arr12 = (_gradient().astype(np.uint32) * 4095 // 255).astype(np.uint16)
    assert arr12.max() == 4095
    d = decode_image(_png(Image.fromarray(arr12)))
    assert d.pixels.max() == pytest.approx(1.0)  # scaled by 4095, not 65535


def test_gray_stored_as_rgb_rgba_cmyk_tiff_equal_gray():
    arr = _gradient()
    ref = preprocess(_png(Image.fromarray(arr, mode="L")), SPEC)
    rgb = Image.fromarray(np.stack([arr] * 3, -1), mode="RGB")
    assert np.allclose(preprocess(_png(rgb), SPEC), ref, atol=1e-5)
    rgba = rgb.convert("RGBA")
    assert np.allclose(preprocess(_png(rgba), SPEC), ref, atol=1e-5)
    tiff = _png(Image.fromarray(arr, mode="L"), format="TIFF")
    assert decode_image(tiff).format == "TIFF"
    assert np.allclose(preprocess(tiff, SPEC), ref, atol=1e-5)
    cmyk = _png(rgb.convert("CMYK"), format="JPEG", quality=100)
    out = preprocess(cmyk, SPEC)
    assert np.abs(out - ref).mean() < 0.05  # JPEG is lossy; CMYK is decoded, not rejected


def test_exif_orientation_applied():
    arr = _gradient(96, 80)
    img = Image.fromarray(arr, mode="L")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    jpg = _png(img, format="JPEG", quality=100, exif=exif)
    d = decode_image(jpg)
    assert d.size == (80, 96)  # width and height swapped by the orientation
    upright = np.asarray(img.transpose(Image.Transpose.ROTATE_270), dtype=np.float32) / 255
    assert np.abs(d.pixels - upright).mean() < 0.02


def test_format_by_content_not_extension(tmp_path):
    arr = _gradient()
    p = tmp_path / "scan.jpg"  # really a PNG
    p.write_bytes(_png(Image.fromarray(arr, mode="L")))
    assert decode_image(p).format == "PNG"


def test_decoded_equals_reference_path_parts(tmp_path):
    arr = _gradient()
    p = tmp_path / "x.png"
    p.write_bytes(_png(Image.fromarray(arr, mode="L")))
    parts = finalize(resize(to_gray(decode_image(p)), SPEC), SPEC)
    assert np.array_equal(parts, preprocess(p, SPEC))


def test_real_radiograph(shared_data):
    p = shared_data / "knee" / "wani-mendeley" / "Normal" / "N1.JPEG"
    x = preprocess(p, PreprocessSpec(input_size=224))
    assert x.shape == (3, 224, 224) and np.isfinite(x).all() and x.std() > 0.05


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is not an image at all" * 10), "not a recognised image"),
        (lambda p: p.write_bytes(_png(Image.fromarray(_gradient(), mode="L"))[:120]), "truncated or corrupt|unreadable"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_inputs_one_line_errors(tmp_path, make, match):
    p = tmp_path / "bad.png"
    make(p)
    with pytest.raises(InvalidImageError, match=match) as info:
        decode_image(p)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError, match="no such file"):
        decode_image(tmp_path / "nope.png")


def test_decompression_bomb_refused_before_decoding():
    side = int(MAX_PIXELS**0.5) + 10
    bomb = _png(Image.new("L", (side, side)), optimize=True)  # small file, huge canvas
    assert len(bomb) < 1_000_000
    with pytest.raises(InvalidImageError, match="pixel limit"):
        decode_image(bomb)


# ------------------------------------------------------------------------------------------------
# memory-bounded decoding of very large images


def test_normal_size_images_are_never_reduced():
    """Up to REDUCE_ABOVE x the working side the decoder returns every pixel: the model input is
    exactly the one of the full-size path."""
    from osteo_edge.preprocess import REDUCE_ABOVE, decode_for, working_side

    spec = PreprocessSpec(input_size=32)
    side = REDUCE_ABOVE * working_side(spec)
    data = _png(Image.fromarray(np.resize(_gradient(), (side, side + 7)), mode="L"))
    d = decode_for(data, spec)
    assert d.reduced == 1 and d.pixels.shape == (side, side + 7)
    assert np.array_equal(preprocess(data, spec), finalize(resize(to_gray(decode_image(data)), spec), spec))


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("RGB", "PNG"), ("RGB", "JPEG"), ("I;16", "PNG"), ("I;16", "TIFF")])
def test_large_images_are_reduced_in_the_decoder(mode, fmt):
    from osteo_edge.preprocess import REDUCE_KEEP, decode_for, working_side

    spec = PreprocessSpec(input_size=16, interpolation="bicubic")
    y, x = np.mgrid[0:600, 0:520]
    base = (x * 0.3 + y * 0.2 + 40 * np.sin(x / 37.0)).astype(np.float64)
    base = (base - base.min()) / (base.max() - base.min())
    if mode == "I;16":
        img = Image.fromarray((base * 4095).astype(np.uint16))  # 12-bit data in a 16-bit file
    elif mode == "RGB":
        img = Image.fromarray(np.repeat((base * 255).astype(np.uint8)[..., None], 3, axis=2), mode="RGB")
    else:
        img = Image.fromarray((base * 255).astype(np.uint8), mode="L")
    data = _png(img, format=fmt)
    small, full = decode_for(data, spec), decode_image(data)
    assert small.reduced > 1 and full.reduced == 1
    assert small.size == full.size == (520, 600) and small.bits == full.bits and small.mode == full.mode
    assert min(small.pixels.shape[:2]) >= REDUCE_KEEP * working_side(spec)
    a, b = preprocess(small, spec), preprocess(full, spec)
    assert np.abs(a - b).mean() < 0.03 and np.abs(a - b).max() < 0.1  # same picture, resampled in two steps (16 px!)
    assert small.pixels.mean() == pytest.approx(full.pixels.mean(), abs=0.01)  # same scale (12-bit range kept)


def test_reduced_decoding_applies_exif_orientation():
    from osteo_edge.preprocess import decode_for

    arr = np.zeros((400, 640), np.uint8)
    arr[:100, :160] = 255  # a bright block top-left before the rotation
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _png(Image.fromarray(arr, mode="L"), format="JPEG", quality=95, exif=exif)
    spec = PreprocessSpec(input_size=16, resize="stretch")
    small, full = decode_for(data, spec), decode_image(data)
    assert small.reduced > 1 and small.size == full.size == (400, 640)
    assert np.abs(preprocess(small, spec) - preprocess(full, spec)).mean() < 0.02
