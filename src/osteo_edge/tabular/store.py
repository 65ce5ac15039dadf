"""The tabular run directory: fitted models, their input schema, checksums, and prediction.

Layout of a run (``TRUN``)::

    tabular.json            manifest: schema, labels, models, metrics + CIs, protocol, leakage
                            report, data checksum, command, versions, sha256 of every file;
                            sealed like a model bundle's manifest (an edit to it is refused)
    models/<name>.skops     one fitted pipeline per model (skops format, not pickle)
    oof_predictions.csv     out-of-fold probabilities (row_index (0-based data row), id, fold, model, label, pred, p_<label>)
    metrics.csv, importance.csv, leakage.csv, roc.png, importance.png, report.md

Trust model. A pickle (or joblib) file runs arbitrary code when loaded, so models are stored
with skops.io, and :func:`load_model` refuses any file that contains a type outside
:data:`TRUSTED_TYPES` (the exact scikit-learn / imbalanced-learn / XGBoost classes our pipelines
are made of, beyond those skops trusts by default). Before any model file is read, every file of
the run is checked against the sha256 in ``tabular.json``: that catches corruption and edits of
one file, not a deliberate replacement of the whole directory, so load runs from people you trust.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..artifact import DISCLAIMER, atomic_write_json, atomic_write_text, hash_files, seal_digest, verify_files, write_dir_atomically
from ..artifact.manifest import SEAL_ALGORITHM, plain_manifest
from ..core.csvsafe import safe_frame
from ..errors import BundleError, ConfigError, require
from .table import TableSchema

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

RUN_MANIFEST = "tabular.json"
RUN_KIND = "osteo-edge-tabular-run"
RUN_VERSION = 2  # 2: sealed like a model bundle (version 1 runs still load, with a warning)
READABLE_RUN_VERSIONS = (1, 2)
SHORT_NOTE = "screening-aid risk estimate, not a diagnosis; refer for DEXA when at risk"

# Types a saved pipeline may contain beyond skops' defaults. Anything else is refused on load.
TRUSTED_TYPES = frozenset({
    "imblearn.pipeline.Pipeline",
    "imblearn.over_sampling._smote.base.SMOTE",
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
})


def save_model(pipeline: Any, path: Path) -> Path:
    sio = require("skops.io", "tabular")
    from ..artifact import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sio.dump(pipeline, tmp)
    untrusted = set(sio.get_untrusted_types(file=path)) - TRUSTED_TYPES
    if untrusted:  # our own pipelines must round-trip: a new library version may add a type
        raise BundleError(f"{path}: the fitted model contains types not in TRUSTED_TYPES: {sorted(untrusted)}")
    return path


def load_model(path: Path) -> Any:
    """Load a skops model file, refusing any type outside the allowlist (one line naming them)."""
    sio = require("skops.io", "tabular")
    try:
        untrusted = set(sio.get_untrusted_types(file=path))
    except Exception as exc:  # skops raises assorted errors on a bad archive
        raise BundleError(f"{path}: not a readable skops model file ({type(exc).__name__}: {exc})") from exc
    refused = sorted(untrusted - TRUSTED_TYPES)
    if refused:
        raise BundleError(f"{path}: refusing to load a model with untrusted types {refused}; trusted: {sorted(TRUSTED_TYPES)}")
    try:
        return sio.load(path, trusted=sorted(untrusted))
    except Exception as exc:
        raise BundleError(f"{path}: could not load the model ({type(exc).__name__}: {exc})") from exc


def _read_manifest(root: Path) -> dict[str, Any]:
    from ..artifact.manifest import read_json_manifest

    return read_json_manifest(root, RUN_MANIFEST, "tabular run", "; train one with 'osteo-edge tabular train'")


def _verify(root: Path, files: Any) -> None:
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{root}: {RUN_MANIFEST} lists no files")
    verify_files(root, files, noun="run")


def write_run(dest: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Build a run in a temporary sibling directory, add the manifest with checksums, move it into place.

    ``build(tmpdir)`` writes the files and returns the manifest fields.
    """
    dest = Path(dest)
    if dest.exists() and not (dest / RUN_MANIFEST).is_file() and any(dest.iterdir()):
        raise ConfigError(f"{dest}: exists and is not a tabular run; choose another --out")

    def _build(tmp: Path) -> None:
        fields = build(tmp)
        manifest = {
            "kind": RUN_KIND,
            "manifest_version": RUN_VERSION,
            "intended_use": DISCLAIMER,
            **fields,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": hash_files(tmp, RUN_MANIFEST),
        }
        manifest = plain_manifest(manifest)
        manifest["seal"] = {"algorithm": SEAL_ALGORITHM, "digest": seal_digest(manifest)}
        atomic_write_json(tmp / RUN_MANIFEST, manifest)

    return write_dir_atomically(dest, _build, load_run)


