import sys, time, numpy as np, onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from osteo_edge.artifact import load_bundle
from osteo_edge.export.golden import split_inputs, calibration_inputs
from osteo_edge.core.stats import softmax
"""ONNX Runtime int8 calibration variants of the fp32 export, scored against it on the test split.

    python benchmarks/export/calibration_experiment.py [WORK] [SPLIT]   (after run.sh; output: calibration_experiment.txt)
"""


class Reader:
    """onnxruntime's CalibrationDataReader protocol over an array, one image per call (this script's own:
    the exporter's reader is private to osteo_edge.export.onnx_export)."""

    def __init__(self, x, name):
        self.x, self.name, self.i = x, name, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1 : self.i]}

    def rewind(self):
        self.i = 0

WORK = sys.argv[1] if len(sys.argv) > 1 else "runs/export-bench"
SPLIT = sys.argv[2] if len(sys.argv) > 2 else "/tmp/te_split_knee1/split.csv"
B = f"{WORK}/onnx-fp32"
import tempfile; TMP = tempfile.mkdtemp()
b = load_bundle(B)
test = split_inputs(SPLIT, b.spec, "test", labels=b.labels)
y = np.array(test.labels)
def run(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i:i+1]})[0] for i in range(len(x))])
ref = run(f"{B}/model.onnx", test.x)
print("fp32 acc", (ref.argmax(1) == y).mean())
quant_pre_process(f"{B}/model.onnx", f"{TMP}/pre.onnx")
cal_all = calibration_inputs(b.spec, SPLIT, n=224, labels=b.labels).x
for name, n, meth, extra in [("minmax128", 128, CalibrationMethod.MinMax, {}), ("minmax224", 224, CalibrationMethod.MinMax, {}),
                            ("minmax224_symact", 224, CalibrationMethod.MinMax, {"ActivationSymmetric": True})]:
    t = time.time()
    quantize_static(f"{TMP}/pre.onnx", f"{TMP}/{name}.onnx", Reader(cal_all[:n], "input"), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8 if "symact" in name else QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=meth, extra_options=extra)
    o = run(f"{TMP}/{name}.onnx", test.x)
    pr, po = softmax(ref, b.temperature), softmax(o, b.temperature)
    print(name, "acc", round((o.argmax(1) == y).mean(), 4), "agree", round((o.argmax(1) == ref.argmax(1)).mean(), 4), "maxdp", round(np.abs(pr-po).max(), 4), "meandp", round(np.abs(pr-po).mean(), 4), f"{time.time()-t:.0f}s", flush=True)
