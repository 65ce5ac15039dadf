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
   held-out non-knee images by :func:`calibrate_gate`, and stored with the measured rates in the
   bundle manifest's ``gate`` field. A bundle without a ``gate`` field gets checks 1-4 only;
6. ``out_of_distribution`` (gates calibrated by :func:`calibrate_gate_crossfit`): a knee-vs-other
   logistic score of the same features (:class:`Discriminator`, fitted against spine radiographs,
   photographs and synthetic images) over its threshold. Check 5 is then a loose guard against
   images far from any radiograph, and this one tells a knee from another radiograph.

numpy + Pillow (through osteo_edge.preprocess) only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BundleError, ConfigError, InvalidImageError
from ..preprocess import DecodedImage, ImageSource, PreprocessSpec, decode_image, resize, to_gray

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

    @classmethod
    def fit(cls, feats: np.ndarray, k: int = 24) -> "OODModel":
        feats = np.asarray(feats, dtype=np.float64)
        n, d = feats.shape
        if n < 10:
            raise ConfigError(f"the out-of-distribution gate needs at least 10 images to fit, got {n}")
        k = int(min(k, d - 1, n - 1))
        mean = feats.mean(axis=0)
        _, s, vt = np.linalg.svd(feats - mean, full_matrices=False)
        eig = s**2 / max(n - 1, 1)
        noise = float(max(eig[k:].mean() if eig.size > k else eig[-1], 1e-8))
        return cls(mean=mean, components=vt[:k], variances=np.maximum(eig[:k], noise), noise=noise)

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

    @classmethod
    def fit(cls, knees: np.ndarray, others: np.ndarray, l2: float = 1e-2, steps: int = 3000, lr: float = 0.5) -> "Discriminator":
        if len(knees) < 10 or len(others) < 10:
            raise ConfigError(f"the knee/other discriminator needs at least 10 images of each, got {len(knees)} and {len(others)}")
        x = np.concatenate([knees, others]).astype(np.float64)
        y = np.r_[np.zeros(len(knees)), np.ones(len(others))]
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        cw = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
        w, b = np.zeros(z.shape[1]), 0.0
        for _ in range(steps):  # full-batch gradient descent: a few hundred images, deterministic
            g = (1 / (1 + np.exp(-(z @ w + b))) - y) * cw
            w -= lr * (z.T @ g / len(y) + l2 * w)
            b -= lr * float(g.mean())
        return cls(mean, scale, w, b)

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


# ------------------------------------------------------------------------------------------------
# calibration


def _rates(accepted: np.ndarray) -> dict[str, Any]:
    """Counts and rates of a boolean accepted-per-image array."""
    n, acc = int(accepted.size), int(np.sum(accepted))
    return {"n": n, "accepted": acc, "rejected": n - acc, "accept_rate": acc / n if n else None, "reject_rate": (n - acc) / n if n else None}


def choose_threshold(in_scores: np.ndarray, ood_scores: np.ndarray, min_accept: float,
                     in_sources: Sequence[str] | None = None) -> float:
    """Maximise accepted-knee + rejected-non-knee rate (Youden's J) subject to knee acceptance >= min_accept
    (within EVERY source when ``in_sources`` names the source of each knee score).

    The threshold is placed halfway between the chosen knee score and the next larger score.
    """
    if in_scores.size == 0:
        raise ConfigError("threshold calibration needs held-out in-distribution images")
    if not 0.5 <= min_accept <= 1.0:
        raise ConfigError(f"min_accept must be in [0.5, 1], got {min_accept}")
    src = np.asarray(in_sources if in_sources is not None else ["all"] * in_scores.size)
    parts = [in_scores[src == s] for s in np.unique(src)]
    cands = np.unique(np.concatenate([in_scores, ood_scores]))
    best, best_j = float(np.max(in_scores)), -np.inf
    for t in cands:
        if min(float(np.mean(p <= t)) for p in parts) < min_accept:
            continue
        acc = float(np.mean(in_scores <= t))
        rej = float(np.mean(ood_scores > t)) if ood_scores.size else 0.0
        j = acc + rej - 1
        if j > best_j + 1e-12:
            best, best_j = float(t), j
    above = cands[cands > best]
    return (best + float(above[0])) / 2 if above.size else best * 1.05


@dataclass
class _Scored:
    """Gate features of the images the rule checks let through, their sources, and what the rules refused."""

    feats: np.ndarray
    sources: np.ndarray
    rules: dict[str, int]


def _score_set(sources: Sequence[Any], names: Sequence[str] | None, bit_depth: str) -> _Scored:
    base = Gate()
    names = list(names) if names is not None else ["all"] * len(sources)
    feats, kept, rules = [], [], {"undecodable": 0}
    for s, name in zip(sources, names):
        try:
            dec = s if isinstance(s, DecodedImage) else decode_image(s, bit_depth)
        except InvalidImageError:
            rules["undecodable"] += 1
            continue
        r = base.check(dec)
        if not r.ok:  # images the rule checks already refuse never reach the score
            rules[r.code or "?"] = rules.get(r.code or "?", 0) + 1
            continue
        feats.append(image_features(dec))
        kept.append(name)
    return _Scored(np.stack(feats) if feats else np.zeros((0, 102)), np.asarray(kept), rules)


