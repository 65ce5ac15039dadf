"""Typed records of a bundle manifest: every consumer reads these attributes, never guesses keys.

Each record is read in one place (``from_manifest``/``from_dict``) and written in one place
(``to_dict``). Unknown extra keys are kept in ``raw`` so that nothing a newer writer added is lost.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import BundleError

NORMAL_LABEL = "Normal"  # default negative class of version-1 manifests (they had no field for it)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _obj(d: Any, what: str) -> Mapping[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise BundleError(f"manifest field {what!r} must be an object, got {type(d).__name__}")
    return d


@dataclass(frozen=True)
class ArchRef:
    """What rebuilds the torch network: timm architecture name, class count and builder options."""

    name: str
    num_classes: int
    timm_name: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> "ArchRef | None":
        if d is None:
            return None
        d = _obj(d, "arch")
        if "name" not in d or "num_classes" not in d:
            raise BundleError("manifest has no 'arch' record (name, num_classes) to rebuild the model")
        opts = {k: v for k, v in d.items() if k not in ("name", "num_classes", "timm_name")}
        return cls(str(d["name"]), int(d["num_classes"]), d.get("timm_name"), opts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "timm_name": self.timm_name, **self.options}


@dataclass(frozen=True)
class ParentRef:
    """The bundle a bundle was made from: where it was (relative to the child) and its seal then."""

    path: str
    format: str | None = None
    seal: str | None = None  # the parent's manifest seal when the child was made (version 2)
    manifest_sha256: str | None = None  # sha256 of the parent's manifest file (version 1 record)
    model_sha256: str | None = None
    compression: Mapping[str, Any] | None = None
    pruning: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Any) -> "ParentRef | None":
        if d is None:
            return None
        if isinstance(d, str):  # very old records named only the path
            return cls(path=d)
        d = _obj(d, "provenance.parent")
        path = d.get("path") or d.get("run_dir")
        if not isinstance(path, str) or not path:
            return None
        return cls(path, d.get("format"), d.get("seal"), d.get("manifest_sha256"), d.get("model_sha256"),
                   d.get("compression"), d.get("pruning"))

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "format": self.format, "seal": self.seal, "manifest_sha256": self.manifest_sha256,
               "model_sha256": self.model_sha256, "compression": self.compression, "pruning": self.pruning}
        return {k: v for k, v in out.items() if v is not None}

    def resolve(self, child_dir: Path) -> Path:
        """The parent's directory: relative paths are relative to the child bundle."""
        p = Path(self.path)
        return p if p.is_absolute() else (Path(child_dir) / p)


def split_reference(split_csv: str | os.PathLike | Mapping[str, Any], sha256: str | None = None) -> dict[str, Any]:
    """A split file as a bundle that travels records it: its name and content hash, never the path of
    the machine that built the bundle (``{"name": "split.csv", "sha256": ...}``)."""
    if isinstance(split_csv, Mapping):
        return {"name": str(split_csv.get("name") or "split.csv"), "sha256": split_csv.get("sha256") or sha256}
    path = Path(split_csv)
    if sha256 is None and path.is_file():
        from .atomic import sha256_file

        sha256 = sha256_file(path)
    return {"name": path.name, "sha256": sha256}


