"""The hospital side: transfer syntaxes, a DICOM node (``node``), its durable spool, the clinic record
and the Structured Report that carries an answer back.

Imports only ``edge_runtime``, ``artifact``, ``preprocess`` and ``errors`` from this package, never
train/compress/export. pynetdicom and highdicom (``runtime`` extra) are imported by the modules
that need them, so ``import osteo_edge.dicom`` is light.
"""
