"""One worker's runtime: identify an image, skip it when the record already answers it, else answer it.

Every worker process (local or a Ray actor) holds one :class:`Screener`: its own verified bundle and
model (one inference thread), and the set of image keys the record already answers for that bundle's
seal. An outcome is a plain dict (it crosses process and Ray boundaries as JSON)::

    {"path", "key", "identity": {sha256, sop_instance_uid, ...}, "meta": {patient_id, ...},
     "state": "answered" | "skipped" | "missing" | "unreadable", "prediction": Prediction.to_dict() | None,
     "seconds": decode + inference time, "identify_seconds": hashing + header time,
     "cpu_seconds": this process's CPU time for the whole image (unaffected by other load)}
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..core.csvsafe import utf8_text
from .sources import META_FIELDS, ScreenItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs (picklable): the bundle (None: the shipped default), the seal the
    driver verified, the keys already answered, trusted keys and inference threads per worker."""

    model: str | None
    seal: str
    answered: frozenset[str] = field(default_factory=frozenset)
    trusted_keys: tuple[str, ...] = ()
    threads: int = 1


def load_classifier(config: WorkerConfig) -> Any:
    """The worker's own classifier; refuses a bundle whose seal is not the one the driver records under
    (on a cluster: a node holding another copy of the bundle at the same path)."""
    from ..artifact.signing import TrustStore
    from ..edge_runtime import EdgeClassifier

    clf = EdgeClassifier.load(config.model, threads=config.threads, trust=TrustStore.from_env(list(config.trusted_keys)))
    if clf.bundle.seal != config.seal:
        raise BundleError(f"{clf.bundle.path}: this worker's bundle has seal {clf.bundle.seal[:12]}..., the driver's "
                          f"{config.seal[:12]}...; every worker must hold the same bundle")
    return clf


def _dicom_header(path: Path) -> Any:
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # an unreadable header: the sha256 identifies the file; decoding will reject it
        log.debug("%s: no DICOM header read", path, exc_info=True)
        return None


def header_meta(ds: Any) -> dict[str, str]:
    """Worklist fields of a DICOM header: patient ID, accession number, study UID and the film's date
    (acquisition, else content, else study date)."""
    def get(*names: str) -> str:
        for n in names:
            v = str(ds.get(n, "") or "").strip()
            if v:
                return v
        return ""

    found = {"patient_id": get("PatientID"), "accession_number": get("AccessionNumber"),
             "study_instance_uid": get("StudyInstanceUID"), "film_date": get("AcquisitionDate", "ContentDate", "StudyDate")}
    return {k: v for k, v in found.items() if v}


def identify(item: ScreenItem) -> tuple[dict[str, Any], dict[str, str]]:
    """(record identity, worklist meta) of one file: its sha256 and, for DICOM, its UIDs and header fields
    (never the patient's name). A file that does not exist: an empty identity."""
    from ..artifact import sha256_file
    from ..dicom.record import InputIdentity, header_uids
    from ..preprocess import is_dicom

    p = Path(item.path)
    meta = dict(item.meta)
    if not p.is_file():
        return InputIdentity(input_name=p.name).__dict__, meta
    with open(p, "rb") as fh:
        head = fh.read(132)
    uids: dict[str, Any] = {}
    if is_dicom(head):
        ds = _dicom_header(p)
        if ds is not None:
            uids = header_uids(ds)
            meta = {**meta, **header_meta(ds)}  # the header is the truth for a DICOM file
    return InputIdentity(sha256=sha256_file(p), input_name=p.name, **uids).__dict__, meta


class Screener:
    """Answers :class:`ScreenItem` s one at a time with one classifier (``clf``: already loaded, else
    loaded from ``config``)."""

    def __init__(self, config: WorkerConfig, clf: Any = None) -> None:
        self.config = config
        self.clf = clf if clf is not None else load_classifier(config)

    def __call__(self, item: ScreenItem) -> dict[str, Any]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            who, meta = identify(item)
        except OSError as exc:  # permission denied, an I/O error on a network share: this file only, the run goes on
            return unreadable(item, exc)
        key = item.key or who.get("sop_instance_uid") or who.get("sha256")
        out: dict[str, Any] = {"path": item.path, "key": key, "identity": who, "meta": meta, "prediction": None,
                               "identify_seconds": time.perf_counter() - t0, "seconds": 0.0, "cpu_seconds": 0.0}
        if key is None:
            out["state"] = "missing"
            return out
        if key in self.config.answered:
            out["state"] = "skipped"
            return out
        t1 = time.perf_counter()
        out["prediction"] = self._predict(item.path).to_dict()
        out["seconds"] = time.perf_counter() - t1
        out["cpu_seconds"] = time.process_time() - c0  # this process's CPU time: what the image costs a free core
        out["state"] = "answered"
        return out

    def _predict(self, path: str) -> Any:
        """The runtime's answer, as ``predict`` gives it; an unexpected error is a rejection, never a stop."""
        from ..edge_runtime import Prediction
        from ..edge_runtime.classifier import SHORT_DISCLAIMER

        try:
            return self.clf.predict(path)
        except Exception as exc:  # noqa: BLE001 (the run goes on; the file is answered rejected, with the error)
            log.warning("%s: %s while answering it; recorded as rejected", utf8_text(os.path.basename(path)), type(exc).__name__)
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return Prediction(path=path, status="rejected", label=None, probabilities={}, reason="invalid_image",
                              message=f"rejected: unreadable image ({type(exc).__name__}: {msg}). {SHORT_DISCLAIMER}")


def unreadable(item: ScreenItem, exc: OSError) -> dict[str, Any]:
    """The outcome of a file that cannot be read (so has no identity): not recorded, counted; a rerun tries again."""
    why = exc.strerror or type(exc).__name__
    log.warning("%s: cannot be read (%s); not recorded", utf8_text(os.path.basename(item.path)), why)
    return {"path": item.path, "key": None, "identity": {}, "meta": dict(item.meta), "prediction": None, "state": "unreadable",
            "why": why, "seconds": 0.0, "identify_seconds": 0.0, "cpu_seconds": 0.0}


def crashed(item: ScreenItem, why: str) -> dict[str, Any]:
    """The outcome of an image whose decoding killed its worker process twice: rejected, with why."""
    from ..edge_runtime import Prediction
    from ..edge_runtime.classifier import SHORT_DISCLAIMER

    try:
        who, meta = identify(item)
    except OSError as exc:
        return unreadable(item, exc)
    key = item.key or who.get("sop_instance_uid") or who.get("sha256")
    pred = Prediction(path=item.path, status="rejected", label=None, probabilities={}, reason="invalid_image",
                      message=f"rejected: unreadable image ({why}). {SHORT_DISCLAIMER}").to_dict()
    return {"path": item.path, "key": key, "identity": who, "meta": meta, "prediction": pred,
            "state": "answered" if key else "missing", "seconds": 0.0, "identify_seconds": 0.0, "cpu_seconds": 0.0}


__all__ = ["META_FIELDS", "Screener", "WorkerConfig", "crashed", "header_meta", "identify", "load_classifier", "unreadable"]