@dataclass(frozen=True)
class Provenance:
    """How a bundle was made: the command, the split, the parent and the chain of commands before it."""

    command: str = ""
    parent: ParentRef | None = None
    parent_command: str = ""
    lineage: tuple[str, ...] = ()
    split_csv: str | Mapping[str, Any] | None = None  # a path (torch runs) or {"name", "sha256"} (runtime bundles)
    split_sha256: str | None = None
    fold: int = -1
    protocol: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> "Provenance":
        d = _obj(d, "provenance")
        fold = d.get("fold", -1)
        return cls(
            command=str(d.get("command") or ""), parent=ParentRef.from_dict(d.get("parent")),
            parent_command=str(d.get("parent_command") or ""), lineage=tuple(str(x) for x in d.get("lineage") or ()),
            split_csv=d.get("split_csv"), split_sha256=d.get("split_sha256"),
            fold=int(fold) if isinstance(fold, int) and not isinstance(fold, bool) else -1,
            protocol=d.get("protocol"), raw=dict(d),
        )

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.raw)
        out.update({"command": self.command, "parent_command": self.parent_command, "lineage": list(self.lineage)})
        if self.parent is not None:
            out["parent"] = self.parent.to_dict()
        for k in ("split_csv", "split_sha256", "protocol"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    def child(self, command: str | None, parent: ParentRef) -> "Provenance":
        """Provenance for a bundle made from the one this record describes."""
        earlier = list(self.lineage) or [c for c in [self.parent_command] if c]
        raw = dict(self.raw)
        return Provenance(command=command or "", parent=parent, parent_command=self.command,
                          lineage=tuple([*earlier, self.command]), split_csv=self.split_csv,
                          split_sha256=self.split_sha256, fold=self.fold, protocol=self.protocol, raw=raw)


@dataclass(frozen=True)
class VsParent:
    """Agreement of a compressed/exported model with its parent on the same rows."""

    agreement: float | None
    parent_accuracy: float | None
    max_abs_dp: float | None = None
    mean_abs_dp: float | None = None

    @classmethod
    def from_dict(cls, d: Any) -> "VsParent | None":
        if not isinstance(d, Mapping):
            return None
        return cls(_num(d.get("agreement")), _num(d.get("parent_accuracy")), _num(d.get("max_abs_dp")), _num(d.get("mean_abs_dp")))


@dataclass(frozen=True)
class SplitMetrics:
    """Metrics recorded for one split (``test``, ``val`` or ``subset@split``)."""

    accuracy: float | None
    macro_f1: float | None
    n: int | None
    protocol: str | None
    vs_parent: VsParent | None
    raw: Mapping[str, Any]

    @classmethod
    def from_dict(cls, d: Any) -> "SplitMetrics | None":
        if not isinstance(d, Mapping):
            return None

        def point(key: str) -> float | None:
            v = d.get(key)
            if isinstance(v, Mapping):  # {value, ci95} estimate
                v = v.get("value")
            if v is None and isinstance(d.get("headline"), Mapping):
                h = d["headline"].get(key)
                v = h.get("value") if isinstance(h, Mapping) else h
            return _num(v)

        n = d.get("n", d.get("n_images"))
        return cls(point("accuracy"), point("macro_f1"), int(n) if _num(n) is not None else None,
                   d.get("protocol"), VsParent.from_dict(d.get("vs_parent")), dict(d))


@dataclass(frozen=True)
class Metrics:
    """The manifest's ``metrics``: one :class:`SplitMetrics` per recorded split."""

    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> "Metrics":
        return cls(dict(_obj(d, "metrics")))

    def split(self, name: str) -> SplitMetrics | None:
        return SplitMetrics.from_dict(self.raw.get(name))

    @property
    def test(self) -> SplitMetrics | None:
        return self.split("test")

    def headline(self) -> tuple[str, float] | None:
        """(metric name, value) of the test split: macro-F1, else accuracy; else the validation's."""
        for name in ("test", "val"):
            s = self.split(name)
            if s is None:
                continue
            for key in ("macro_f1", "accuracy"):
                v = getattr(s, key)
                if v is not None and not math.isnan(v):
                    return f"{name}.{key}", v
        return None


@dataclass(frozen=True)
class Calibration:
    """Temperature and decision thresholds, and how they were fitted (``training.calibration``)."""

    temperature: float
    min_confidence: float | None
    low_bmd: float | None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def target_sensitivity(self) -> float:
        low = self.details.get("low_bmd") if isinstance(self.details, Mapping) else None
        v = _num(low.get("target_sensitivity")) if isinstance(low, Mapping) else None
        return 0.9 if v is None else v


@dataclass(frozen=True)
class Revision:
    """One re-seal of a sealed bundle: which step changed which fields and files, and the seal before."""

    revision: int
    step: str
    at: str
    fields: tuple[str, ...]
    files: tuple[str, ...]
    previous_seal: str | None

    @classmethod
    def from_dict(cls, d: Any) -> "Revision":
        d = _obj(d, "revisions[]")
        return cls(int(d.get("revision", 0)), str(d.get("step", "")), str(d.get("at", "")),
                   tuple(d.get("fields") or ()), tuple(d.get("files") or ()), d.get("previous_seal"))

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "step": self.step, "at": self.at, "fields": list(self.fields),
                "files": list(self.files), "previous_seal": self.previous_seal}


@dataclass(frozen=True)
class SignatureRecord:
    """An Ed25519 signature over the manifest seal, with the signer's public key."""

    algorithm: str
    key_id: str
    public_key: str  # base64 of the 32-byte raw Ed25519 public key
    value: str  # base64 signature

    @classmethod
    def from_dict(cls, d: Any) -> "SignatureRecord | None":
        if d is None:
            return None
        d = _obj(d, "signature")
        try:
            return cls(str(d["algorithm"]), str(d["key_id"]), str(d["public_key"]), str(d["value"]))
        except KeyError as exc:
            raise BundleError(f"manifest signature lacks {exc.args[0]!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "key_id": self.key_id, "public_key": self.public_key, "value": self.value}
