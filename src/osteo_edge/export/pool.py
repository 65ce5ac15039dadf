"""Parity at scale: agreement of a candidate with its reference on a large pool of unlabelled images.

Top-1 agreement and |delta p| need no labels, so they can be measured on far more images than the
labelled test split (48 images, where 98% agreement means 48/48). The pool is every distinct
radiograph that was not used to train or calibrate (the ``train`` and ``val`` rows of the split,
and every copy or near-copy of them):

- ``--pool GROUPS_CSV`` (the ``groups.csv`` written by ``osteo-edge data audit``): one file per
  duplicate group that has no member among the split's train/val rows. This includes the test rows
  and the groups the split dropped (conflicting labels), which still count for agreement. With
  ``--pool-members all``, every readable file of those groups: each source's own encoding of the
  radiograph is a different input to the model (what a deployed model meets), but copies are not
  independent, so the interval is then a bootstrap over radiographs (groups), not Wilson over files.
- ``--pool DIR``: every image file under DIR, less byte copies (sha256) of train/val rows. Near-copies
  are only caught through a groups.csv.
- no pool: the split's rows outside train/val (the test rows), which is what the split knows.

Agreement comes with a 95% Wilson interval (:func:`osteo_edge.core.stats.wilson_interval`). Files
that cannot be decoded are left out and counted.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..artifact import sha256_file
from ..core.progress import Progress
from ..core.stats import percentile_interval, resample_indices, wilson_interval
from ..errors import ConfigError, OsteoEdgeError
from ..preprocess import PreprocessSpec, preprocess

log = logging.getLogger(__name__)

USED = ("train", "val")
POOL_MEMBERS = ("one", "all")  # subsets that trained or calibrated the models (temperature, thresholds, QAT epoch)


@dataclass(frozen=True)
class Pool:
    """The unlabelled images of a parity run, and how they were chosen."""

    paths: tuple[str, ...]
    source: str  # what the pool is, in words
    excluded: int = 0  # files left out: (copies of) training or calibration images
    groups: tuple[str, ...] = ()  # the duplicate group of each path (--pool-members all), else empty

    def describe(self) -> dict[str, Any]:
        d = {"source": self.source, "n_files": len(self.paths), "excluded_as_used": self.excluded}
        if self.groups:
            d["n_radiographs"] = len(set(self.groups))
        return d

    def group_of(self) -> dict[str, str]:
        return dict(zip(self.paths, self.groups))


def _used_sha256(table: Any) -> set[str]:
    """Content hashes of the train/val rows (hashed here when the split file did not record them)."""
    shas = {r.sha256 or (sha256_file(r.path) if Path(r.path).is_file() else "") for r in table.rows if r.split in USED}
    return shas - {""}


def pool_from_split(table: Any) -> Pool:
    rows = [r for r in table.rows if r.split not in USED]
    return Pool(tuple(r.path for r in rows), f"the split's rows outside {'/'.join(USED)} ({len(rows)})")


def pool_from_groups(groups_csv: Path, table: Any, members: str = "one") -> Pool:
    """One readable file (``members="all"``: every readable file) per duplicate group of an audit's
    groups.csv that no train/val row belongs to."""
    if members not in POOL_MEMBERS:
        raise ConfigError(f"pool members must be one of {', '.join(POOL_MEMBERS)}, got {members!r}")
    used = _used_sha256(table)
    used_paths = {os.path.realpath(r.path) for r in table.rows if r.split in USED}
    groups: dict[str, list[dict[str, str]]] = {}
    with open(groups_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"path", "group", "sha256"} <= set(reader.fieldnames or ()):
            raise ConfigError(f"{groups_csv}: not an audit groups.csv (needs columns path, group, sha256)")
        for row in reader:
            groups.setdefault(row["group"], []).append(row)
    keep, excluded = [], 0
    for gid, rows in groups.items():
        if any(m["sha256"] in used or os.path.realpath(m["path"]) in used_paths for m in rows):
            excluded += len(rows)
            continue
        readable = sorted((m for m in rows if str(m.get("readable", "True")).lower() != "false"), key=lambda m: m["path"])
        keep += [(m["path"], gid) for m in (readable if members == "all" else readable[:1])]
    keep.sort()
    n_groups = len({g for _, g in keep})
    what = "every file" if members == "all" else "one file"
    return Pool(tuple(p for p, _ in keep), f"{what} per duplicate group of {Path(groups_csv).name} with no member in "
                f"{'/'.join(USED)} ({len(keep)} files of {n_groups} of {len(groups)} groups)", excluded,
                tuple(g for _, g in keep) if members == "all" else ())


def pool_from_dir(folder: Path, table: Any) -> Pool:
    """Every file under ``folder`` (as ``predict`` finds them) that is not a byte copy of a train/val row."""
    from ..edge_runtime import expand_inputs

    used = _used_sha256(table)
    keep, excluded = [], 0
    for f in expand_inputs([folder]):
        if sha256_file(f) in used:
            excluded += 1
        else:
            keep.append(str(f))
    return Pool(tuple(keep), f"files under {folder} less byte copies of {'/'.join(USED)} rows ({len(keep)})", excluded)


def resolve_pool(pool: str | os.PathLike | None, table: Any, members: str = "one") -> Pool:
    """The pool named by ``--pool`` (a folder or an audit groups.csv), else the split's test rows."""
    if pool is None:
        return pool_from_split(table)
    path = Path(pool)
    if path.is_dir():
        return pool_from_dir(path, table)
    if path.is_file() and path.suffix.lower() == ".csv":
        return pool_from_groups(path, table, members)
    raise ConfigError(f"--pool {pool}: give a folder of images or an audit groups.csv")


