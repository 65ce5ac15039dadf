"""EdgeClassifier: a verified bundle + one backend + the input gate, torch-free.

Everything that shapes a prediction comes from the bundle manifest: labels (order = output index),
the preprocessing spec, the temperature (probabilities = softmax(logits / T)), the thresholds
(``min_confidence``: below it the status is ``refer``; ``low_bmd``: P(low BMD) = 1 - P(Normal) at or
above it is ``refer`` too, "low BMD suspected: refer for DEXA"; see :func:`decide`) and the input gate
(``gate``). A site bundle may carry a linear head on the model's embedding (``site.head``, from
``site calibrate --head``): its logits then replace the model's (:class:`LinearHead`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..artifact import Bundle, load_bundle
from ..artifact.signing import TrustStore
from ..core.stats import softmax
from ..errors import BundleError, ConfigError, InvalidImageError, first_line
from ..formats import get_format
from ..preprocess import DecodedImage, ImageSource, PreprocessSpec, decode_for, finalize, frames, resize, spec_locator, to_gray
from .backends import Runner, backend_for, open_backend
from .gate import Gate

log = logging.getLogger(__name__)

STATUSES = ("ok", "refer", "rejected")
SHORT_DISCLAIMER = "Screening aid, not a diagnosis."


def default_bundle_path() -> Path:
    """The model bundle shipped inside the package (``osteo_edge/models/default``)."""
    return Path(__file__).resolve().parent.parent / "models" / "default"


@dataclass(frozen=True)
class Prediction:
    """One answered input. ``label``/``probabilities`` are empty when the input was rejected."""

    path: str
    status: str  # ok | refer | rejected
    label: str | None
    probabilities: dict[str, float]
    message: str
    latency_ms: float | None = None
    low_bmd_probability: float | None = None
    reason: str | None = None  # rejected: invalid_image, too_small, blank, colour, out_of_distribution; refer: uncertain, low_bmd
    ood_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> dict[str, Any]:
        """The answer as ``osteo-edge predict --json`` prints it (one home for that record)."""
        return {"path": self.path, "status": self.status, "label": self.label, "probabilities": self.probabilities,
                "message": self.message, "low_bmd_probability": self.low_bmd_probability, "reason": self.reason,
                "latency_ms": round(self.latency_ms or 0.0, 3)}


@dataclass(frozen=True)
class LinearHead:
    """A site's linear head on the model file's embedding output: logits = ((e - mean) / scale) @ weights + bias."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (dim, classes)
    bias: np.ndarray

    @classmethod
    def from_manifest(cls, manifest: Any, n_labels: int, runner: Runner, root: Path) -> "LinearHead | None":
        site = manifest.get("site") if hasattr(manifest, "get") else None
        rec = site.get("head") if hasattr(site, "get") else None
        if not rec:
            return None
        try:
            head = cls(*(np.asarray(rec[k], dtype=np.float64) for k in ("mean", "scale", "weights", "bias")))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{root}: the site head in the manifest is malformed ({exc})") from None
        dim = getattr(runner, "embedding_dim", None)
        if dim is None:
            raise BundleError(f"{root}: the bundle has a site head but its model file has no embedding output")
        if head.weights.shape != (dim, n_labels) or head.mean.shape != (dim,) or head.scale.shape != (dim,) or head.bias.shape != (n_labels,):
            raise BundleError(f"{root}: the site head's shapes do not fit the model's embedding ({dim}) and {n_labels} labels")
        return head

    def __call__(self, embedding: np.ndarray) -> np.ndarray:
        return (((np.asarray(embedding, dtype=np.float64) - self.mean) / self.scale) @ self.weights + self.bias).astype(np.float32)


