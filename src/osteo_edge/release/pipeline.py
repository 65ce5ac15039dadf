"""`osteo-edge release`: the whole recipe that built the shipped bundle, from a split and a recipe to a
sealed, signed, path-free bundle pair, resumable per step.

Steps (:func:`release_steps`; each skipped when its output exists and matches the step log, see
:mod:`.steps`):

1. ``train``: the fp32 run on the split's train rows (val rows select the epoch and calibrate T and
   the low-BMD threshold) -> ``OUT/runs/fp32``;
2. ``quantize``: NNCF QAT of that run (temperature and low-BMD threshold refitted on validation) ->
   ``OUT/runs/qat``; the recipe's ``quantize: null`` exports the fp32 run itself;
3. ``export-reference``: the float graph as an fp32 TFLite bundle (the reference the int8 file must be
   faithful to) -> ``--reference-dir`` (default ``OUT/reference``);
4. ``export-int8``: int8 TFLite through the faithful route (gray stem fold, the fewest worst layers
   kept float within the fidelity budget) -> ``--bundle-dir`` (default ``OUT/bundle``);
5. ``gate``: the input gate (cross-fitted by default) fitted on the evaluation split and written into
   both bundles (``OUT/gate/``);
6. ``parity``: the int8 bundle against the fp32 reference, torch-free, on the pool -> ``OUT/parity.json``;
7. ``per-source``: both bundles per source on the evaluation split's test radiographs, written into
   their manifests with the parity figures (int8) and the recipe's CV row (``cv_result``);
8. ``strip-paths``: the build machine's absolute paths out of both manifests;
9. ``sign``: both bundles signed with ``key``;
10. ``card``: the model card of the int8 bundle -> ``OUT/MODEL_CARD.md``;
11. ``verify``: both bundles verified against the trusted keys (always run).

Nothing is written outside ``OUT``, ``--bundle-dir`` and ``--reference-dir``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..artifact import atomic_write_json, atomic_write_text, build_machine_paths, load_bundle, sha256_file
from ..core.progress import Progress, no_progress
from ..errors import ConfigError
from .recipe import Recipe
from .steps import Outcome, Step, StepLog, run_steps


OWNED = ("runs", "bundle", "reference", "gate", "parity.json", "parity.png", "parity_explain", "per_source.json", "per_source.md",
         "per_source_reference.json", "per_source_reference.md", "MODEL_CARD.md", "steps.log")  # what a release writes in OUT
INT8_ONLY = ("max_p95_dp", "max_abs_dp", "max_float_ops", "gray_fold")  # export options the fp32 file ignores


@dataclass
class ReleasePaths:
    out: Path
    bundle: Path
    reference: Path

    @property
    def fp32_run(self) -> Path:
        return self.out / "runs" / "fp32"

    @property
    def qat_run(self) -> Path:
        return self.out / "runs" / "qat"

    @property
    def parity_json(self) -> Path:
        return self.out / "parity.json"

    @property
    def card(self) -> Path:
        return self.out / "MODEL_CARD.md"


@dataclass
class ReleaseResult:
    paths: ReleasePaths
    outcomes: list[Outcome]
    parity_passed: bool | None
    parity_failures: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def _rel(p: Path) -> str:
    """A path as a person in this working directory would type it (commands recorded in manifests)."""
    try:
        return os.path.relpath(p)
    except ValueError:  # another drive (Windows)
        return str(p)


def _fresh(folder: Path) -> None:
    """An output folder of a step that is about to run again: what is there is stale."""
    if folder.exists():
        shutil.rmtree(folder)


def _train(split: Path, recipe: Recipe, paths: ReleasePaths, progress: Progress) -> str:
    from ..train.config import resolve_config
    from ..train.engine import train

    cfg = resolve_config(None, {**recipe.train, "split": str(split)})
    resume = _same_config(paths.fp32_run, cfg)  # a run killed mid-way with this very config continues from its checkpoint
    if not resume:
        _fresh(paths.fp32_run)
    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.train.items())
    command = f"osteo-edge train --split {_rel(split)} --out {_rel(paths.fp32_run)} {opts}".strip()
    try:
        r = train(cfg, paths.fp32_run, resume=resume, progress=progress, command=command)
    except ConfigError:
        if not resume:
            raise
        _fresh(paths.fp32_run)  # nothing to resume (killed before its first checkpoint)
        r = train(cfg, paths.fp32_run, progress=progress, command=command)
    return f"best epoch {r.best_epoch} of {r.epochs_run}; val macro-F1 {r.val_metrics.get('macro_f1', float('nan')):.3f}"


def _same_config(run: Path, cfg: Any) -> bool:
    """Whether ``run`` holds a started training run with exactly the config ``cfg``."""
    from ..errors import OsteoEdgeError
    from ..train.config import TrainConfig, read_config_yaml

    if not (run / "config.yaml").is_file():
        return False
    try:
        return TrainConfig.from_dict(read_config_yaml(run / "config.yaml"), source=str(run / "config.yaml")) == cfg
    except OsteoEdgeError:
        return False


def _quantize(split: Path, recipe: Recipe, paths: ReleasePaths, progress: Progress) -> str:
    from ..compress.quantize import quantize_run

    q = dict(recipe.quantize or {})
    _fresh(paths.qat_run)
    opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in q.items())
    res = quantize_run(paths.fp32_run, split, paths.qat_run, progress=progress, **q,
                       command=f"osteo-edge quantize --int8 --model {_rel(paths.fp32_run)} --split {_rel(split)} --out {_rel(paths.qat_run)} {opts}".strip())
    final = res.val.get("baked_float") or res.val.get("int8_simulated") or {}
    return f"{res.method} in {res.seconds:.0f} s; val accuracy {final.get('accuracy', float('nan')):.3f}"


def _option(key: str, value: Any) -> str:
    """A recipe entry as the export option it stands for (a flag for a boolean)."""
    flag = "--" + key.replace("_", "-")
    if value is True:
        return flag
    if value is False:  # gray_fold has a --no- form; a false weights_only is simply not given
        return f"--no-{flag[2:]}" if key == "gray_fold" else ""
    return f"{flag} {value}"


def _export(parent: Path, out: Path, int8: bool, eval_split: Path, recipe: Recipe, progress: Progress) -> str:
    from ..export import export_model
    from ..export.fidelity import FidelityBudget

    e = dict(recipe.export)
    budget = FidelityBudget(**{k: e[k] for k in ("max_p95_dp", "max_abs_dp", "max_float_ops", "weights_only") if k in e})
    fmt = "tflite-int8" if int8 else "tflite"
    int8_only = ("max_p95_dp", "max_abs_dp", "max_float_ops", "weights_only", "gray_fold")
    words = [_option(k, v) for k, v in e.items() if int8 or k not in int8_only]
    command = (f"osteo-edge export --model {_rel(parent)} --format tflite{' --int8' if int8 else ''} --split {_rel(eval_split)} "
               f"--out {_rel(out)} {' '.join(w for w in words if w)}").strip()
    res = export_model(parent, fmt, out, split=eval_split, calib_size=int(e.get("calib_size", 128)), golden_size=int(e.get("golden", 8)),
                       threads=e.get("threads", 2), command=command, progress=progress, calibration=str(e.get("calibration", "split")),
                       budget=budget, fold_gray=bool(e.get("gray_fold", True)))
    return f"{fmt}: {res.size_bytes / 1e6:.2f} MB, golden max |dp| {res.golden['max_abs_dp']:.1e}"


def _gate(eval_split: Path, recipe: Recipe, paths: ReleasePaths) -> str:
    from .gate import calibrate_gate_from_split

    g = recipe.gate
    res = calibrate_gate_from_split(eval_split, bundles=[paths.reference, paths.bundle], crossfit=bool(g.get("crossfit", True)),
                                    non_knee=list(g.get("non_knee") or []), synthetic=int(g.get("synthetic", 120)),
                                    package_images=bool(g.get("package_images", True)), min_accept=float(g.get("min_accept", 0.99)),
                                    out=paths.out / "gate", command=f"osteo-edge release (gate step of {paths.out})")
    return f"threshold {res.report['threshold']:.3f}; written into both bundles"


def _parity(eval_split: Path, recipe: Recipe, paths: ReleasePaths) -> str:
    from ..export.parity import Gates, run_parity, write_parity

    p = dict(recipe.parity)
    gates = Gates(**{k: float(p[k]) for k in ("max_drop", "min_agreement", "min_decision_agreement", "max_p95_dp", "max_abs_dp") if k in p})
    explain = paths.out / "parity_explain" if p.get("explain") else None
    report = run_parity(str(paths.reference), [str(paths.bundle)], eval_split, subset=str(p.get("subset", "test")), gates=gates,
                        threads=p.get("threads", 2), pool=p.get("pool"), pool_members=str(p.get("pool_members", "one")), explain=explain)
    write_parity(report, paths.parity_json, paths.parity_json.with_suffix(".png"))
    if not report.passed and p.get("must_pass"):
        raise ConfigError(f"parity gate failed ({'; '.join(report.failures)}); see {paths.parity_json}")
    return "PASS" if report.passed else "FAIL: " + "; ".join(report.failures)


def _cv_row(recipe: Recipe) -> dict[str, Any] | None:
    if not recipe.cv_result:
        return None
    from .oof import read_scores, summary_row

    path = Path(recipe.cv_result)
    if not path.is_file():
        raise ConfigError(f"recipe cv_result {path}: no such file (write it with osteo-edge evaluate --cv)")
    res = read_scores(path)
    return {"lever": res.get("lever"), "command": res.get("command"), "protocol": res.get("protocol"), **summary_row(res)}


def _per_source(eval_split: Path, recipe: Recipe, paths: ReleasePaths) -> str:
    from .per_source import bundle_per_source, parity_metrics, write_release_metrics

    cv = _cv_row(recipe)
    parity = json.loads(paths.parity_json.read_text(encoding="utf-8"))
    lines = []
    for name, bundle, par in (("reference", paths.reference, None),
                              ("bundle", paths.bundle, parity_metrics(parity, paths.bundle, paths.parity_json.name))):
        res = bundle_per_source(bundle, eval_split, threads=int(recipe.parity.get("threads", 2)))
        stem = "per_source" if name == "bundle" else "per_source_reference"
        atomic_write_json(paths.out / f"{stem}.json", {k: v for k, v in res.items() if k != "markdown"})
        atomic_write_text(paths.out / f"{stem}.md", f"# {name} per source\n\n{res['report']['protocol']}\n\n"
                          f"Input gate: {res['gate_accepted']}/{res['n']} accepted.\n\n{res['markdown']}\n")
        write_release_metrics(bundle, res, parity=par, cv=cv)
        lines.append(f"{name} pooled accuracy {res['report']['pooled_accuracy']:.3f} (n={res['n']})")
    return "; ".join(lines)


def _strip(paths: ReleasePaths) -> str:
    from .portable import strip_build_paths

    removed = [len(strip_build_paths(b)) for b in (paths.reference, paths.bundle)]
    return f"{sum(removed)} absolute path(s) removed"


def _key_id(key: Path) -> str:
    """The key id of a private key (refused in one line when the file is not one)."""
    from ..artifact.signing import sign_seal

    return sign_seal("0" * 64, key).key_id


def _sign(paths: ReleasePaths, key: Path) -> str:
    from ..artifact import sign_bundle

    for b in (paths.reference, paths.bundle):
        sign_bundle(b, key)
    return f"signed with key id {_key_id(key)}"


def _signed_by(paths: ReleasePaths, key: Path) -> bool:
    want = _key_id(key)
    return all((s := load_bundle(b).signature) is not None and s.key_id == want for b in (paths.reference, paths.bundle))


def _card(paths: ReleasePaths) -> str:
    from ..demo.card import model_card_markdown

    atomic_write_text(paths.card, model_card_markdown(load_bundle(paths.bundle)) + "\n")
    return f"{paths.card.name} from the int8 bundle's manifest"


def _verify(paths: ReleasePaths, key: Path, trusted: Sequence[Path]) -> str:
    from ..artifact.signing import TrustStore

    trust = TrustStore.from_paths(trusted) if trusted else TrustStore(frozenset({_key_id(key)}), (str(key),))
    for b in (paths.reference, paths.bundle):
        bundle = load_bundle(b, trust=trust)
        bundle.verify_lineage()
        left = build_machine_paths(bundle.manifest)
        if left:
            raise ConfigError(f"{b}: build-machine paths remain in the manifest: {left}")
    return f"both bundles verify against {len(trust.keys)} trusted key(s)"


def _preflight(split: Path, eval_split: Path, recipe: Recipe) -> None:
    """What the later steps will need, refused in one line now rather than after hours of training."""
    from ..data.split import read_split
    from ..export.pool import POOL_MEMBERS
    from .gate import check_crossfit_folds, check_gate_rows

    read_split(split)
    table = read_split(eval_split)
    for subset in sorted({"test", str(recipe.parity.get("subset", "test"))}):  # per-source and parity read them
        if not table.subset(subset):
            raise ConfigError(f"--eval-split {eval_split}: no {subset} rows to measure the bundles on")
    if recipe.gate.get("crossfit", True):
        check_crossfit_folds(table)
    for folder in recipe.gate.get("non_knee") or []:
        if not Path(folder).is_dir():
            raise ConfigError(f"recipe gate.non_knee {folder}: no such folder")
    pool = recipe.parity.get("pool")
    if pool and not Path(pool).exists():
        raise ConfigError(f"recipe parity.pool {pool}: no such file or folder")
    members = str(recipe.parity.get("pool_members", "one"))
    if members not in POOL_MEMBERS:
        raise ConfigError(f"recipe parity.pool_members {members!r}; valid: {', '.join(POOL_MEMBERS)}")
    if recipe.cv_result and not Path(recipe.cv_result).is_file():
        raise ConfigError(f"recipe cv_result {recipe.cv_result}: no such file (write it with osteo-edge evaluate --cv)")
    if recipe.cv_result:
        from .oof import read_scores, summary_row

        try:
            summary_row(read_scores(recipe.cv_result))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"recipe cv_result {recipe.cv_result}: not a complete evaluate --cv scores file ({exc!r})") from exc
    check_gate_rows(table, bool(recipe.gate.get("crossfit", True)))  # enough knees to fit the gate


def _is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a sealed bundle's manifest (read, not verified)."""
    try:
        m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(m, dict) and "seal" in m and "model_file" in m


