"""What the demo does, without the UI: one image (prediction + heat map) or a batch (table + CSV).

Everything goes through :class:`osteo_edge.edge_runtime.EdgeClassifier`: the labels, the
preprocessing spec, the temperature and the thresholds come from its bundle, never from here.
Bad input never raises out of :meth:`DemoService.analyse` or :meth:`DemoService.batch`: it comes
back as a ``rejected`` prediction whose message says why.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..core.progress import Progress
from ..errors import ConfigError, OsteoEdgeError
from ..preprocess import decode_for, resize, to_gray
from .explain import DEFAULT_GRID, Explanation, occlusion_map, overlay

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # files per batch request
KEEP_VIEWS = 256  # result images kept in the work folder
SIDE_FILE_SUFFIXES = {".csv", ".json", ".txt", ".md", ".yaml", ".yml", ".py", ".xml", ".html", ".pdf"}


def release_memory() -> None:
    """Hand memory freed by a large image back to the operating system (glibc's ``malloc_trim``;
    a no-op elsewhere). Without it a long-running demo keeps its high-water mark."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            _TRIM = getattr(ctypes.CDLL(name), "malloc_trim", False) if name else False
        except OSError:
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def folder_images(files: Iterable[str | os.PathLike]) -> list[str]:
    """Files of an uploaded folder minus hidden files and obvious side files (notes, tables, reports),
    as ``osteo-edge predict`` skips them when it walks a folder. Everything else is an input
    (extension-less DICOM files are common) and gets an answer, a rejection included."""
    out = []
    for f in files:
        p = Path(os.fspath(f))
        if p.name.startswith(".") or p.suffix.lower() in SIDE_FILE_SUFFIXES:
            continue
        out.append(os.fspath(f))
    return out
STATUS_TEXT = {"ok": "ok", "refer": "refer for DEXA", "rejected": "rejected"}


@dataclass(frozen=True)
class SingleResult:
    """The answer for one image, ready for display."""

    prediction: Any  # osteo_edge.edge_runtime.Prediction
    view: np.ndarray | None  # model's view with the heat map, HxWx3 uint8 (None when rejected)
    explanation: Explanation | None
    total_ms: float

    @property
    def ok(self) -> bool:
        return self.prediction.status != "rejected"


def _display_name(path: str | os.PathLike) -> str:
    return Path(os.fspath(path)).name or str(path)


def _named(pred: Any, source: str | os.PathLike, name: str) -> Any:
    """The prediction under the uploaded file's own name: uploads live in a server temp folder
    whose path means nothing to the person (and need not be shown to them)."""
    full = os.fspath(source)
    return dataclasses.replace(pred, path=name, message=pred.message.replace(full, name))