@dataclass
class EdgeClassifier:
    bundle: Bundle
    runner: Runner
    gate: Gate
    labels: list[str] = field(default_factory=list)
    spec: PreprocessSpec = field(default_factory=PreprocessSpec)
    temperature: float = 1.0
    thresholds: dict[str, float] = field(default_factory=dict)
    load_ms: float = 0.0
    head: LinearHead | None = None

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike | None = None, threads: int | None = None,
             trust: TrustStore | None = None) -> "EdgeClassifier":
        """Verify a bundle (seal, checksums, signature, trust) and open its model.

        ``bundle_dir=None`` = the shipped default bundle, which must be signed by a key shipped with
        the package. ``trust=None`` reads trusted keys from ``OSTEO_EDGE_TRUSTED_KEYS``; when any are
        configured, an unsigned bundle or one signed by another key is refused.
        """
        t0 = time.perf_counter()
        bundle = open_bundle(bundle_dir, trust)
        root = bundle.path
        fmt = get_format(bundle.format)
        backend_for(fmt.name)  # one-line error for torch or unknown formats
        spec = bundle.spec
        if spec.layout != fmt.layout:
            raise BundleError(f"{root}: spec layout {spec.layout} does not match format {fmt.name} ({fmt.layout})")
        if spec.resize == "knee_locator":  # the learned knee locator it was trained with, checked once here
            try:
                spec_locator(spec)
            except ConfigError as exc:
                raise BundleError(f"{root}: {exc}") from None
        runner = open_backend(bundle.model_path, fmt.name, threads)
        gate = Gate.from_record(bundle.gate)
        head = LinearHead.from_manifest(bundle.manifest, len(bundle.labels), runner, root)
        self = cls(bundle, runner, gate, bundle.labels, spec, bundle.temperature, bundle.thresholds, head=head)
        probe = self.logits(np.zeros((1, *spec.input_shape[1:]), dtype=np.float32))
        if probe.shape != (1, len(self.labels)):
            raise BundleError(f"{root}: model outputs {probe.shape[1:]} values, the manifest lists {len(self.labels)} labels")
        self.load_ms = (time.perf_counter() - t0) * 1000
        if gate.ood is None:
            log.debug("%s: bundle has no calibrated out-of-distribution gate; only the rule checks apply", root)
        return self

    # -- arrays ----------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw logits (batch, classes) for a float32 batch in the spec layout (the site head's, when the bundle has one)."""
        if self.head is not None:
            return self.head(self.runner.run_with_embedding(x)[1])  # type: ignore[attr-defined]
        return self.runner.run(x)

    def model_outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits as :meth:`logits` gives them, the model file's embedding or None without an embedding output)``."""
        if getattr(self.runner, "embedding_dim", None) is None:
            return self.runner.run(x), None
        z, e = self.runner.run_with_embedding(x)  # type: ignore[attr-defined]
        return (self.head(e) if self.head is not None else z), e

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities softmax(logits / T), (batch, classes)."""
        return softmax(self.logits(x), self.temperature).astype(np.float32)

    def input_for(self, decoded: DecodedImage) -> np.ndarray:
        """Model input for one decoded image through the shared preprocessing (no batch dim; the
        first view when the framing takes several, see :meth:`inputs_for`)."""
        return finalize(resize(to_gray(decoded), self.spec), self.spec)

    def inputs_for(self, decoded: DecodedImage) -> np.ndarray:
        """Every view of one decoded image as a batch (one per knee for the ``knee`` framing)."""
        return np.stack([finalize(v, self.spec) for v in frames(to_gray(decoded), self.spec)])

    def image_probabilities(self, decoded: DecodedImage) -> np.ndarray:
        """Calibrated probabilities for one image: softmax of its views' mean logits over T."""
        z = self.logits(self.inputs_for(decoded)).mean(axis=0, keepdims=True)
        return softmax(z, self.temperature)[0].astype(np.float32)

    # -- files -----------------------------------------------------------------------------
    def low_bmd_probability(self, probs: dict[str, float]) -> float | None:
        """1 - P(negative class) (the manifest's ``negative_label``, e.g. Normal); None without one."""
        neg = self.bundle.negative_label
        if neg is None or neg not in probs:
            return None
        return float(1.0 - probs[neg])

    def predict(self, source: ImageSource | DecodedImage, name: str | None = None) -> Prediction:
        """Gate, preprocess, run and explain one input. Bad input gives status ``rejected``, never an exception."""
        t0 = time.perf_counter()
        path = name if name is not None else (str(source) if isinstance(source, (str, os.PathLike)) else "<image>")
        try:
            decoded = source if isinstance(source, DecodedImage) else decode_for(source, self.spec)
        except InvalidImageError as exc:
            return self._rejected(path, "invalid_image", _strip_name(str(exc), path), t0)
        except (OSError, ValueError, TypeError, EOFError, SyntaxError, MemoryError) as exc:
            # Last guard for a decoder error the preprocess module does not yet translate: the file
            # is still answered (rejected, with the error's type), never a traceback.
            log.debug("unexpected decoder error for %s", path, exc_info=True)
            return self._rejected(path, "invalid_image", f"unreadable image ({type(exc).__name__}: {first_line(exc)})", t0)
        verdict = self.gate.check(decoded)
        if not verdict.ok:
            return self._rejected(path, verdict.code, verdict.reason or "rejected by the input gate", t0, verdict.ood_score)
        p = self.image_probabilities(decoded)
        probs = {lab: float(v) for lab, v in zip(self.labels, p)}
        top = int(np.argmax(p))
        label = self.labels[top]
        low = self.low_bmd_probability(probs)
        status, message, reason = decide(label, float(p[top]), low, self.thresholds)
        return Prediction(
            path=path, status=status, label=label, probabilities=probs, message=message, reason=reason,
            latency_ms=(time.perf_counter() - t0) * 1000, low_bmd_probability=low, ood_score=verdict.ood_score,
        )

    def _rejected(self, path: str, code: str | None, reason: str, t0: float, score: float | None = None) -> Prediction:
        return Prediction(
            path=path, status="rejected", label=None, probabilities={},
            message=f"rejected: {reason}. {SHORT_DISCLAIMER}", latency_ms=(time.perf_counter() - t0) * 1000,
            reason=code, ood_score=score,
        )

    def predict_many(self, sources: Iterable[str | os.PathLike]) -> Iterator[Prediction]:
        for s in sources:
            yield self.predict(s)

    def info(self) -> dict[str, Any]:
        b = self.bundle
        sig = b.signature
        return {
            "bundle": str(self.bundle.path), "format": self.bundle.format, "backend": self.runner.backend,
            "backend_version": self.runner.version, "threads": self.runner.threads, "labels": self.labels,
            "temperature": self.temperature, "thresholds": self.thresholds, "input_size": self.spec.input_size,
            "gate": "rules + out-of-distribution score" if self.gate.ood is not None else "rules only",
            "provenance": b.provenance.to_dict(), "intended_use": b.intended_use,
            "seal": b.seal, "signed_by": sig.key_id if sig is not None else None,
        }


