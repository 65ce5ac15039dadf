"""Torch-free helpers shared by every stage: the metrics core (:mod:`.stats`, :mod:`.classification`),
the progress protocol (:mod:`.progress`) and figure helpers (:mod:`.plots`).

Imports only numpy and the standard library at module level (never torch); scikit-learn and
matplotlib are imported lazily inside the functions that need them.
"""
