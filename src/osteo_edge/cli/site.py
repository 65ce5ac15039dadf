"""`osteo-edge site validate`, `site calibrate` and `site trust`: a clinic checks a bundle on its own
labelled films, refits it on them into a bundle signed with its own key, and sets its machine to
trust only the publisher and itself. Torch-free (the runtime install)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import _output as out
from ._common import TRUSTED_KEY_HELP, handle_errors, progress_enabled, trust_store, usage_error

site_app = typer.Typer(help="Validate a model bundle on a site's own labelled films, calibrate it to the site, and set the machine's trust.",
                       no_args_is_help=True)

REQUIRE_HELP = ("Acceptance criteria, NAME=VALUE pairs separated by commas, judged on the 95% interval: accuracy, macro_f1, sensitivity, specificity, auroc, "
                "gate_acceptance need their lower bound >= VALUE; ece, referral_rate their upper bound <= VALUE.")
Images = Annotated[Path, typer.Argument(help="Folder of the site's images; the labels file names files relative to it.", show_default=False)]
Labels = Annotated[Path, typer.Option("--labels", help="CSV with columns 'file' and 'label' (one of the bundle's labels) or 'tscore' "
                                      "(WHO classes: T >= -1 Normal, -2.5 < T < -1 Osteopenia, T <= -2.5 Osteoporosis); optional 'group' (e.g. patient). "
                                      "A bundle with one low-BMD label (e.g. Normal / LowBMD) takes Osteopenia and Osteoporosis as that label, saying so.")]


def _arg(p: object) -> str:
    """A path as recorded in a report or manifest: never the absolute path of this machine."""
    s = str(p)
    return Path(s).name if Path(s).is_absolute() else s


def _command(words: list[object]) -> str:
    return " ".join(shlex.quote(_arg(w)) for w in words if w is not None and w != "")


def _checked(require: str, min_per_class: int, bootstrap: int, threads: int | None, folds: int = 2) -> dict:
    """Option errors are usage errors (exit 2), found before any film is read."""
    from ..edge_runtime.site import parse_require
    from ..errors import ConfigError

    try:
        req = parse_require(require)
    except ConfigError as exc:
        raise usage_error(str(exc)) from None
    for name, value, least in (("--min-per-class", min_per_class, 2), ("--bootstrap", bootstrap, 0), ("--folds", folds, 2)):
        if value < least:
            raise usage_error(f"{name} must be at least {least}, got {value}")
    if threads is not None and threads < 1:
        raise usage_error(f"--threads must be at least 1, got {threads}")
    return req


def _progress():
    from ..core.progress import TerminalProgress

    return TerminalProgress("scoring", enabled=progress_enabled())


def _figures(report: dict, title: str) -> None:
    from ..core.stats import fmt_ci
    from ..edge_runtime.site.validate import METRICS

    crit = {c["metric"]: c for c in report["criteria"]}
    claims = report["claims"]["figures"]
    rows = []
    for name, (label, _, _) in METRICS.items():
        c = crit.get(name)
        rows.append([label, fmt_ci(report["metrics"].get(name)), fmt_ci(claims.get(name)) if name in claims else "-",
                     c["require"] if c else "", c["result"] if c else ""])
    out.table(title, [out.Col("figure"), out.Col("this site [95% CI]", right=True), out.Col("model card", right=True),
                      out.Col("requirement"), out.Col("result")], rows,
              caption=f"model card: {report['claims']['source']}")
    if report.get("label_mapping"):
        out.line(f"note: {report['label_mapping']['note']}")
    counts = ", ".join(f"{k} {v}" for k, v in report["counts"].items())
    out.line(f"{report['images']} images ({counts}); gate accepted {report['gate']['accepted']}, answers "
             + ", ".join(f"{k} {v}" for k, v in report["answers"].items()))
    out.line(f"sample size: {report['sample_size']['text']}")


@site_app.command("validate")
@handle_errors
def validate(
    images: Images,
    labels: Labels,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.md, report.json, reliability.png and roc.png.")],
    model: Annotated[Optional[Path], typer.Option("--model", help="Model bundle directory (default: the bundle shipped with the package).")] = None,
    require: Annotated[str, typer.Option("--require", help=REQUIRE_HELP)] = "sensitivity=0.85,auroc=0.75",
    min_per_class: Annotated[int, typer.Option("--min-per-class", help="Refuse fewer images than this on either side of the low-BMD question (Normal / the other labels).")] = 5,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap replicates for the 95% intervals.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the PNGs (needs matplotlib; skipped, saying so, without it).")] = True,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Inference threads (default: the backend's choice).")] = None,
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help=TRUSTED_KEY_HELP)] = None,
) -> None:
    """Check a model bundle on the site's own labelled films: figures with 95% intervals beside the
    model card's claims, and a verdict (pass / fail / insufficient) against the site's criteria.

    Refuses, with one line: unknown labels, files that cannot be read, fewer than --min-per-class
    images on either side of the low-BMD question. Exit 0 only when the verdict is pass; 1 when it is
    fail or insufficient (the reports are written either way) or on an error; 2 on a usage error. A screening aid, not a diagnosis.
    """
    from ..edge_runtime.site import validate_site

    req = _checked(require, min_per_class, bootstrap, threads)
    command = _command(["osteo-edge", "site", "validate", images, "--labels", labels, "--model" if model else None, model,
                        "--out", out_dir, "--require", require])
    with _progress() as progress:
        r = validate_site(images, labels, model, out=out_dir, require=req, trust=trust_store(trusted_key), threads=threads,
                          n_boot=bootstrap, seed=seed, min_per_class=min_per_class, plots=plots, command=command, progress=progress)
    rep = r.report
    _figures(rep, f"site validation of {rep['bundle']['path']}")
    out.line(f"verdict: {rep['verdict']}", style="bold")
    out.wrote(r.written)
    if plots and not any(p.suffix == ".png" for p in r.written):
        out.line("plots: not drawn (matplotlib is not installed: pip install matplotlib)", dim=True)
    if rep["verdict"] != "pass":
        out.next_step(" ".join(shlex.quote(str(w)) for w in ["osteo-edge", "site", "calibrate", images, "--labels", labels, "--model",
                                                                 model or "src/osteo_edge/models/default", "--out", "site-bundle",
                                                                 "--key", "site.key", "--site", "NAME"]
                                         + (["--head"] if r.scores.embeddings is not None else [])),
                      "refit temperature, threshold and gate on these films, with cross-validated figures; "
                      + ("--head also fits a linear head on the model's embedding, the one refit that can change AUROC"
                         if r.scores.embeddings is not None else "it cannot create discrimination the model lacks"))
        raise typer.Exit(code=1)  # the check did not pass (fail or insufficient): a script must not go on


@site_app.command("calibrate")
@handle_errors
def calibrate(
    images: Images,
    labels: Labels,
    model: Annotated[Path, typer.Option("--model", help="The base model bundle directory.")],
    out_bundle: Annotated[Path, typer.Option("--out", help="Folder for the new site bundle (replaced atomically if it exists).")],
    key: Annotated[Path, typer.Option("--key", help="The site's Ed25519 private key (PEM, from 'osteo-edge keygen'): signs the site bundle.")],
    site: Annotated[str, typer.Option("--site", help="The site's name, recorded in the bundle.")] = "site",
    target_sensitivity: Annotated[Optional[float], typer.Option("--target-sensitivity", help="Operating point: the highest low-BMD threshold reaching this sensitivity on the site's films.", show_default="the base bundle's (0.9)")] = None,
    max_referral: Annotated[Optional[float], typer.Option("--max-referral", help="Operating point instead: the lowest threshold whose referral rate (every 'refer' answer) is at most this.")] = None,
    folds: Annotated[int, typer.Option("--folds", help="Cross-validation folds for the recorded figures (lowered to the smaller class's count).")] = 5,
    min_accept: Annotated[float, typer.Option("--min-accept", help="Loosen the gate's score thresholds (never tighten) to accept at least this share of the site's films.")] = 0.98,
    require: Annotated[str, typer.Option("--require", help=REQUIRE_HELP)] = "sensitivity=0.85,auroc=0.75",
    head: Annotated[bool, typer.Option("--head", help="Also fit a linear head on the model's frozen embedding (numpy; the model file "
                                       "needs an embedding output: 'export --format tflite --embedding-output'); the one refit that can change AUROC.")] = False,
    head_l2: Annotated[float, typer.Option("--head-l2", help="--head: L2 penalty on the head's weights (standardised embedding).")] = 10.0,
    trust_file: Annotated[Optional[Path], typer.Option("--trust-file", help="Also write this machine's trust file here (the shipped publisher's key + this site's key), "
                                                       "e.g. ~/.config/osteo-edge/trusted-keys.pem; then every entry point refuses other bundles.")] = None,
    min_per_class: Annotated[int, typer.Option("--min-per-class", help="Refuse fewer images than this on either side of the low-BMD question.")] = 5,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap replicates for the 95% intervals.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and the bootstrap.")] = 0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Inference threads (default: the backend's choice).")] = None,
    trusted_key: Annotated[Optional[List[Path]], typer.Option("--trusted-key", help=TRUSTED_KEY_HELP)] = None,
) -> None:
    """Refit a bundle's temperature, low-BMD threshold and gate on the site's labelled films into a new
    bundle signed with the site's key. Its recorded figures are k-fold cross-validated inside the site's
    films (never fitted and scored on the same images); the model's weights are unchanged, so discrimination (AUROC) barely moves,
    unless --head fits a linear head on the model's embedding (fp32 TFLite bundles exported with --embedding-output).
    """
    from ..edge_runtime.site import Target, calibrate_site
    from ..errors import ConfigError

    req = _checked(require, min_per_class, bootstrap, threads, folds)
    if head_l2 <= 0:
        raise usage_error(f"--head-l2 must be positive, got {head_l2}")
    target = None
    if target_sensitivity is not None or max_referral is not None:
        try:
            target = Target(target_sensitivity, max_referral)
        except ConfigError as exc:
            raise usage_error(str(exc)) from None
    command = _command(["osteo-edge", "site", "calibrate", images, "--labels", labels, "--model", model, "--out", out_bundle,
                        "--site", site, "--target-sensitivity" if target_sensitivity is not None else None, target_sensitivity,
                        "--max-referral" if max_referral is not None else None, max_referral, "--head" if head else None,
                        "--head-l2" if head else None, head_l2 if head else None])
    with _progress() as progress:
        r = calibrate_site(images, labels, model, out=out_bundle, key=key, site=site, target=target, folds=folds, min_accept=min_accept,
                           require=req, trust=trust_store(trusted_key), threads=threads, n_boot=bootstrap, seed=seed,
                           min_per_class=min_per_class, command=command, progress=progress, head_l2=head_l2 if head else None)
    b, op, base = r.bundle, r.operating, r.base_operating
    _figures(r.report, f"site {site}: cross-validated ({len(r.report['folds'])} folds) figures of the calibrated bundle")
    out.line(f"verdict (cross-validated): {r.report['verdict']}", style="bold")
    out.summary("refitted on all the site's films", [
        ("temperature", f"{base.temperature:.3g} -> {op.temperature:.3g}"),
        ("low-BMD threshold", f"{base.low_bmd if base.low_bmd is not None else float('nan'):.3g} -> {op.low_bmd:.3g}"),
        ("gate thresholds", f"density {base.ood_threshold:.3g} -> {op.ood_threshold:.3g}, knee-vs-other {base.other_threshold:.3g} -> {op.other_threshold:.3g}"),
        *([("head", f"linear, on the {op.head.mean.size}-wide embedding (L2 {head_l2:g})")] if op.head is not None else []),
    ])
    if r.report["fitted_on_all"]["fit"].get("temperature_at_bound"):
        out.line(f"note: the fitted temperature is at its upper bound ({op.temperature:.3g}): the site's labels are fitted best by a "
                 "near-uniform guess, so at this site the model's probabilities carry no usable information")
    unc = r.report["fitted_on_all"]["fit"].get("uncertain_rate", 0.0)
    if unc > 0.5:
        out.line(f"note: at the fitted temperature {unc:.0%} of the site's films fall below min_confidence "
                 f"({base.thresholds.get('min_confidence'):g}) and are answered 'refer (uncertain)': the model is unsure at this site")
    sig = b.signature
    out.line(f"wrote {out_bundle} (seal {b.seal[:16]}..., signed by key {sig.key_id if sig else '-'}; report in {out_bundle}/site-validation/report.md)")
    if trust_file is not None:
        from ..edge_runtime.site.trust import write_clinic_trust

        path, ids = write_clinic_trust(trust_file, private_keys=[key])
        out.line(f"wrote {path}: this machine now trusts only keys {', '.join(ids)}")
        out.next_step(f"osteo-edge predict KNEE.png --model {shlex.quote(str(out_bundle))}")
    else:
        out.next_step(f"osteo-edge site trust --key {shlex.quote(str(key))} --file ~/.config/osteo-edge/trusted-keys.pem",
                      "one step: this machine then refuses any bundle not signed by the publisher or this site")


@site_app.command("trust")
@handle_errors
def trust(
    file: Annotated[Optional[Path], typer.Option("--file", help="Where to write the trust file.", show_default="~/.config/osteo-edge/trusted-keys.pem")] = None,
    key: Annotated[Optional[List[Path]], typer.Option("--key", help="The site's private key (its public half is trusted); repeatable.")] = None,
    public_key: Annotated[Optional[List[Path]], typer.Option("--public-key", help="Another publisher's public key (PEM) to trust; repeatable.")] = None,
    package: Annotated[bool, typer.Option("--package/--no-package", help="Trust the key that signs the shipped default bundle.")] = True,
) -> None:
    """Set this machine to trust only the shipped publisher's key and the site's key: every entry point
    (predict, verify, bench, demo, serve) then refuses unsigned bundles and bundles signed by any other key.
    Read from OSTEO_EDGE_TRUST_FILE when set, else from ~/.config/osteo-edge/trusted-keys.pem and /etc/osteo-edge/trusted-keys.pem."""
    from ..errors import ConfigError
    from ..edge_runtime.site.trust import write_clinic_trust

    if not (key or public_key or package):
        raise ConfigError("nothing to trust: give --key or --public-key (or keep --package)")
    path, ids = write_clinic_trust(file, public_keys=public_key or [], private_keys=key or [], package=package)
    out.line(f"wrote {path}: bundles must now be signed by one of the keys {', '.join(ids)}")
    out.next_step("osteo-edge verify SITE_BUNDLE")


def register(app: typer.Typer) -> None:
    app.add_typer(site_app, name="site")
