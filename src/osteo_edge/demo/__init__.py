"""The offline clinic demo (Gradio): UI only, every prediction goes through osteo_edge.edge_runtime.

Importing this package imports neither gradio nor torch; :func:`build_app` imports gradio (with
analytics switched off first)::

    from osteo_edge.edge_runtime import EdgeClassifier
    from osteo_edge.demo import build_app, launch_app

    app = build_app(EdgeClassifier.load())        # a gr.Blocks, queued
    launch_app(app, "127.0.0.1", 7860)             # or: osteo-edge demo
"""

from .app import DEFAULT_HOST, DEFAULT_PORT, build_app, host_warning, launch_app, serve
from .service import DemoService

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DemoService", "build_app", "host_warning", "launch_app", "serve"]