def _check_destinations(paths: ReleasePaths) -> None:
    """Refuse, before anything is written, folders the release would fill or replace but does not own: an
    existing ``--out`` that is not a release folder yet holds names the release writes (its ``runs/fp32``
    would be deleted and rebuilt), one inside a model bundle, and a ``--bundle-dir``/``--reference-dir``
    that holds something other than a bundle. Other files beside a release are left alone."""
    out = paths.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and not (out / "release.json").is_file():
        taken = sorted(n for n in OWNED if (out / n).exists())
        if taken:
            raise ConfigError(f"--out {out}: not a release folder (no release.json), yet it holds {', '.join(taken)}, which the "
                              "release would replace; give a new folder")
    inside = next((d for d in [out.resolve(), *out.resolve().parents] if _is_bundle(d)), None)
    if inside is not None:
        raise ConfigError(f"--out {out}: inside the model bundle {inside}; give a folder outside it")
    o, runs = out.resolve(), (out / "runs").resolve()
    for what, d, other in (("--bundle-dir", paths.bundle, paths.reference), ("--reference-dir", paths.reference, paths.bundle)):
        if d.exists() and (not d.is_dir() or (any(d.iterdir()) and not (d / "manifest.json").is_file())):
            raise ConfigError(f"{what} {d}: exists and is not a model bundle; give a new folder (it would be replaced)")
        r = d.resolve()  # a bundle folder is replaced whole: it must not hold --out, the runs or the other bundle
        if r == o or r in o.parents or r == runs or runs in r.parents or r in other.resolve().parents:
            raise ConfigError(f"{what} {d}: would hold --out, its runs or the other bundle (it is replaced whole); give a folder of its own")


