"""Refit the low-BMD threshold of a quantized run made before `quantize` refitted it (issue 22).

    python benchmarks/model/refit_thresholds.py QRUN

`osteo-edge quantize` refits the temperature on validation for the tuned weights and, since this
change, the low-BMD threshold too (``compress.quantize.refit_thresholds``: the parent's rule, the
highest threshold with validation sensitivity >= its target). A QRUN written before keeps its parent's
threshold, chosen for other probabilities; this applies the same function to it as a recorded re-seal.
"""

from __future__ import annotations

import sys

from osteo_edge.artifact import load_bundle, reseal
from osteo_edge.compress.finetune import load_split_data
from osteo_edge.modeling.inference import predict_logits
from osteo_edge.compress.quantize import refit_thresholds
from osteo_edge.modeling.loading import load_run


def main(run: str) -> int:
    model, bundle = load_run(run)
    parent = load_bundle(bundle.parent_dir())
    data = load_split_data(bundle.provenance.to_dict()["split_csv"], bundle.labels, bundle.spec.with_layout("NCHW"))
    thresholds, record = refit_thresholds(parent, predict_logits(model, data.val), data.val.targets, bundle.temperature)
    compression = {**dict(bundle.manifest.get("compression") or {}), "thresholds_refitted": record}
    reseal(run, step="low-BMD threshold refitted for the tuned weights (benchmarks/model/refit_thresholds.py)",
           thresholds=thresholds, compression=compression)
    print(f"{run}: low_bmd {parent.thresholds.get('low_bmd')} -> {thresholds.get('low_bmd')} ({record})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
