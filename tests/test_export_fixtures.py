"""Helpers for the export / parity / compress tests: a tiny torch run and a tiny real split.

Imported by tests/test_export.py, test_parity.py and test_compress.py (pytest puts tests/ on the
path). All writes go to the caller's tmp_path.
"""

from __future__ import annotations

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KNEE = REPO.parent / "shared" / "data" / "knee"
LABELS = ["Normal", "Osteopenia", "Osteoporosis"]

# (label, relative path, split) - distinct radiographs, every class in every subset
ROWS = [
    ("Normal", "multiclass-kaggle/Normal/normal_0001.png", "train"),
    ("Normal", "multiclass-kaggle/Normal/normal_0002.png", "train"),
    ("Osteopenia", "wani-mendeley/Osteopenia/OP1.JPEG", "train"),
    ("Osteopenia", "wani-mendeley/Osteopenia/OP10.JPEG", "train"),
    ("Osteoporosis", "multiclass-kaggle/Osteoporosis/osteoporosis_0001.jpeg", "train"),
    ("Osteoporosis", "multiclass-kaggle/Osteoporosis/osteoporosis_0002.png", "train"),
    ("Normal", "multiclass-kaggle/Normal/normal_0003.jpg", "val"),
    ("Osteopenia", "wani-mendeley/Osteopenia/OP100.jpg", "val"),
    ("Osteoporosis", "multiclass-kaggle/Osteoporosis/osteoporosis_0003.png", "val"),
    ("Normal", "wani-mendeley/Normal/N1.JPEG", "test"),
    ("Normal", "wani-mendeley/Normal/N10.JPEG", "test"),
    ("Osteopenia", "wani-mendeley/Osteopenia/OP11.JPEG", "test"),
    ("Osteopenia", "wani-mendeley/Osteopenia/OP12.JPEG", "test"),
    ("Osteoporosis", "multiclass-kaggle/Osteoporosis/osteoporosis_0004.png", "test"),
    ("Osteoporosis", "multiclass-kaggle/Osteoporosis/osteoporosis_0005.png", "test"),
]


def make_split(tmp: Path) -> Path:
    """A split.csv over a few real knee images (absolute paths into ../shared/data)."""
    rows = [r for r in ROWS if (KNEE / r[1]).is_file()]
    assert len(rows) == len(ROWS), "expected knee images are missing from ../shared/data"
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "split.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "orig_label", "source", "group", "split", "fold", "sha256"])
        for g, (label, rel, split) in enumerate(rows):
            w.writerow([str(KNEE / rel), label, label, rel.split("/")[0], g, split, -1, ""])
    return path


def make_run(tmp: Path, arch: str = "cnn", size: int = 32, seed: int = 0, flip: bool = False, temperature: float = 1.5) -> Path:
    """A sealed torch run bundle with a random model whose logits spread (scaled classifier).

    ``flip=True`` negates the classifier: the same features, a different answer on every image.
    """
    import torch

    from osteo_edge.artifact import atomic_path, seal
    from osteo_edge.modeling.models import arch_record_for_manifest, build_model, classifier_module, get_arch

    torch.manual_seed(seed)
    model = build_model(arch, len(LABELS)).eval()
    with torch.no_grad():
        head = classifier_module(model)
        head.weight.mul_(-8.0 if flip else 8.0)
        head.bias.zero_()
    tmp.mkdir(parents=True, exist_ok=True)
    with atomic_path(tmp / "model.pt") as p:
        torch.save(model.state_dict(), p)
    seal(
        tmp, format="torch", model_file="model.pt", labels=LABELS, spec=get_arch(arch).spec(size),
        temperature=temperature, thresholds={"min_confidence": 0.5, "low_bmd": 0.5},
        metrics={"test": {"accuracy": {"value": 0.5, "ci95": [0.3, 0.7]}}},
        provenance={"command": "tests: make_run", "protocol": "tiny test split", "data": ["../shared/data/knee"]},
        extra={"arch": arch_record_for_manifest(arch, len(LABELS))},
    )
    return tmp
