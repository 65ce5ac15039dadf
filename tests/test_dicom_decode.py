"""Every transfer syntax a radiograph arrives in, compressed by real third-party encoders (dcmtk, GDCM)
from a real knee image: the answer equals the uncompressed file's (lossless: identical; lossy: same
label), and no library traceback or warning reaches stderr."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from osteo_edge.dicom.decode import TRANSFER_SYNTAXES, accepted_syntaxes, decodable, get_syntax
from osteo_edge.dicom.samples import TOOLS, all_syntaxes
from osteo_edge.edge_runtime import EdgeClassifier
from osteo_edge.errors import ConfigError
from osteo_edge.preprocess import decode_image

from dicom_support import require_knee, require_programs


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    require_programs(*TOOLS[:6])
    return all_syntaxes(require_knee(), tmp_path_factory.mktemp("syntaxes"))


@pytest.fixture(scope="module")
def clf():
    return EdgeClassifier.load(threads=1)


def test_every_syntax_has_a_decoder_installed():
    assert [ts.name for ts in TRANSFER_SYNTAXES if not decodable(ts)] == []
    assert len(accepted_syntaxes()) == len(TRANSFER_SYNTAXES)
    assert get_syntax("1.2.840.10008.1.2.4.51").name == "jpeg-extended"
    with pytest.raises(ConfigError, match="valid: implicit"):
        get_syntax("jpeg-xl")


@pytest.mark.parametrize("ts", TRANSFER_SYNTAXES, ids=lambda t: t.name)
def test_compressed_answer_matches_uncompressed(samples, clf, ts):
    import pydicom

    path = samples[ts.name]
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts.uid
    ref_path = samples[f"base{ts.bits}"]
    got, ref = decode_image(path), decode_image(ref_path)
    assert got.bits == ts.bits
    p, r = clf.predict(path), clf.predict(ref_path)
    assert r.status in ("ok", "refer") and p.status == r.status
    if ts.lossless:
        np.testing.assert_array_equal(got.pixels, ref.pixels)
        assert p.probabilities == r.probabilities
    else:
        assert 0 < np.abs(got.pixels - ref.pixels).max() < 0.1  # really lossy, still the same image
        assert p.label == r.label


def test_cli_predict_every_syntax_keeps_stderr_clean(samples, tmp_path):
    bad = tmp_path / "truncated_jpeg_extended.dcm"
    data = samples["jpeg-extended"].read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    files = [str(p) for p in samples.values()] + [str(bad)]
    code = "import sys; from osteo_edge.cli import main; sys.argv = ['osteo-edge', 'predict', '--json', *sys.argv[1:]]; main()"
    res = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "XNNPACK" not in ln]  # LiteRT's own start-up line
    assert lines == []
    assert res.stdout.count('"status": "rejected"') == 1
    assert "truncated_jpeg_extended" in res.stdout