def pool_inputs(paths: Sequence[str], spec: PreprocessSpec) -> tuple[np.ndarray, list[str], int]:
    """(batch, the paths that decoded, how many did not): every pool file through the shared preprocessing."""
    xs, ok, bad = [], [], 0
    for p in paths:
        try:
            xs.append(preprocess(p, spec))
            ok.append(p)
        except (OsteoEdgeError, OSError, ValueError) as exc:
            bad += 1
            log.debug("pool: %s left out (%s)", p, exc)
    x = np.stack(xs).astype(np.float32) if xs else np.zeros((0,), np.float32)
    return x, ok, bad


def pool_probabilities(run: Callable[[np.ndarray], np.ndarray], paths: Sequence[str], spec: PreprocessSpec, temperature: float,
                       strict: bool = False, chunk: int = 64, progress: Progress | None = None) -> tuple[np.ndarray, list[str], int]:
    """(calibrated probabilities, the paths that decoded, how many did not) of a model on the pool,
    ``chunk`` images at a time so that memory stays bounded. ``strict``: every file must decode (a
    candidate runs on the files that decoded for the reference)."""
    from ..core.stats import softmax

    probs, ok_paths, bad = [], [], 0
    for i in range(0, len(paths), chunk):
        x, ok, n_bad = pool_inputs(paths[i : i + chunk], spec)
        if n_bad and strict:
            raise OsteoEdgeError(f"{n_bad} pool file(s) decoded for the reference but not with this model's spec")
        bad += n_bad
        ok_paths.extend(ok)
        if ok:
            probs.append(softmax(run(x), temperature))
        if progress:
            progress("running the pool", min(i + chunk, len(paths)), len(paths))
    return (np.concatenate(probs, axis=0) if probs else np.zeros((0, 0))), ok_paths, bad