class DemoService:
    """Wraps an EdgeClassifier for the app: serialises backend calls where the backend needs it."""

    def __init__(self, classifier: Any, grid: int = DEFAULT_GRID, max_batch: int = MAX_BATCH, workdir: str | os.PathLike | None = None):
        self.classifier = classifier
        self.grid = int(grid)
        self.max_batch = int(max_batch)
        self._workdir = Path(workdir) if workdir is not None else None
        # ONNX Runtime sessions may be run from several threads at once; a LiteRT interpreter may not.
        backend = getattr(getattr(classifier, "runner", None), "backend", None)
        self._lock: Any = contextlib.nullcontext() if backend == "onnxruntime" else threading.Lock()
        self._prune_lock = threading.Lock()
        self._views: collections.deque[Path] = collections.deque()

    # -- facts from the bundle --------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self.classifier.labels)

    @property
    def bundle(self) -> Any:
        return self.classifier.bundle

    def workdir(self, sub: str | None = None) -> Path:
        """Where result files go: the ``workdir`` given, else this process's private workspace
        (:mod:`osteo_edge.demo.workspace`: owner-only, swept, deleted when the demo stops)."""
        if self._workdir is None:
            from .workspace import active_workspace

            return active_workspace().folder(sub or "results")
        folder = self._workdir / sub if sub and sub != "results" else self._workdir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder

    # -- one image ---------------------------------------------------------------------------
    def analyse(self, source: str | os.PathLike, explain: bool = True) -> SingleResult:
        """Predict one file and, unless it was rejected, compute the occlusion heat map.

        The file is decoded once (a very large image reduced in the decoder, see
        :func:`osteo_edge.preprocess.decode_for`); the heat map works on the model-size input.
        """
        t0 = time.perf_counter()
        name = _display_name(source)
        spec = self.classifier.spec
        try:
            decoded = decode_for(source, spec)
        except (OsteoEdgeError, OSError, ValueError, MemoryError):
            decoded = None  # the classifier decodes again and answers with the reason
        decode_ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            if decoded is None:
                pred = _named(self.classifier.predict(source), source, name)
            else:
                pred = self.classifier.predict(decoded, name=name)
                pred = dataclasses.replace(pred, latency_ms=(pred.latency_ms or 0.0) + decode_ms)
        view, expl = None, None
        if pred.status != "rejected" and decoded is not None:
            gray = resize(to_gray(decoded), spec)
            if explain:
                x = self.classifier.input_for(decoded)
                target = self.labels.index(pred.label) if pred.label in self.labels else None
                with self._lock:
                    expl = occlusion_map(self.classifier.probabilities, x, spec, target=target, grid=self.grid)
            view = overlay(gray, expl.heat if expl is not None else None)
        large = decoded is not None and decoded.reduced > 1
        del decoded
        if large:
            release_memory()
        return SingleResult(pred, view, expl, (time.perf_counter() - t0) * 1000)

    def view_file(self, view: np.ndarray) -> Path:
        """Write a result image to a new PNG (atomically) and return its path.

        The app hands gradio a file rather than an array: gradio copies files into its cache
        atomically, but writes arrays there in place, which races when two people get the same
        picture at the same moment. Only the newest :data:`KEEP_VIEWS` files are kept here (gradio
        has its own copy by then).
        """
        from PIL import Image

        folder = self.workdir("views")
        path = folder / f"view-{uuid.uuid4().hex}.png"
        tmp = folder / f".{path.name}.tmp"
        # A throw-away display image: fast zlib level, no fsync; written to a temporary name and
        # renamed, so a reader never sees half a file. Owner-only like everything in the workspace.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                Image.fromarray(view).save(fh, format="PNG", compress_level=1)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._prune_lock:
            if not self._views:  # first write of this service: adopt what the folder holds, oldest first
                self._views.extend(sorted(folder.glob("view-*.png"), key=lambda p: p.stat().st_mtime if p.exists() else 0.0))
            else:
                self._views.append(path)
            while len(self._views) > KEEP_VIEWS:
                self._views.popleft().unlink(missing_ok=True)
        return path

    # -- many images -------------------------------------------------------------------------
    def batch(
        self,
        sources: Sequence[str | os.PathLike],
        progress: Progress | None = None,
    ) -> tuple[list[Any], Path]:
        """Predict every file (folders are walked); returns the predictions and a CSV file path."""
        from ..edge_runtime import expand_inputs
        from ..edge_runtime.report import predictions_csv

        files = expand_inputs(sources)
        if not files:
            raise ConfigError("no files to analyse; add radiographs (JPEG, PNG, TIFF or DICOM) or a folder of them")
        if len(files) > self.max_batch:
            raise ConfigError(f"{len(files)} files is over the batch limit of {self.max_batch}; split the batch")
        preds = []
        for i, f in enumerate(files):
            if progress is not None:
                progress(f"analysing {_display_name(f)}", i, len(files))
            preds.append(self._predict_safely(f))
        if progress is not None:
            progress("done", len(files), len(files))
        release_memory()
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = self.workdir("results") / f"osteo-edge-predictions-{stamp}-{len(preds)}.csv"
        predictions_csv(preds, self.labels, out)
        os.chmod(out, 0o600)
        return preds, out

    def _predict_safely(self, f: Path) -> Any:
        name = _display_name(f)
        try:
            with self._lock:
                return _named(self.classifier.predict(f), f, name)
        except OsteoEdgeError as exc:  # the runtime answers bad input itself; this is the last guard
            return self._rejected(name, str(exc))

    def _rejected(self, name: str, reason: str) -> Any:
        from ..edge_runtime import Prediction

        return Prediction(path=name, status="rejected", label=None, probabilities={}, message=f"rejected: {reason}", reason="error")

    def table(self, preds: Iterable[Any]) -> tuple[list[str], list[list[Any]]]:
        """Headers and rows for the results table (probabilities as percentages)."""
        headers = ["file", "status", "label", *[f"P({lab})" for lab in self.labels], "P(low BMD)", "latency ms", "message"]
        rows = []
        for p in preds:
            rows.append([
                p.path,
                STATUS_TEXT.get(p.status, p.status),
                p.label or "",
                *[f"{p.probabilities[lab]:.1%}" if lab in p.probabilities else "" for lab in self.labels],
                "" if p.low_bmd_probability is None else f"{p.low_bmd_probability:.1%}",
                "" if p.latency_ms is None else f"{p.latency_ms:.0f}",
                p.message,
            ])
        return headers, rows