def _check_seal(root: Path, manifest: dict[str, Any]) -> None:
    """The seal covers every field of tabular.json (schema, labels, models, metrics, files' sha256):
    an edited label list or metric is refused like a changed model file, as for a model bundle."""
    if manifest["manifest_version"] == 1:
        log.warning("%s: version-1 tabular run: its manifest is not sealed, so edits to it cannot be detected; "
                    "train it again to seal it", root)
        return
    s = manifest.get("seal")
    if not isinstance(s, dict) or s.get("algorithm") != SEAL_ALGORITHM or not isinstance(s.get("digest"), str):
        raise BundleError(f"{root}: {RUN_MANIFEST} has no valid seal; the run is incomplete or was tampered with")
    if seal_digest(manifest) != s["digest"]:
        raise BundleError(f"{root}: {RUN_MANIFEST} was edited after the run was written (seal mismatch); train it again")


@dataclass
class TabularRun:
    path: Path
    manifest: dict[str, Any]

    @property
    def schema(self) -> TableSchema:
        return TableSchema.from_dict(self.manifest["schema"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["schema"]["labels"])

    @property
    def model_names(self) -> list[str]:
        return list(self.manifest["models"])

    @property
    def selected(self) -> str:
        return str(self.manifest["selected"])

    def resolve_model(self, name: str | None) -> str:
        name = name or self.selected
        if name not in self.manifest["models"]:
            raise ConfigError(f"unknown model {name!r} in {self.path}; valid: {', '.join(self.model_names)}")
        return name

    def model(self, name: str | None = None) -> Any:
        name = self.resolve_model(name)
        return load_model(self.path / self.manifest["models"][name]["file"])

    def oof(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.read_csv(self.path / "oof_predictions.csv", dtype={"id": "object"})


def load_run(path: str | os.PathLike, verify: bool = True) -> TabularRun:
    path = Path(path)
    manifest = _read_manifest(path)
    for key in ("kind", "manifest_version", "schema", "models", "selected", "files"):
        if key not in manifest:
            raise BundleError(f"{path}: incomplete {RUN_MANIFEST}, missing {key!r}")
    if manifest["kind"] != RUN_KIND:
        raise BundleError(f"{path}: kind {manifest['kind']!r} is not {RUN_KIND!r} (is this an image model bundle?)")
    if manifest["manifest_version"] not in READABLE_RUN_VERSIONS:
        raise BundleError(f"{path}: tabular run version {manifest['manifest_version']!r} is not supported "
                          f"(this osteo-edge reads {', '.join(map(str, READABLE_RUN_VERSIONS))})")
    try:
        TableSchema.from_dict(manifest["schema"])
    except Exception as exc:
        raise BundleError(f"{path}: invalid schema in {RUN_MANIFEST} ({exc})") from exc
    if verify:
        _check_seal(path, manifest)
        _verify(path, manifest["files"])
    return TabularRun(path, manifest)


def predict_frame(run: TabularRun, df: "pd.DataFrame", model: str | None = None, source: str = "table") -> "pd.DataFrame":
    """Risk estimates for every row of ``df``: id (if the run has one), pred, p_<label>, note."""
    import pandas as pd

    name = run.resolve_model(model)
    X = run.schema.check(df, source=source)
    pipe = run.model(name)
    proba = np.asarray(pipe.predict_proba(X), dtype="float64")
    labels = run.labels
    out = pd.DataFrame(index=df.index)
    sid = run.schema.id_column
    if sid and sid in df.columns:
        out["id"] = df[sid].astype("object")
    out["row"] = np.arange(1, len(df) + 1)  # 1-based data row of the input CSV
    out["model"] = name
    out["pred"] = [labels[i] for i in proba.argmax(axis=1)]
    for k, lab in enumerate(labels):
        out[f"p_{lab}"] = proba[:, k]
    out["note"] = SHORT_NOTE
    return out.reset_index(drop=True)


def write_predictions_csv(frame: "pd.DataFrame", path: str | os.PathLike) -> Path:
    """Write :func:`predict_frame`'s risk estimates to a CSV (atomically), text cells that a
    spreadsheet would run as formulas neutralised (:mod:`osteo_edge.core.csvsafe`)."""
    return atomic_write_text(path, safe_frame(frame).to_csv(index=False, float_format="%.5f"))
