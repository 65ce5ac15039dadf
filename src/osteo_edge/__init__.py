"""osteo-edge: a knee X-ray osteoporosis screening aid, from honest data to a clinic laptop or a Pi.

Screening aid only, never a diagnosis: uncertain cases say "refer for DEXA".
Importing this package imports nothing heavy (no torch, tensorflow or gradio) and changes no
global state.
"""

__version__ = "0.1.0"
