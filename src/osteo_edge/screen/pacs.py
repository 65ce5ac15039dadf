"""Screening a PACS: C-FIND for the studies, series and images, then C-GET into a bounded spool.

Why C-GET and not C-MOVE: C-GET returns the images on the association this machine opened, so the
screening laptop needs no inbound port, no firewall opening and no entry (AE title, host, port) in the
PACS's list of move destinations; C-MOVE would make the PACS open a second association back to us.
(Most PACS, Orthanc by default, answer queries only from AE titles they list: ask for ``--ae-title``
to be listed; for C-GET its port is never used.)

The query is hierarchical (Study Root): studies in the date range with the modalities, their series
with the body part and modality, their images; the answers are checked again here (a PACS that
ignores a filter cannot widen the run). Images already answered in the record are never fetched.
The rest are fetched in batches into the spool; the driver records answers and removes their files
before the next batch is fetched, so the spool holds at most one batch plus the images in flight.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import ConfigError, require
from .sources import ScreenItem, chunks

log = logging.getLogger(__name__)

DEFAULT_CALLING_AE = "OSTEOEDGE-SCREEN"
SPOOL_MARK = ".osteo-edge-screen-spool"  # in a folder the screen made its spool; none elsewhere is ever emptied


@dataclass(frozen=True)
class PacsQuery:
    """What to screen: study dates (inclusive, ``YYYY-MM-DD``), modalities, body part (None: any)."""

    since: str | None = None
    until: str | None = None
    modalities: tuple[str, ...] = ("CR", "DX")
    body_part: str | None = "KNEE"

    def date_range(self) -> str:
        """The DICOM date range of StudyDate (``20200101-20201231``; open at one end; empty: any)."""
        lo, hi = (_dicom_date(self.since, "--since"), _dicom_date(self.until, "--until"))
        if lo and hi and hi < lo:
            raise ConfigError(f"--until {self.until!r} is before --since {self.since!r}")
        return f"{lo}-{hi}" if (lo or hi) else ""


def _dicom_date(text: str | None, option: str) -> str:
    if not text:
        return ""
    try:
        return dt.date.fromisoformat(text.strip()).strftime("%Y%m%d")
    except ValueError as exc:
        raise ConfigError(f"{option} {text!r} is not a date (YYYY-MM-DD, e.g. 2024-01-31)") from exc


def parse_pacs(text: str) -> Any:
    """``AE@HOST:PORT`` -> the node's Destination record."""
    from ..dicom.outbox import Destination

    try:
        return Destination.parse(text)
    except ConfigError:
        raise ConfigError(f"--pacs {text!r} is not AE@HOST:PORT (e.g. PACS@10.0.0.5:104)") from None


@dataclass
class Instance:
    study_uid: str
    series_uid: str
    sop_uid: str
    meta: dict[str, str] = field(default_factory=dict)


