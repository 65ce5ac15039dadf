"""A model file with a second output: the pooled embedding its classifier reads (``export --embedding-output``).

``osteo-edge site calibrate --head`` fits a linear head (numpy) on the model's frozen embedding; the
runtime then needs that embedding from the model file. :func:`with_embedding` wraps a torch model so
that it returns ``(logits, embedding)``, the embedding being the input of the model's last linear
layer (its classifier; for timm and the custom CNN: the globally pooled, flattened features). The
wrapper's logits are the model's own (checked on a probe input), so the export's golden parity
check against torch and every existing figure stay as they are; the edge runtime reads the logits
from a two-output file as before and the embedding only when a bundle carries a site head
(:class:`osteo_edge.edge_runtime.classifier.LinearHead`).

Asked for by :func:`embedding_output` (a context), which the fp32 TFLite exporter reads; the
full-integer and faithful int8 routes refuse it (a second output is not in their fidelity
budget), see docs/site.md.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

from ..errors import ExportError, require

_REQUESTED: contextvars.ContextVar[bool] = contextvars.ContextVar("osteo_edge_embedding_output", default=False)
EMBEDDING_NAME = "embedding"
FORMATS = ("tflite",)  # the exporters that honour the request


@contextlib.contextmanager
def embedding_output(on: bool = True) -> Iterator[None]:
    """Within the block, the fp32 exporters write a second output (the embedding)."""
    token = _REQUESTED.set(bool(on))
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def requested() -> bool:
    return _REQUESTED.get()


def _last_linear(model: Any) -> Any:
    torch = require("torch", "train")
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, torch.nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ExportError(f"{type(model).__name__} has no linear classifier layer: no embedding output to export")
    return linears[-1]


def with_embedding(model: Any, probe_shape: tuple[int, ...]) -> Any:
    """``model`` wrapped to return ``(logits, embedding)``; its logits checked equal to the model's on a probe."""
    torch = require("torch", "train")
    linear = _last_linear(model)

    class WithEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self._seen: list[Any] = []
            linear.register_forward_pre_hook(lambda _m, args: self._seen.append(args[0]))

        def forward(self, x):  # noqa: D401 - torch API
            self._seen.clear()
            logits = self.model(x)
            if len(self._seen) != 1:
                raise ExportError(f"the classifier layer ran {len(self._seen)} times in one forward pass: no single embedding")
            return logits, self._seen[0].flatten(1)

    wrapped = WithEmbedding().eval()
    with torch.no_grad():
        x = torch.rand(probe_shape, generator=torch.Generator().manual_seed(0))
        ref = model(x)
        logits, emb = wrapped(x)
    if not torch.allclose(ref, logits, atol=1e-5) or emb.shape[1] != linear.in_features:
        raise ExportError("the wrapped model's logits differ from the model's: no embedding output")
    return wrapped


def wrap_context(ctx: Any) -> None:
    """When requested: wrap ``ctx.model`` and record the second output in ``ctx.info`` (the manifest's ``export``)."""
    if not requested():
        return
    spec = ctx.torch_spec
    ctx.model = with_embedding(ctx.model, (1, spec.channels, spec.input_size, spec.input_size))
    dim = int(_last_linear(ctx.model.model).in_features)
    ctx.info["embedding_output"] = {
        "dim": dim, "what": "the input of the model's last linear layer (globally pooled features), second model output",
        "use": "osteo-edge site calibrate --head fits a linear head on it; the runtime reads it only for a bundle with a site head",
    }
