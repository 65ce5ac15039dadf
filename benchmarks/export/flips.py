import numpy as np
from osteo_edge.modeling.loading import load_run
from osteo_edge.artifact import load_bundle
from osteo_edge.edge_runtime.backends import open_backend
from osteo_edge.export import torch_logits
from osteo_edge.export.golden import split_inputs
from osteo_edge.core.stats import softmax
"""Which test images change their answer under int8, and how sure fp32 was about them.

    python benchmarks/export/flips.py [WORK] [SPLIT]   (after run.sh; output: flips.txt)
"""
import sys
W = sys.argv[1] if len(sys.argv) > 1 else "runs/export-bench"
S = sys.argv[2] if len(sys.argv) > 2 else "/tmp/te_split_knee1/split.csv"
m, b = load_run(f"{W}/knee-lite0")
x = split_inputs(S, b.spec, "test", labels=b.labels)
pr = softmax(torch_logits(m, x.x), b.temperature); y=np.array(x.labels)
srt = np.sort(pr, 1); margin = srt[:, -1] - srt[:, -2]
print("fp32 margins quantiles", np.round(np.quantile(margin, [0, .05, .1, .25, .5]), 3))
for name in ["tflite-int8-ptq", "tflite-int8-qat", "onnx-int8-ptq", "onnx-int8-qat", "qat-run"]:
    bb = load_bundle(f"{W}/{name}")
    if bb.format == "torch":
        mm, _ = load_run(bb.path); pc = softmax(torch_logits(mm, x.x), bb.temperature)
    else:
        xi = split_inputs(S, bb.spec, "test", labels=b.labels).x
        pc = softmax(open_backend(bb.model_path, bb.format).run(xi), bb.temperature)
    d = np.flatnonzero(pc.argmax(1) != pr.argmax(1))
    print(name, "flips", d.tolist(), "fp32 margin", np.round(margin[d], 3).tolist(), "true", y[d].tolist(), "fp32", pr.argmax(1)[d].tolist(), "cand", pc.argmax(1)[d].tolist())