def _file_digest(path: str | None) -> str | None:
    return sha256_file(path) if path and Path(path).is_file() else None


def release_steps(split: Path, eval_split: Path, recipe: Recipe, paths: ReleasePaths, key: Path, trusted: Sequence[Path],
                  progress: Progress) -> list[Step]:
    """The release's steps in order, each with the options and upstream steps its fingerprint covers."""
    both = (paths.reference, paths.bundle)
    data = {"split_sha256": sha256_file(split), "eval_split_sha256": sha256_file(eval_split)}
    parent = paths.qat_run if recipe.quantize is not None else paths.fp32_run
    steps = [Step("train", [paths.fp32_run], lambda: _train(split, recipe, paths, progress),
                  {"train": recipe.train, "split_sha256": data["split_sha256"]})]
    if recipe.quantize is not None:
        steps.append(Step("quantize", [paths.qat_run], lambda: _quantize(split, recipe, paths, progress),
                          {"quantize": recipe.quantize, "split_sha256": data["split_sha256"]}, ("train",)))
    up = (steps[-1].name,)
    steps += [
        Step("export-reference", [paths.reference], lambda: _export(parent, paths.reference, False, eval_split, recipe, progress),
             {"export": {k: v for k, v in recipe.export.items() if k not in INT8_ONLY}, **data}, up),
        Step("export-int8", [paths.bundle], lambda: _export(parent, paths.bundle, True, eval_split, recipe, progress),
             {"export": recipe.export, **data}, up),
        Step("gate", list(both), lambda: _gate(eval_split, recipe, paths), {"gate": recipe.gate, **data},
             ("export-reference", "export-int8")),
        Step("parity", [paths.parity_json], lambda: _parity(eval_split, recipe, paths), {"parity": recipe.parity, **data}, ("gate",)),
        Step("per-source", list(both), lambda: _per_source(eval_split, recipe, paths),
             {"cv_result": recipe.cv_result, "cv_result_sha256": _file_digest(recipe.cv_result), **data}, ("gate", "parity")),
        Step("strip-paths", list(both), lambda: _strip(paths), {}, ("per-source",)),
        Step("sign", list(both), lambda: _sign(paths, key), {"key_id": _key_id(key)}, ("strip-paths",),
             done=lambda: _signed_by(paths, key)),
        Step("card", [paths.card], lambda: _card(paths), {}, ("sign",)),
    ]
    verify = Step("verify", [], lambda: _verify(paths, key, trusted), {}, ("sign",), done=lambda: False)  # always checked
    return [*steps, verify]


