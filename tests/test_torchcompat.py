"""The install works beside the CPU torch: timm (and so torchvision) imports through our shim."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")


def test_timm_imports_and_builds_a_model_through_the_shim():
    code = (
        "from osteo_edge._torchcompat import import_timm\n"
        "timm = import_timm()\n"
        "import torch\n"
        "m = timm.create_model('efficientnet_b0', pretrained=False, num_classes=3).eval()\n"
        "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))\n"
        "import torchvision.transforms  # noqa: F401\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(1, 3)"


def test_importing_osteo_edge_does_not_touch_torch():
    code = "import sys, osteo_edge, osteo_edge.preprocess, osteo_edge.artifact; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
