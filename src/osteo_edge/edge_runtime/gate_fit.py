"""Fitting the input gate: the out-of-distribution models, their thresholds and the measured rates.

Applying a fitted gate is :mod:`osteo_edge.edge_runtime.gate` (what runs on a clinic machine); this
module fits one from knee radiographs and non-knee images and writes it into a bundle:

- :func:`fit_ood` / :func:`fit_discriminator`: the density model (probabilistic PCA) and the
  knee-vs-other logistic score on the gate features;
- :func:`calibrate_gate`: the density model fitted on some knees, its threshold chosen on held-out
  knees and non-knee images (:func:`choose_threshold`);
- :func:`calibrate_gate_crossfit`: the two-part gate whose thresholds come from out-of-fold scores;
- :func:`write_gate`: the gate into a bundle's manifest, through a recorded re-seal.

numpy + Pillow only, like the runtime (no torch): a clinic could refit its own gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, InvalidImageError
from ..preprocess import DecodedImage, ImageSource, decode_image
from .gate import Discriminator, Gate, OODModel, image_features


def fit_ood(feats: np.ndarray, k: int = 24) -> OODModel:
    """The density model of the gate features ``feats`` (n, D): ``k`` principal components and the noise."""
    feats = np.asarray(feats, dtype=np.float64)
    n, d = feats.shape
    if n < 10:
        raise ConfigError(f"the out-of-distribution gate needs at least 10 images to fit, got {n}")
    k = int(min(k, d - 1, n - 1))
    mean = feats.mean(axis=0)
    _, s, vt = np.linalg.svd(feats - mean, full_matrices=False)
    eig = s**2 / max(n - 1, 1)
    noise = float(max(eig[k:].mean() if eig.size > k else eig[-1], 1e-8))
    return OODModel(mean=mean, components=vt[:k], variances=np.maximum(eig[:k], noise), noise=noise)


def fit_discriminator(knees: np.ndarray, others: np.ndarray, l2: float = 1e-2, steps: int = 3000, lr: float = 0.5) -> Discriminator:
    """Knee (0) vs other (1): a class-balanced, L2-regularised logistic regression on standardised features."""
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
    return Discriminator(mean, scale, w, b)


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
        m = fit_ood(fit.feats, k)
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
        m, d = fit_ood(kin.feats[keep], k), fit_discriminator(kin.feats[keep], others)
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
    model = fit_ood(kin.feats, components)
    disc = fit_discriminator(kin.feats, others)
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