def release(
    split: str | os.PathLike,
    out: str | os.PathLike,
    key: str | os.PathLike,
    *,
    recipe: Recipe | None = None,
    eval_split: str | os.PathLike | None = None,
    bundle_dir: str | os.PathLike | None = None,
    reference_dir: str | os.PathLike | None = None,
    trusted_keys: Sequence[str | os.PathLike] = (),
    progress: Progress | None = None,
) -> ReleaseResult:
    """Build (or finish building) a release in ``out`` from ``split`` and ``recipe``; see the module docstring.

    ``eval_split`` (default ``split``): export calibration and golden rows, the gate, parity and the
    per-source figures (the shipped bundle: a ``--members per-source`` split of the same seed as the
    training split). ``key``: the Ed25519 private key that signs both bundles; ``trusted_keys``: the
    public keys the final check trusts (default: the key's own public half)."""
    recipe = recipe or Recipe()
    split, key = Path(split), Path(key)
    eval_split = Path(eval_split) if eval_split is not None else split
    for what, p in (("--split", split), ("--eval-split", eval_split), ("--key", key)):
        if not p.is_file():
            raise ConfigError(f"{what} {p}: no such file")
    signer = _key_id(key)  # a wrong key file is refused before hours of training
    if trusted_keys:  # so is a trust list the final check would refuse the release's own signature against
        from ..artifact.signing import TrustStore

        if signer not in TrustStore.from_paths([Path(t) for t in trusted_keys]).keys:
            raise ConfigError(f"--trusted-key: the signing key {signer} ({key}) is not among them; the final check would refuse both bundles")
    out = Path(out)
    paths = ReleasePaths(out, Path(bundle_dir) if bundle_dir else out / "bundle", Path(reference_dir) if reference_dir else out / "reference")
    if paths.bundle.resolve() == paths.reference.resolve():
        raise ConfigError("--bundle-dir and --reference-dir must be two different folders")
    _check_destinations(paths)
    _preflight(split, eval_split, recipe)
    step_log = StepLog(out)
    step_log.meta = {"recipe": recipe.to_dict(), "split": str(split), "eval_split": str(eval_split),
                     "bundle": str(paths.bundle), "reference": str(paths.reference)}
    step_log.save()
    outcomes = run_steps(release_steps(split, eval_split, recipe, paths, key, [Path(t) for t in trusted_keys], progress or no_progress),
                         step_log)
    parity = json.loads(paths.parity_json.read_text(encoding="utf-8"))
    files = {"release.json": step_log.path, "steps.log": step_log.text, "parity.json": paths.parity_json, "MODEL_CARD.md": paths.card}
    return ReleaseResult(paths, outcomes, bool(parity.get("passed")), list(parity.get("failures") or []), files)