def _fit_best(fit: _Scored, cin: _Scored, cood: Mapping[str, _Scored], min_accept: float,
              components: Sequence[int]) -> tuple[OODModel, float, dict[int, float]]:
    """The OOD model (number of components by best Youden J on the calibration sets) and its threshold."""
    tried: dict[int, float] = {}
    best = None
    for k in sorted(set(int(c) for c in components)):
        m = OODModel.fit(fit.feats, k)
        ci = np.array([m.score(f) for f in cin.feats])
        all_o = np.concatenate([np.array([m.score(f) for f in o.feats]) for o in cood.values()]) if cood else np.zeros(0)
        t = choose_threshold(ci, all_o, min_accept, cin.sources)
        j = float(np.mean(ci <= t)) + (float(np.mean(all_o > t)) if all_o.size else 0.0) - 1
        tried[int(m.components.shape[0])] = round(j, 4)
        if best is None or j > best[0] + 1e-12:
            best = (j, m, t)
    assert best is not None
    return best[1], best[2], tried


def _gate_report(gate: Gate, knees: _Scored, others: Mapping[str, _Scored]) -> dict[str, Any]:
    """Acceptance of knees (pooled and per source) and rejection of each non-knee set by the gate's
    score checks (:meth:`Gate.score_check`)."""

    def passes(feats: np.ndarray) -> np.ndarray:
        return np.array([gate.score_check(f).ok for f in feats], dtype=bool)

    ki = passes(knees.feats)
    return {
        "in_distribution": {**_rates(ki), "refused_by_rules": knees.rules},
        "in_distribution_by_source": {str(s): _rates(ki[knees.sources == s]) for s in np.unique(knees.sources)} if ki.size else {},
        "out_of_distribution": {name: {**_rates(passes(o.feats)), "refused_by_rules": o.rules} for name, o in others.items()},
    }


def calibrate_gate(
    fit_in: Sequence[ImageSource | DecodedImage],
    calib_in: Sequence[ImageSource | DecodedImage],
    calib_ood: Mapping[str, Sequence[ImageSource | DecodedImage]],
    test_in: Sequence[ImageSource | DecodedImage] = (),
    test_ood: Mapping[str, Sequence[ImageSource | DecodedImage]] | None = None,
    *,
    min_accept: float = 0.99,
    components: Sequence[int] = (8, 16, 32, 48),
    protocol: str = "",
    bit_depth: str = "scale",
    calib_in_sources: Sequence[str] | None = None,
    test_in_sources: Sequence[str] | None = None,
) -> Gate:
    """Fit the out-of-distribution model on ``fit_in`` knee radiographs, choose its threshold on
    ``calib_in`` (held-out knees; with ``calib_in_sources``, ``min_accept`` holds within every source)
    and ``calib_ood`` (held-out non-knee images, by set name), and report rates, per source too, on the
    untouched ``test_in``/``test_ood`` sets. Returns a :class:`Gate` whose ``to_dict()`` goes into the
    manifest (see :func:`write_gate`)."""
    base = Gate()
    fit = _score_set(fit_in, None, bit_depth)
    cin = _score_set(calib_in, calib_in_sources, bit_depth)
    cood = {name: _score_set(src, None, bit_depth) for name, src in calib_ood.items()}
    model, thr, tried = _fit_best(fit, cin, cood, min_accept, components)
    calibration: dict[str, Any] = {
        "protocol": protocol,
        "min_accept": min_accept,
        "min_accept_applies_to": "every source" if calib_in_sources is not None else "all knees pooled",
        "components": int(model.components.shape[0]),
        "components_tried_youden_j": tried,
        "fit": {"n": int(fit.feats.shape[0]), "refused_by_rules": fit.rules},
    }
    gate = Gate(base.min_side, base.blank_std, base.colour_chroma,
                OODModel(model.mean, model.components, model.variances, model.noise, thr, calibration))
    calibration["calibration_sets"] = _gate_report(gate, cin, cood)
    _report_test_sets(gate, calibration, test_in, test_ood, test_in_sources, bit_depth)
    return gate


def _report_test_sets(gate: Gate, calibration: dict[str, Any], test_in: Sequence[Any], test_ood: Mapping[str, Sequence[Any]] | None,
                      test_in_sources: Sequence[str] | None, bit_depth: str) -> None:
    """``calibration["test_sets"]``: the gate's rates on the untouched test sets (when there are any)."""
    if len(test_in) or test_ood:
        tin = _score_set(test_in, test_in_sources, bit_depth)
        tood = {name: _score_set(src, None, bit_depth) for name, src in (test_ood or {}).items()}
        calibration["test_sets"] = _gate_report(gate, tin, tood)


