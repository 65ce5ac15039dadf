"""The input gate: refuse what is not a usable knee radiograph, with a one-line reason.

Order of checks (the first failure wins):

1. decoding (:func:`osteo_edge.preprocess.decode_image`): empty, truncated, not an image, a
   directory, over :data:`~osteo_edge.preprocess.MAX_FILE_BYTES` bytes or
   :data:`~osteo_edge.preprocess.MAX_PIXELS` pixels (decompression bombs are refused from the
   header, before any pixel is decoded), DICOM without pixel data or required tags;
2. ``too_small``: shorter side under ``min_side`` pixels (default :data:`MIN_SIDE`);
3. ``blank``: almost no contrast (standard deviation of the 64x64 thumbnail under ``blank_std``);
4. ``colour``: a colour image (mean distance of the channels from their mean over ``colour_chroma``);
   radiographs stored as RGB have identical channels and pass;
5. ``out_of_distribution``: an out-of-distribution score over ``threshold``. The score is a
   whitened distance (probabilistic PCA) of 102 model-independent image features (8x8 thumbnail,
   intensity histogram, gradient magnitude and orientation histograms, global statistics) from
   the knee radiographs it was fitted on. Its threshold is chosen on held-out knee radiographs and
   held-out non-knee images by :func:`~osteo_edge.edge_runtime.gate_fit.calibrate_gate`, and stored with the measured rates in the
   bundle manifest's ``gate`` field. A bundle without a ``gate`` field gets checks 1-4 only;
6. ``out_of_distribution`` (gates calibrated by :func:`~osteo_edge.edge_runtime.gate_fit.calibrate_gate_crossfit`): a knee-vs-other
   logistic score of the same features (:class:`Discriminator`, fitted against spine radiographs,
   photographs and synthetic images) over its threshold. Check 5 is then a loose guard against
   images far from any radiograph, and this one tells a knee from another radiograph.

This module applies a gate read from a manifest; fitting one (the models, the thresholds, the
measured rates) lives in :mod:`osteo_edge.edge_runtime.gate_fit`. numpy + Pillow (through
osteo_edge.preprocess) only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import BundleError
from ..preprocess import DecodedImage, PreprocessSpec, resize, to_gray

log = logging.getLogger(__name__)

GATE_VERSION = 1
FEATURES = "gray64-v1"
MIN_SIDE = 96  # pixels; the smallest knee radiograph in the shared data has a 128 px short side
BLANK_STD = 0.02  # on [0, 1] intensities of the 64x64 thumbnail
COLOUR_CHROMA = 0.03  # mean |channel - channel mean| on [0, 1]; grey stored as RGB is ~1e-4 at most
THUMB = 64
_THUMB_SPEC = PreprocessSpec(input_size=THUMB, resize="stretch", interpolation="box", grayscale="single", channels=1, mean=(0.0,), std=(1.0,))
_MAG_EDGES = np.array([0.0, 0.01, 0.02, 0.04, 0.07, 0.11, 0.16, 0.25, np.inf])


@dataclass(frozen=True)
class GateResult:
    ok: bool
    code: str | None = None  # too_small | blank | colour | out_of_distribution
    reason: str | None = None
    ood_score: float | None = None


# ------------------------------------------------------------------------------------------------
# features


def thumbnail(decoded: DecodedImage) -> np.ndarray:
    return resize(to_gray(decoded), _THUMB_SPEC)


def image_features(decoded: DecodedImage) -> np.ndarray:
    """102 model-independent features of a decoded image (float64)."""
    g = thumbnail(decoded).astype(np.float64)
    thumb = g.reshape(8, 8, 8, 8).mean(axis=(1, 3)).ravel()  # 64
    hist = np.histogram(np.clip(g, 0, 1), bins=16, range=(0.0, 1.0))[0] / g.size  # 16
    gy, gx = np.gradient(g)
    mag = np.hypot(gx, gy)
    mag_hist = np.histogram(mag, bins=_MAG_EDGES)[0] / mag.size  # 8
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    ori = np.histogram(ang, bins=8, range=(0.0, np.pi), weights=mag)[0]
    ori = ori / ori.sum() if ori.sum() > 0 else np.full(8, 1 / 8)  # 8
    w, h = decoded.size
    p5, p50, p95 = np.percentile(g, [5, 50, 95])
    glob = np.array([g.mean(), g.std(), math.log(w / h), p5, p50, p95])  # 6
    return np.concatenate([thumb, hist, mag_hist, ori, glob])


# ------------------------------------------------------------------------------------------------
# the out-of-distribution model (probabilistic PCA)

def _round(a: np.ndarray, digits: int = 7) -> list:
    return [float(f"{v:.{digits}g}") for v in np.asarray(a, dtype=np.float64).ravel()]


@dataclass(frozen=True)
class OODModel:
    """Whitened distance from the fitted knee radiographs: sum_k (z_k^2 / var_k) + residual^2 / noise, / D."""

    mean: np.ndarray
    components: np.ndarray  # (k, D)
    variances: np.ndarray  # (k,)
    noise: float
    threshold: float = math.inf
    calibration: dict[str, Any] = field(default_factory=dict)

    def score(self, features: np.ndarray) -> float:
        d = np.asarray(features, dtype=np.float64) - self.mean
        z = self.components @ d
        resid = float(d @ d - z @ z)
        return float((np.sum(z * z / self.variances) + max(resid, 0.0) / self.noise) / d.size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": FEATURES,
            "mean": _round(self.mean),
            "components": [_round(c) for c in self.components],
            "variances": _round(self.variances),
            "noise": float(f"{self.noise:.7g}"),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], threshold: float, calibration: Mapping[str, Any] | None = None) -> "OODModel":
        if d.get("features") != FEATURES:
            raise BundleError(f"gate features {d.get('features')!r} are not supported; valid: {FEATURES}")
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            comps = np.asarray(d["components"], dtype=np.float64)
            var = np.asarray(d["variances"], dtype=np.float64)
            noise = float(d["noise"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed out-of-distribution gate in manifest ({exc})") from exc
        if comps.ndim != 2 or comps.shape[1] != mean.size or var.size != comps.shape[0] or noise <= 0 or np.any(var <= 0):
            raise BundleError("malformed out-of-distribution gate in manifest (inconsistent shapes)")
        return cls(mean, comps, var, noise, float(threshold), dict(calibration or {}))


@dataclass(frozen=True)
class Discriminator:
    """Knee radiograph vs other image: a class-balanced, L2-regularised logistic regression on the
    standardised gate features, fitted against held-out non-knee images (spine radiographs, photos,
    synthetic images). ``score`` is the logit of "not a knee"; above ``threshold`` is refused."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float = math.inf

    def score(self, features: np.ndarray) -> float:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return float(z @ self.weights + self.bias)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "logistic", "features": FEATURES, "mean": _round(self.mean), "scale": _round(self.scale),
                "weights": _round(self.weights), "bias": float(f"{self.bias:.7g}"), "threshold": float(f"{self.threshold:.7g}")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Discriminator":
        if d.get("kind") != "logistic" or d.get("features") != FEATURES:
            raise BundleError(f"gate discriminator {d.get('kind')!r}/{d.get('features')!r} is not supported; valid: logistic/{FEATURES}")
        try:
            m, sc, w = (np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "weights"))
            b, t = float(d["bias"]), float(d["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed gate discriminator in manifest ({exc})") from exc
        if not (m.shape == sc.shape == w.shape) or np.any(sc <= 0):
            raise BundleError("malformed gate discriminator in manifest (inconsistent shapes)")
        return cls(m, sc, w, b, t)


# ------------------------------------------------------------------------------------------------
# the gate


@dataclass(frozen=True)
class Gate:
    min_side: int = MIN_SIDE
    blank_std: float = BLANK_STD
    colour_chroma: float = COLOUR_CHROMA
    ood: OODModel | None = None
    discriminator: Discriminator | None = None

    def check(self, decoded: DecodedImage) -> GateResult:
        w, h = decoded.size
        if min(w, h) < self.min_side:
            return GateResult(False, "too_small", f"image is {w}x{h}; a radiograph needs at least {self.min_side} px on its shorter side")
        g = thumbnail(decoded)
        if float(g.std()) < self.blank_std:
            return GateResult(False, "blank", f"image is blank or almost uniform (contrast {float(g.std()):.4f} < {self.blank_std})")
        if decoded.is_color:
            px = decoded.pixels
            chroma = float(np.abs(px - px.mean(axis=2, keepdims=True)).mean())
            if chroma > self.colour_chroma:
                return GateResult(False, "colour", f"colour image (chroma {chroma:.3f} > {self.colour_chroma}); radiographs are greyscale")
        if self.ood is None:
            return GateResult(True)
        return self.score_check(image_features(decoded))

    def score_check(self, feats: np.ndarray) -> GateResult:
        """Checks 5 and 6 on an image's gate features (a gate with an ``ood`` model)."""
        assert self.ood is not None
        score = self.ood.score(feats)
        if not score <= self.ood.threshold:
            return GateResult(
                False, "out_of_distribution",
                f"does not look like a knee radiograph (out-of-distribution score {score:.2f} > threshold {self.ood.threshold:.2f})",
                score,
            )
        if self.discriminator is not None:
            other = self.discriminator.score(feats)
            if not other <= self.discriminator.threshold:
                return GateResult(
                    False, "out_of_distribution",
                    f"does not look like a knee radiograph (knee-vs-other score {other:.2f} > threshold {self.discriminator.threshold:.2f})",
                    score,
                )
        return GateResult(True, ood_score=score)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": GATE_VERSION, "min_side": self.min_side, "blank_std": self.blank_std, "colour_chroma": self.colour_chroma}
        if self.ood is not None:
            d["ood"] = {**self.ood.to_dict(), "threshold": float(f"{self.ood.threshold:.7g}"), "calibration": self.ood.calibration}
        if self.discriminator is not None:
            d["discriminator"] = self.discriminator.to_dict()
        return d

    @classmethod
    def from_record(cls, d: Mapping[str, Any] | None) -> "Gate":
        """The gate from a bundle's ``gate`` record (:attr:`Bundle.gate`), or the default checks without one."""
        if d is None:
            return cls()
        if not isinstance(d, dict) or d.get("version") != GATE_VERSION:
            raise BundleError(f"manifest 'gate' must be an object with version {GATE_VERSION}")
        ood = None
        if d.get("ood") is not None:
            o = d["ood"]
            if not isinstance(o, dict) or "threshold" not in o:
                raise BundleError("manifest gate 'ood' needs a threshold")
            ood = OODModel.from_dict(o, float(o["threshold"]), o.get("calibration"))
        disc = None
        if d.get("discriminator") is not None:
            if not isinstance(d["discriminator"], dict):
                raise BundleError("manifest gate 'discriminator' must be an object")
            disc = Discriminator.from_dict(d["discriminator"])
        try:
            return cls(int(d.get("min_side", MIN_SIDE)), float(d.get("blank_std", BLANK_STD)), float(d.get("colour_chroma", COLOUR_CHROMA)), ood, disc)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"malformed gate in manifest ({exc})") from exc