def pool_agreement(ref_probs: np.ndarray, cand_probs: np.ndarray, groups: Sequence[str] | None = None,
                   n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Top-1 agreement with its 95% interval, and |delta p|, on the pool. The interval is Wilson's over
    files, or, with ``groups`` (several files per radiograph), a percentile bootstrap over radiographs."""
    n = int(len(ref_probs))
    from .fidelity import dp_summary

    same = ref_probs.argmax(1) == cand_probs.argmax(1) if n else np.zeros(0, bool)
    agree = int(np.sum(same))
    out = {"n": n, "agree": agree, "agreement": agree / n if n else float("nan")}
    if groups is not None and n:
        k = len(set(groups))
        lo, hi, _ = percentile_interval([float(same[idx].mean()) for idx in resample_indices(n, n_boot, seed, groups)])
        out.update({"n_radiographs": k, "ci95": [lo, hi],
                    "ci_method": f"percentile bootstrap over {k} radiographs ({n_boot} resamples)"})
    else:
        lo, hi = wilson_interval(agree, n)
        out.update({"ci95": [lo, hi], "ci_method": "wilson"})
    s = dp_summary(ref_probs, cand_probs)
    out.update({k: s[k] for k in ("max_abs_dp", "mean_abs_dp", "p95_abs_dp")})
    return out


@dataclass
class Answers:
    """What one model says about each pool file: calibrated probabilities (every decodable file,
    gate or not) and the screening decision a user sees (gate, then the bundle's own thresholds)."""

    paths: list[str]
    probs: np.ndarray  # (n, classes)
    status: list[str]  # ok | refer | rejected
    low_bmd: list[bool | None]  # P(low BMD) >= the bundle's threshold; None when rejected or no threshold
    undecodable: int = 0


def pool_answers(bundle: Any, run: Callable[[np.ndarray], np.ndarray], paths: Sequence[str], strict: bool = False,
                 progress: Progress | None = None) -> Answers:
    """Every pool file through the runtime's path (decode, views, input gate, :func:`decide`) with
    ``bundle``'s spec, temperature, thresholds and gate, and the model ``run``. ``strict``: every file
    must decode (a candidate runs on the files that decoded for the reference)."""
    from types import SimpleNamespace

    from ..edge_runtime.classifier import EdgeClassifier, decide
    from ..edge_runtime.gate import Gate
    from ..preprocess import decode_for

    labels, thr = list(bundle.labels), dict(bundle.thresholds or {})
    # the runtime's classifier around any model function (a torch run too): its views, mean logits,
    # temperature and low-BMD probability, as `predict` computes them
    clf = EdgeClassifier(bundle, SimpleNamespace(run=run), Gate.from_record(bundle.gate), labels, bundle.spec,
                         bundle.temperature, thr)
    ok, probs, status, low, bad = [], [], [], [], 0
    for i, p in enumerate(paths):
        try:
            decoded = decode_for(p, clf.spec)
            prob = clf.image_probabilities(decoded)
        except (OsteoEdgeError, OSError, ValueError) as exc:
            if strict:
                raise OsteoEdgeError(f"{p}: decoded for the reference but not with this model's spec ({exc})") from exc
            bad += 1
            log.debug("pool: %s left out (%s)", p, exc)
            continue
        p_low = clf.low_bmd_probability(dict(zip(labels, map(float, prob))))
        if not clf.gate.check(decoded).ok:
            st, flag = "rejected", None
        else:
            top = int(np.argmax(prob))
            st, _, reason = decide(labels[top], float(prob[top]), p_low, thr)
            flag = None if p_low is None or thr.get("low_bmd") is None else "low_bmd" in (reason or "").split(",")
        ok.append(str(p))
        probs.append(prob)
        status.append(st)
        low.append(flag)
        if progress:
            progress("running the pool", i + 1, len(paths))
    arr = np.stack(probs).astype(np.float64) if probs else np.zeros((0, len(labels)))
    return Answers(ok, arr, status, low, bad)


def decision_parity(ref: Answers, cand: Answers, groups: Sequence[str] | None = None, n_boot: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Candidate vs reference on the same pool files: top-1 agreement, agreement of the screening
    status (ok / refer / rejected), of the low-BMD flag and of both (the decision), and the |delta p|
    distribution (mean, p95, max), each with a 95% percentile bootstrap interval over radiographs
    (``groups``; each file its own radiograph without)."""
    from .fidelity import dp_summary

    if ref.paths != cand.paths:
        raise OsteoEdgeError("candidate and reference answers do not cover the same pool files")
    n = len(ref.paths)
    st = np.array([a == b for a, b in zip(ref.status, cand.status)], bool)
    lb = np.array([a == b for a, b in zip(ref.low_bmd, cand.low_bmd)], bool)
    both = st & lb

    def figures(idx: np.ndarray) -> dict[str, float]:
        s = dp_summary(ref.probs[idx], cand.probs[idx])
        return {"agreement": s["agreement"], "status_agreement": float(st[idx].mean()),
                "low_bmd_agreement": float(lb[idx].mean()), "decision_agreement": float(both[idx].mean()),
                **{k: s[k] for k in ("mean_abs_dp", "p95_abs_dp", "max_abs_dp")}}

    if not n:
        return {"n": 0}
    point = figures(np.arange(n))
    draws: dict[str, list[float]] = {k: [] for k in point}
    for idx in resample_indices(n, n_boot, seed, list(groups) if groups is not None else None):
        for k, v in figures(idx).items():
            draws[k].append(v)
    k_groups = len(set(groups)) if groups is not None else n
    out: dict[str, Any] = {"n": n, "n_radiographs": k_groups, "flips": int(np.sum(ref.probs.argmax(1) != cand.probs.argmax(1))),
                           "decision_changes": int(n - both.sum()),
                           "ci_method": f"percentile bootstrap over {k_groups} radiographs ({n_boot} resamples)"}
    for k, v in point.items():
        lo, hi, _ = percentile_interval(draws[k])
        out[k] = {"value": v, "ci95": [lo, hi]}
    out["status_counts"] = {"reference": {s: ref.status.count(s) for s in ("ok", "refer", "rejected")},
                            "candidate": {s: cand.status.count(s) for s in ("ok", "refer", "rejected")}}
    return out
