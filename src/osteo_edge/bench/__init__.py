"""`osteo-edge bench` and `python -m osteo_edge.bench`: latency, memory and size of model bundles on
this machine, a Raspberry Pi over SSH, or aarch64 emulation (targets.py; measured in local.py)."""