PPCA_MARGIN = 1.1  # the cross-fitted gate's density threshold: every out-of-fold knee, plus 10%


def _crossfit(kin: _Scored, folds: np.ndarray, others: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold (density, knee-vs-other) scores of every knee: each fold scored by models fitted
    without it (the discriminator against all the calibration non-knee images)."""
    dens, other = np.empty(len(folds)), np.empty(len(folds))
    for f in np.unique(folds):
        keep = folds != f
        m, d = OODModel.fit(kin.feats[keep], k), Discriminator.fit(kin.feats[keep], others)
        dens[~keep] = [m.score(x) for x in kin.feats[~keep]]
        other[~keep] = [d.score(x) for x in kin.feats[~keep]]
    return dens, other


def _other_threshold(other: np.ndarray, dens_ok: np.ndarray, src: np.ndarray, min_accept: float) -> float:
    """The smallest knee-vs-other threshold with knee acceptance >= min_accept in every source
    (halfway to the next score)."""
    cands = np.unique(other)
    for i, t in enumerate(cands):
        if all(np.mean((other[src == s] <= t) & dens_ok[src == s]) >= min_accept for s in np.unique(src)):
            return float((t + cands[i + 1]) / 2) if i + 1 < cands.size else float(t) + 1.0
    raise ConfigError(f"no threshold accepts {min_accept:.0%} of every source's knees (the density guard refuses too many)")


def calibrate_gate_crossfit(
    knees: Sequence[ImageSource | DecodedImage],
    knee_sources: Sequence[str],
    knee_folds: Sequence[int],
    calib_ood: Mapping[str, Sequence[ImageSource | DecodedImage]],
    test_in: Sequence[ImageSource | DecodedImage] = (),
    test_ood: Mapping[str, Sequence[ImageSource | DecodedImage]] | None = None,
    *,
    min_accept: float = 0.99,
    components: int = 32,
    protocol: str = "",
    bit_depth: str = "scale",
    test_in_sources: Sequence[str] | None = None,
) -> Gate:
    """A two-part gate chosen on cross-fitted scores. Every knee of ``knees`` (grouped into
    ``knee_folds``) is scored by models fitted without its fold: a density model (threshold: every
    out-of-fold knee plus 10%, a guard against images far from any radiograph) and a knee-vs-other
    :class:`Discriminator` fitted against the ``calib_ood`` images (threshold: the smallest with
    ``min_accept`` of every source's knees accepted). The models shipped are refitted on all knees;
    ``test_in``/``test_ood`` (untouched) report the rates."""
    tags = [f"{s}\t{int(f)}" for s, f in zip(knee_sources, knee_folds)]
    kin = _score_set(knees, tags, bit_depth)
    src = np.array([t.split("\t")[0] for t in kin.sources])
    folds = np.array([int(t.split("\t")[1]) for t in kin.sources])
    kin = _Scored(kin.feats, src, kin.rules)
    cood = {name: _score_set(xs, None, bit_depth) for name, xs in calib_ood.items()}
    others = np.concatenate([o.feats for o in cood.values()])
    dens, other = _crossfit(kin, folds, others, components)
    t_dens = PPCA_MARGIN * float(dens.max())
    t_other = _other_threshold(other, dens <= t_dens, src, min_accept)
    ok = (dens <= t_dens) & (other <= t_other)
    model = OODModel.fit(kin.feats, components)
    disc = Discriminator.fit(kin.feats, others)
    disc = Discriminator(disc.mean, disc.scale, disc.weights, disc.bias, t_other)
    calibration: dict[str, Any] = {
        "protocol": protocol, "min_accept": min_accept, "min_accept_applies_to": "every source",
        "threshold_chosen_on": f"out-of-fold scores of {len(ok)} knee radiographs in {len(np.unique(folds))} folds",
        "components": int(model.components.shape[0]),
        "fit": {"n": int(kin.feats.shape[0]), "refused_by_rules": kin.rules,
                "discriminator_others": {n: int(o.feats.shape[0]) for n, o in cood.items()}},
        "calibration_sets": {"in_distribution": {**_rates(ok), "refused_by_rules": kin.rules},
                             "in_distribution_by_source": {str(s): _rates(ok[src == s]) for s in np.unique(src)},
                             "out_of_distribution": {}},
    }
    base = Gate()
    gate = Gate(base.min_side, base.blank_std, base.colour_chroma,
                OODModel(model.mean, model.components, model.variances, model.noise, t_dens, calibration), disc)
    _report_test_sets(gate, calibration, test_in, test_ood, test_in_sources, bit_depth)
    return gate


def write_gate(bundle_dir: Any, gate: Gate) -> Any:
    """Store ``gate`` in a bundle's manifest (``gate`` field) and reseal it; returns the Bundle."""
    from ..artifact import reseal

    return reseal(bundle_dir, step="gate calibration", gate=gate.to_dict())