def decide(label: str, top_probability: float, low_bmd: float | None, thresholds: dict[str, float]) -> tuple[str, str, str | None]:
    """The one mapping from a (gated, classified) prediction to ``(status, sentence, reason)``.

    ``refer`` when the top probability is below ``thresholds.min_confidence`` (reason ``uncertain``)
    or P(low BMD) is at or above ``thresholds.low_bmd`` (reason ``low_bmd``; both: ``uncertain,low_bmd``);
    otherwise ``ok`` (a result, nothing to act on). ``rejected`` is decided earlier, by the gate.
    The status a script reads and the sentence a person reads always say the same thing.
    """
    why, reasons = [], []
    min_conf = thresholds.get("min_confidence")
    low_thr = thresholds.get("low_bmd")
    if min_conf is not None and top_probability < min_conf:
        reasons.append("uncertain")
        why.append(f"uncertain (top probability below {min_conf:.0%})")
    if low_bmd is not None and low_thr is not None and low_bmd >= low_thr:
        reasons.append("low_bmd")
        why.append(f"low BMD suspected (P={low_bmd:.0%} >= {low_thr:.0%})")
    head = f"{label} ({top_probability:.0%})"
    if not reasons:
        return "ok", f"{head}. {SHORT_DISCLAIMER}", None
    return "refer", f"{head}; {' and '.join(why)}: refer for DEXA. {SHORT_DISCLAIMER}", ",".join(reasons)


def open_bundle(bundle_dir: str | os.PathLike | None = None, trust: TrustStore | None = None) -> Bundle:
    """The verified bundle a runtime may use: ``None`` = the shipped default (signed by a package key)."""
    if bundle_dir is None:
        root = default_bundle_path()
        if not (root / "manifest.json").is_file():
            raise BundleError(f"{root}: no shipped model bundle in this install; pass --model BUNDLE_DIR")
        package = TrustStore.package()
        if not package.configured:
            raise BundleError(f"{root}: this install ships no public key to verify its default bundle")
        bundle = load_bundle(root, trust=package)  # the shipped bundle is always checked against the shipped keys
        (trust if trust is not None else TrustStore.from_env()).check(root, bundle.signature)  # and any policy on top
        return bundle
    return load_bundle(Path(bundle_dir), trust=trust if trust is not None else TrustStore.from_env())



def _strip_name(msg: str, path: str) -> str:
    """Decoder messages start with the file name; the prediction already carries it."""
    for prefix in (f"{path}: ", "<bytes>: "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


# ------------------------------------------------------------------------------------------------
# inputs


SIDE_FILE_SUFFIXES = frozenset({".csv", ".json", ".txt", ".md", ".yaml", ".yml", ".py"})


def scan_inputs(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """``(inputs, skipped)``: files as given; folders walked recursively (sorted).

    Inside folders every regular file is an input (extension-less DICOM files are common), except
    hidden files and obvious non-image side files (csv, json, txt, md, ...), which are returned as
    ``skipped`` so that a caller can count them. A path that does not exist is still an input, so
    that it is answered ``rejected`` (no such file).
    """
    out: list[Path] = []
    skipped: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if f.is_dir():
                    continue
                if any(part.startswith(".") for part in rel.parts) or f.suffix.lower() in SIDE_FILE_SUFFIXES:
                    skipped.append(f)
                    continue
                out.append(f)
        else:
            out.append(p)
    return out, skipped


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The inputs of :func:`scan_inputs` (hidden files and side files in folders left out)."""
    return scan_inputs(paths)[0]
