"""The next command after each step of the README's quick start, in one place.

Each command prints one of these after it succeeds (``next: ...``), filled with the paths the user
gave; where a step creates something new, the README's own name is suggested (``out/split``,
``runs/lite0``, ``out/lite0-int8``), so that a user who follows the README sees the README's next line.
``tests/test_cli_output.py`` checks every function against the README's quick-start block.
"""

from __future__ import annotations

import shlex
from typing import Any, Iterable

# The README's names for what each step creates.
SPLIT_DIR = "out/split"
RUN_DIR = "runs/lite0"
KNEE = "path/to/knee.png"


def _q(p: Any) -> str:
    return shlex.quote(str(p))


def after_audit(sources: Iterable[Any], audit_out: Any) -> str:
    """The split every README number uses: one file per duplicate group (``--members one``)."""
    src = " ".join(_q(s) for s in sources)
    return f"osteo-edge data split {src} --groups {_q(f'{audit_out}/groups.csv')} --members one --out {SPLIT_DIR}"


def after_split(split_csv: Any) -> str:
    """The recipe of the README's training table (benchmarks/training/run_all.sh), so that a newcomer
    who follows the hints reproduces the table."""
    return (f"osteo-edge train --split {_q(split_csv)} --arch efficientnet_lite0 --weights imagenet --epochs 10 --lr 5e-4 "
            f"--patience 4 --out {RUN_DIR}")


def after_train(run: Any, split_csv: Any | None, folds: int = 0) -> str:
    split = f" --split {_q(split_csv)}" if split_csv else ""
    return f"osteo-edge evaluate --model {_q(run)}{split}" + (f" --folds {folds}" if folds else "")


def bundle_dir_for(run: Any) -> str:
    """Where the next export of ``run`` goes: named after the run (``runs/lite0`` -> ``out/lite0-int8``,
    the README's), so following a hint from another run never overwrites a bundle already made."""
    from pathlib import Path

    return f"out/{Path(str(run)).name or 'model'}-int8"


def after_evaluate(run: Any, split_csv: Any | None) -> str:
    split = _q(split_csv) if split_csv else "SPLIT.csv"
    return f"osteo-edge export --model {_q(run)} --format tflite --int8 --split {split} --out {_q(bundle_dir_for(run))}"


def after_export(run: Any, bundle: Any, split_csv: Any | None) -> str:
    split = _q(split_csv) if split_csv else "SPLIT.csv"
    return f"osteo-edge parity --reference {_q(run)} --candidate {_q(bundle)} --split {split}"


def after_parity(candidate: Any) -> str:
    if str(candidate) == "default":  # the shipped bundle needs no --model
        return f"osteo-edge predict {KNEE}"
    return f"osteo-edge predict --model {_q(candidate)} {KNEE}"


def after_parity_failed(reference: Any, candidate: Any, data: str) -> tuple[str, str]:
    """What to try when a parity gate fails, and why: look before changing anything (no loop back
    into a command that would overwrite the bundle just measured)."""
    return (f"osteo-edge parity --reference {_q(reference)} --candidate {_q(candidate)} {data} --explain out/parity-explain",
            "a gate failed: --explain names the layers the error comes from. What reached the gates for the shipped "
            "model: QAT (osteo-edge quantize --int8 --method qat) exported to a NEW --out and compared with that QAT "
            "run's own fp32 export; docs/export.md#faithful-int8-the-fidelity-budget")


def after_predict(model: Any | None) -> str:
    """A clinic user's next step is the offline demo (the same model, with heat maps), not a benchmark."""
    return "osteo-edge demo" + (f" --model {_q(model)}" if model is not None else "")


def after_bench(model: Any | None) -> str:
    return "osteo-edge demo" + (f" --model {_q(model)}" if model is not None else "")