class PacsSource:
    """C-FIND then C-GET against one PACS, as ``calling_ae``; fetched files live in ``spool``."""

    def __init__(self, pacs: str, query: PacsQuery, spool: str | os.PathLike, calling_ae: str = DEFAULT_CALLING_AE,
                 batch: int = 32) -> None:
        self.target = parse_pacs(pacs)
        self.query = query
        self.spool = Path(spool)
        self.calling_ae = calling_ae
        self.batch = max(1, batch)
        self.not_fetched: list[str] = []  # SOP Instance UIDs the PACS did not deliver (retried by a rerun)
        if not calling_ae or len(calling_ae) > 16 or not calling_ae.isascii():
            raise ConfigError(f"--ae-title {calling_ae!r} must be 1-16 ASCII characters")
        query.date_range()  # a bad date is a one-line error before any association
        self._claim_spool()

    def _claim_spool(self) -> None:
        """The spool is a folder of its own: a new or empty one, or one this module marked. A folder of
        someone's files (a PACS export names files by SOP Instance UID too) is refused, never emptied."""
        mark = self.spool / SPOOL_MARK
        if self.spool.exists() and not self.spool.is_dir():
            raise ConfigError(f"--spool {self.spool}: not a folder")
        if self.spool.is_dir() and not mark.exists() and any(self.spool.iterdir()):
            raise ConfigError(f"--spool {self.spool}: this folder already holds files and is not a screening spool; "
                              "give a new or empty folder (the spool deletes the DICOM files it fetched)")
        try:
            self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
            mark.write_text("osteo-edge screen spool: files named <SOP Instance UID>.dcm here are deleted\n")
        except OSError as exc:
            raise ConfigError(f"--spool {self.spool}: cannot use this folder ({exc.strerror or exc})") from exc

    # -- association -----------------------------------------------------------------------
    def _associate(self, on_store: Callable[[Any], int] | None = None) -> Any:
        require("pynetdicom", "dicom")
        from pynetdicom import AE, build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        from ..dicom.decode import accepted_syntaxes
        from ..dicom.admission import RADIOGRAPH_SOP_CLASSES

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(FIND)
        roles = []
        if on_store is not None:
            ae.add_requested_context(GET)
            for uid in RADIOGRAPH_SOP_CLASSES:  # one context per syntax: the PACS sends each file as it is
                for ts in accepted_syntaxes():
                    ae.add_requested_context(uid, ts)
                roles.append(build_role(uid, scp_role=True))
        handlers = [(evt.EVT_C_STORE, on_store)] if on_store is not None else []
        t = self.target
        try:
            assoc = ae.associate(t.host, t.port, ae_title=t.ae_title, ext_neg=roles, evt_handlers=handlers)
        except OSError as exc:  # a host name that does not resolve (socket.gaierror), no route
            raise ConfigError(f"--pacs {t}: cannot reach {t.host} ({exc.strerror or exc})") from exc
        if not assoc.is_established:
            raise ConfigError(f"--pacs {t}: no association (PACS down, wrong AE title or port, or {self.calling_ae} not allowed)")
        return assoc

    def _find(self, assoc: Any, level: str, keys: dict[str, str]) -> list[Any]:
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for k, v in keys.items():
            setattr(ds, k, v)
        found = []
        for status, ident in _guarded(lambda: assoc.send_c_find(ds, FIND), f"--pacs {self.target}: C-FIND"):
            code = getattr(status, "Status", None)
            if code is None:
                raise ConfigError(f"--pacs {self.target}: C-FIND at {level} level got no answer (aborted or timed out: "
                                  f"does the PACS answer queries from AE title {self.calling_ae}?)")
            if code in (0xFF00, 0xFF01) and ident is not None:
                found.append(ident)
            elif code not in (0x0000, 0xFF00, 0xFF01):
                raise ConfigError(f"--pacs {self.target}: C-FIND at {level} level refused (status 0x{code:04X})")
        return found

    # -- query -----------------------------------------------------------------------------
    def find(self) -> list[Instance]:
        """Every radiograph instance the query selects, in study, series, instance order."""
        q = self.query
        mods = {m.upper() for m in q.modalities}
        assoc = self._associate()
        try:
            studies = self._find(assoc, "STUDY", {"StudyInstanceUID": "", "StudyDate": q.date_range(), "PatientID": "",
                                                  "AccessionNumber": "", "ModalitiesInStudy": "\\".join(sorted(mods))})
            out = []
            for st in studies:
                out.extend(self._study_instances(assoc, st, mods))
        finally:
            assoc.release()
        log.info("PACS %s: %d instance(s) in %d stud(y/ies) match", self.target, len(out), len(studies))
        return out

    def _study_instances(self, assoc: Any, st: Any, mods: set[str]) -> list[Instance]:
        from ..dicom.admission import RADIOGRAPH_SOP_CLASSES

        study = str(st.get("StudyInstanceUID", ""))
        date = str(st.get("StudyDate", "") or "")
        if not study or not _date_in(date, self.query.date_range()):
            return []
        meta = {k: v for k, v in {"patient_id": str(st.get("PatientID", "") or ""), "accession_number": str(st.get("AccessionNumber", "") or ""),
                                  "study_instance_uid": study, "film_date": date}.items() if v}
        body = (self.query.body_part or "").upper()
        out = []
        keys = {"StudyInstanceUID": study, "SeriesInstanceUID": "", "Modality": "", "BodyPartExamined": body}
        for se in self._find(assoc, "SERIES", keys):
            series, mod = str(se.get("SeriesInstanceUID", "")), str(se.get("Modality", "") or "").upper()
            part = str(se.get("BodyPartExamined", "") or "").upper()
            if not series or (mod and mod not in mods) or (body and part != body):
                continue
            for im in self._find(assoc, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                                                  "SOPInstanceUID": "", "SOPClassUID": ""}):
                sop, cls = str(im.get("SOPInstanceUID", "")), str(im.get("SOPClassUID", "") or "")
                if sop and (not cls or cls in RADIOGRAPH_SOP_CLASSES):
                    out.append(Instance(study, series, sop, dict(meta)))
        return out

    # -- fetch -----------------------------------------------------------------------------
    def fetch(self, instances: Iterable[Instance], before_batch: Callable[[], None] = lambda: None) -> Iterator[ScreenItem]:
        """C-GET ``instances`` in batches into the spool and yield each fetched file as an item.
        ``before_batch`` (the driver's flush) runs before each batch, so answered files are gone first."""
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._clear_leftovers()
        for batch in chunks(instances, self.batch):
            before_batch()
            got = self._get(batch)
            for inst in batch:
                path = got.get(inst.sop_uid)
                if path is None:
                    self.not_fetched.append(inst.sop_uid)
                    continue
                yield ScreenItem(str(path), key=inst.sop_uid, meta=inst.meta)

    def _get(self, batch: list[Instance]) -> dict[str, Path]:
        """One association, one C-GET per instance; {SOP Instance UID: spooled file}."""
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        from ..dicom.spool import valid_uid

        got: dict[str, Path] = {}

        def on_store(event: Any) -> int:
            uid = str(event.request.AffectedSOPInstanceUID)
            if not valid_uid(uid):  # the UID names the spool file: never a path from the network
                return 0xC000
            path = self.spool / f".{uid}.tmp"
            path.write_bytes(event.encoded_dataset())
            final = self.spool / f"{uid}.dcm"
            os.replace(path, final)
            got[uid] = final
            return 0x0000

        assoc = self._associate(on_store)
        try:
            for inst in batch:
                ds = Dataset()
                ds.QueryRetrieveLevel = "IMAGE"
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = inst.study_uid, inst.series_uid, inst.sop_uid
                for status, _ in _guarded(lambda: assoc.send_c_get(ds, GET), f"--pacs {self.target}: C-GET"):
                    code = getattr(status, "Status", None)
                    if code is not None and code not in (0x0000, 0xFF00, 0xFF01, 0xB000):
                        log.warning("C-GET of an instance of study %s: status 0x%04X", inst.study_uid[-12:], code)
        finally:
            assoc.release()
        return got

    def _clear_leftovers(self) -> None:
        """Files a killed run fetched (named by their SOP Instance UID): answered ones are done, the others
        are fetched again. Only files named as this module names them are touched."""
        from ..dicom.spool import valid_uid

        for f in self.spool.iterdir():
            if f.name.startswith(".") and f.name.endswith(".tmp"):
                uid = f.name[1:-4]
            elif f.name.endswith(".dcm"):
                uid = f.name[:-4]
            else:
                continue
            if f.is_file() and valid_uid(uid):
                f.unlink(missing_ok=True)

    def release(self, path: str) -> None:
        """Remove a spooled file once its answer is recorded (or it was skipped)."""
        p = Path(path)
        if p.parent == self.spool:
            p.unlink(missing_ok=True)


def _guarded(answers: Callable[[], Iterator[Any]], what: str) -> Iterator[Any]:
    """A DIMSE exchange's answers; a context the PACS did not accept is a one-line error, not a traceback."""
    try:
        yield from answers()
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"{what} not possible: {exc}") from exc


def _date_in(date: str, rng: str) -> bool:
    """Whether a DICOM date is in a DICOM date range (a PACS that ignored the range cannot widen the run)."""
    if not rng:
        return True
    lo, _, hi = rng.partition("-")
    if not date:
        return False
    return (not lo or date >= lo) and (not hi or date <= hi)
