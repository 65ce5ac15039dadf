"""The transfer syntaxes a radiograph arrives in, as one table, and which of them this install decodes.

Decoding itself is ``osteo_edge.preprocess.decode_image`` (pydicom and its pixel plugins). The
``runtime`` extra decodes uncompressed, deflated and RLE files (pydicom) and JPEG baseline and JPEG 2000
(Pillow); the ``dicom`` extra adds pylibjpeg + libjpeg for JPEG lossless, 12-bit JPEG extended and
JPEG-LS. This table is what the DICOM node accepts at association (only what this install decodes) and
what the tests and the benchmark compress with a real encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import require


@dataclass(frozen=True)
class TransferSyntax:
    name: str  # short name used in tests, benchmarks and docs
    uid: str
    lossless: bool
    description: str
    encoder: tuple[str, ...] = ()  # a third-party command that writes it: {src} {dst} (tests, benchmarks)
    bits: int = 12  # the sample depth a test image in this syntax is made with
    # plugins that do not decode this syntax's radiographs although pydicom lists them (Pillow's
    # JPEG decoder stops at 8 bits: 12-bit JPEG extended needs libjpeg)
    not_enough: tuple[str, ...] = ()


TRANSFER_SYNTAXES: tuple[TransferSyntax, ...] = (
    TransferSyntax("implicit", "1.2.840.10008.1.2", True, "Implicit VR Little Endian", ("dcmconv", "+ti", "{src}", "{dst}")),
    TransferSyntax("explicit", "1.2.840.10008.1.2.1", True, "Explicit VR Little Endian", ("dcmconv", "+te", "{src}", "{dst}")),
    TransferSyntax("deflated", "1.2.840.10008.1.2.1.99", True, "Deflated Explicit VR Little Endian", ("dcmconv", "+td", "{src}", "{dst}")),
    TransferSyntax("rle", "1.2.840.10008.1.2.5", True, "RLE Lossless", ("dcmcrle", "{src}", "{dst}")),
    TransferSyntax("jpeg-baseline", "1.2.840.10008.1.2.4.50", False, "JPEG Baseline (process 1), 8-bit", ("dcmcjpeg", "+eb", "{src}", "{dst}"), 8),
    TransferSyntax("jpeg-extended", "1.2.840.10008.1.2.4.51", False, "JPEG Extended (process 2 and 4), 12-bit", ("dcmcjpeg", "+ee", "{src}", "{dst}"), not_enough=("pillow",)),
    TransferSyntax("jpeg-lossless", "1.2.840.10008.1.2.4.57", True, "JPEG Lossless (process 14)", ("dcmcjpeg", "+el", "{src}", "{dst}")),
    TransferSyntax("jpeg-lossless-sv1", "1.2.840.10008.1.2.4.70", True, "JPEG Lossless (process 14, SV1)", ("dcmcjpeg", "+e1", "{src}", "{dst}")),
    TransferSyntax("jpeg-ls", "1.2.840.10008.1.2.4.80", True, "JPEG-LS Lossless", ("dcmcjpls", "+el", "{src}", "{dst}")),
    TransferSyntax("jpeg-ls-near", "1.2.840.10008.1.2.4.81", False, "JPEG-LS Near-Lossless", ("dcmcjpls", "+en", "{src}", "{dst}")),
    TransferSyntax("j2k-lossless", "1.2.840.10008.1.2.4.90", True, "JPEG 2000 Lossless", ("gdcmconv", "--j2k", "{src}", "{dst}")),
    TransferSyntax("j2k", "1.2.840.10008.1.2.4.91", False, "JPEG 2000", ("gdcmconv", "--j2k", "--lossy", "-r", "10", "{src}", "{dst}")),
)


def get_syntax(name: str) -> TransferSyntax:
    from ..errors import choice_error

    for ts in TRANSFER_SYNTAXES:
        if ts.name == name or ts.uid == name:
            return ts
    raise choice_error("transfer syntax", name, [t.name for t in TRANSFER_SYNTAXES])


def decodable(ts: TransferSyntax) -> bool:
    """Whether an installed pydicom pixel plugin decodes this syntax (uncompressed ones always)."""
    require("pydicom", "runtime")
    from pydicom.pixels import get_decoder

    if ts.name in ("implicit", "explicit", "deflated"):
        return True
    try:
        plugins = get_decoder(ts.uid).available_plugins
    except (NotImplementedError, ValueError):
        return False
    return any(p not in ts.not_enough for p in plugins)



def accepted_syntaxes() -> list[str]:
    """UIDs of the table's syntaxes this install can decode: what the node accepts at association."""
    return [ts.uid for ts in TRANSFER_SYNTAXES if decodable(ts)]
