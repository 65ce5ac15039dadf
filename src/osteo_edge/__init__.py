"""osteo-edge: a knee X-ray osteoporosis screening aid, from honest data to a clinic laptop or a Pi.

Screening aid only, never a diagnosis: uncertain cases say "refer for DEXA".
Python API (torch-free): ``osteo_edge.load_bundle(path=None).predict("knee.png")`` returns the
record ``osteo-edge predict --json`` prints; ``osteo_edge.verify_bundle(path)`` checks a bundle.

Importing this package imports nothing heavy (no torch, tensorflow or gradio) and changes no
global state.
"""

__version__ = "0.1.0"

__all__ = ["Model", "load_bundle", "verify_bundle", "__version__"]


def __getattr__(name: str):  # the API is imported on first use: `import osteo_edge` stays light
    if name in ("Model", "load_bundle", "verify_bundle"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'osteo_edge' has no attribute {name!r}")
