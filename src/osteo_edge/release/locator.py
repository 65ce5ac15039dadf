"""``osteo-edge locator train``: train the knee locator (torch), export it to int8 TFLite, and measure
both on the split's held-out films per source (issue 26)."""
from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..export.locator import export_int8
from ..framing import Box
from ..locator import GRID, INPUT, STRIDE, KneeLocator
from ..train.locator import (
    Film,
    augment,
    example,
    fit,
    load_films,
    pick_threshold,
    score_films,
    split_groups,
    torch_boxes,
)


def train_locator(boxes_csv: str | Path, split_csv: str | Path, data_root: str | Path, out: str | Path, epochs: int = 40,
                  exclude_ids: set[int] | None = None, threads: int = 1, seed: int = 0, export: bool = True,
                  command: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train on the non-test films (fold 1 picks the epoch and the score threshold), measure on the
    split's test films per source, export int8 TFLite and check it against the torch model."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    films = load_films(boxes_csv, data_root, exclude_ids)
    test_g, val_g = split_groups(split_csv)
    test = [f for f in films if f.group in test_g]
    val = [f for f in films if f.group in val_g]
    train = [f for f in films if f.group not in test_g and f.group not in val_g]
    from ..errors import ConfigError

    if not train or not val or not test:
        raise ConfigError(f"{split_csv}: the boxed films give {len(train)} train, {len(val)} fold-1 and {len(test)} test films; "
                          "each must have some (a split of the boxed sources, made by osteo-edge data split --folds)")
    log(f"{len(train)} train / {len(val)} val / {len(test)} test films ({sum(len(f.knees) for f in train)} train knees)")
    t0 = time.monotonic()
    model, info = fit(train, val, epochs=epochs, seed=seed, threads=threads, log=log)
    thr = pick_threshold(model, val)
    train_s = time.monotonic() - t0
    torch.save(model.state_dict(), out / "locator.pt")
    report: dict[str, Any] = {
        "command": command, "boxes_csv": str(boxes_csv), "boxes_sha256": hashlib.sha256(Path(boxes_csv).read_bytes()).hexdigest(),
        "split_csv": str(split_csv), "films": {"train": len(train), "val": len(val), "test": len(test)},
        "input": INPUT, "stride": STRIDE, "grid": GRID, "min_score": thr, "epochs": epochs, "seed": seed,
        "train_seconds": round(train_s, 1), "history": info["history"],
        "torch": {"val": score_films(val, torch_boxes(model, thr)), "test": score_films(test, torch_boxes(model, thr))},
    }
    if export:
        rng = random.Random(seed + 1)
        calib = np.stack([example(*augment(f, rng))[0] for f in rng.sample(train, min(128, len(train)))])
        path = export_int8(model, calib, out, out / "work")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        meta: dict[str, Any] = {"sha256": digest, "input": INPUT, "stride": STRIDE, "grid": GRID, "min_score": thr,
                                "boxes_sha256": report["boxes_sha256"], "command": command,
                                "test_groups": sorted(test_g, key=int)}
        (out / "locator.json").write_text(json.dumps(meta, indent=2) + "\n")
        loc = KneeLocator(out)

        def tfl(film: Film) -> list[Box]:
            return loc.boxes(film.gray)

        t1 = time.perf_counter()
        report["tflite_int8"] = {"file": path.name, "sha256": digest, "bytes": path.stat().st_size,
                                 "val": score_films(val, tfl), "test": score_films(test, tfl)}
        report["tflite_int8"]["ms_per_film_incl_letterbox"] = round(1000 * (time.perf_counter() - t1) / max(1, len(val) + len(test)), 2)
        meta["accuracy"] = {"protocol": "the split's test groups (held out from training), int8 TFLite, boxes of benchmarks/locator/knee_boxes.csv",
                            "test": report["tflite_int8"]["test"]}
        (out / "locator.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
