"""Recipes that chain the stages: the release of a bundle the way the shipped one was built, the input
gate's calibration from a split, and the scoring of a training recipe out of fold.

- :mod:`.gate`: ``osteo-edge gate calibrate`` (:func:`~.gate.calibrate_gate_from_split`);
- :mod:`.pipeline`: ``osteo-edge release`` (:func:`~.pipeline.release`), resumable per step (:mod:`.steps`),
  with the build-machine paths stripped (:mod:`.portable`) and per-source metrics (:mod:`.per_source`);
- :mod:`.oof`: ``osteo-edge evaluate --cv`` and ``osteo-edge compare --paired`` (out-of-fold per-source
  scoring of a k-fold run, and the paired bootstrap of two such scorings).

This layer may import every stage (train, compress, export, ...); no stage imports it. Heavy imports
(torch, tensorflow) happen inside the functions that need them.
"""
