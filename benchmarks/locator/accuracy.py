"""The knee locator against the heuristic framing on held-out films, per source (issue 26).

    python benchmarks/locator/accuracy.py [--model-dir src/osteo_edge/models/locator]

Films: the test groups of the seed-0 split (runs/model/split-per-source/split.csv), which the
locator never trained on; truth: their checked boxes in knee_boxes.csv. Both framings see the same
pixels. Also times both per film (1 thread; min and median of 5 passes) on this machine's CPU.
Writes benchmarks/locator/accuracy.json and .md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--split", default="runs/model/split-per-source/split.csv")
    ap.add_argument("--data", default="../shared/data")
    a = ap.parse_args()
    from osteo_edge.core.machine import machine_info
    from osteo_edge.framing import knee_boxes
    from osteo_edge.locator import MODEL_DIR, KneeLocator
    from osteo_edge.train.locator import load_films, score_films, split_groups

    loc = KneeLocator(a.model_dir or MODEL_DIR, threads=1)
    test_g, _ = split_groups(a.split)
    films = [f for f in load_films(HERE / "knee_boxes.csv", a.data) if f.group in test_g]
    rows = {"heuristic framing (--resize knee)": lambda f: knee_boxes(f.gray), "learned locator, int8 TFLite (--resize knee_locator)": lambda f: loc.boxes(f.gray)}
    result = {"protocol": "held-out films: the test groups of the seed-0 group split (never trained on); truth: the checked boxes of "
                          "benchmarks/locator/knee_boxes.csv; IoU of each true knee with its best predicted square; joint in crop: every "
                          "true joint centre within the central half of a predicted crop",
              "machine": machine_info(), "locator_sha256": loc.sha256, "films": len(films), "rows": {}}
    for name, fn in rows.items():
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for f in films:
                fn(f)
            times.append(1000 * (time.perf_counter() - t0) / len(films))
        kept = [f for f in films if f.rows[0]["made_by"].startswith("heuristic")]
        reboxed = [f for f in films if not f.rows[0]["made_by"].startswith("heuristic")]
        result["rows"][name] = {"scores": score_films(films, fn),
                                "truth_kept_heuristic_box": score_films(kept, fn)["all"],
                                "truth_reboxed_heuristic_rejected": score_films(reboxed, fn)["all"],
                                "ms_per_film_min": round(min(times), 2), "ms_per_film_median": round(statistics.median(times), 2)}
    (HERE / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Knee locator accuracy on held-out films", "", result["protocol"] + ".", "",
             f"Machine: {result['machine'].get('cpu')} ({result['machine']['isa']['text']}), 1 thread, load average {result['machine']['load_average'][0]}. "
             f"Command: `python benchmarks/locator/accuracy.py`.", "",
             "| framing | source | films | knees | mean IoU | knees IoU >= 0.5 | joint in crop | right knee count | ms/film (min / median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        for src, s in r["scores"].items():
            lines.append(f"| {name} | {src} | {s['films']} | {s['knees']} | {s['mean_iou']:.3f} | {s['knees_iou_ge_0.5']:.3f} | "
                         f"{s['films_crop_contains_joint']:.3f} | {s['films_right_knee_count']:.3f} | {r['ms_per_film_min']} / {r['ms_per_film_median']} |")
    lines += ["", "By where the truth came from (a kept heuristic box is the heuristic's own answer, so there the heuristic "
              "scores IoU 1 by construction; on the re-boxed films its box had been rejected by eye):", "",
              "| framing | truth | films | knees | mean IoU | knees IoU >= 0.5 | joint in crop |", "|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        for key, label in (("truth_kept_heuristic_box", "heuristic box, kept by eye"), ("truth_reboxed_heuristic_rejected", "re-boxed (heuristic rejected)")):
            s = r[key]
            lines.append(f"| {name} | {label} | {s['films']} | {s['knees']} | {s['mean_iou']:.3f} | {s['knees_iou_ge_0.5']:.3f} | "
                         f"{s['films_crop_contains_joint']:.3f} |")
    (HERE / "accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
