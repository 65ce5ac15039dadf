"""The torch side shared by the stages (train, compress, export, benchmarks): the architecture
table (:mod:`.models`), the one run loader (:mod:`.loading`), datasets and augmentation
(:mod:`.dataset`), and calibration helpers (:mod:`.calibration`).

Sits below the stages: it imports only the base modules and :mod:`osteo_edge.data`.
"""
