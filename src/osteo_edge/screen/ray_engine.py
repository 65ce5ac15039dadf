"""The Ray engine: Ray Data batch inference over the image list, answers written back by the driver.

Each Ray actor (one CPU) holds a :class:`~osteo_edge.screen.work.Screener`: the torch-free runtime
with the same bundle (same seal) as the driver. The image list goes in chunks through
``ray.data.from_items(...).map_batches(actor class, compute=ActorPoolStrategy(size=N))``, and the
driver iterates the results as they stream back and records them in the one clinic record, so
nothing but the driver writes it. Every node must read the image paths and the bundle at the same
paths (a shared file system, or the default bundle inside the installed package): docs/screen-cluster.md.

Ray is the optional ``cluster`` extra; this module is imported only for ``engine="ray"``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

from ..errors import require
from .sources import ScreenItem, chunks
from .work import Screener, WorkerConfig

log = logging.getLogger(__name__)

CHUNK = 10_000  # images per Ray Data pipeline: bounds the driver's in-flight list; actors stay up per chunk
BATCH = 8  # images per map_batches call


class RayScreener:
    """The callable class Ray Data runs in each actor: a JSON item column in, a JSON outcome column out."""

    def __init__(self, config: WorkerConfig) -> None:
        self.screener = Screener(config)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        return {"outcome": [json.dumps(self.screener(ScreenItem(**json.loads(str(x))))) for x in batch["item"]]}


def start(address: str | None, workers: int) -> bool:
    """Connect to the cluster at ``address`` (``auto``, ``ray://host:10001``, or RAY_ADDRESS), or start a
    local instance with ``workers`` CPUs. Returns whether this call started (and so must stop) Ray."""
    import os

    ray = require("ray", "cluster")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _reachable(address)
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        kw["num_cpus"] = workers
    ray.init(address=address, **kw)
    return True


def _reachable(address: str, timeout: float = 10.0) -> None:
    """A cluster address (``HOST:PORT`` or ``ray://HOST:PORT``) that does not answer is a one-line error
    within seconds; ray.init would retry silently for minutes. ``auto`` and other forms: left to Ray."""
    import socket

    from ..errors import ConfigError

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there ({getattr(exc, 'strerror', None) or exc}); "
                          "start it (ray start --head) or check the address") from exc


def run_ray(items: Iterable[ScreenItem], config: WorkerConfig, workers: int, on_outcome: Callable[[dict[str, Any]], None],
            address: str | None = None, chunk: int = CHUNK) -> None:
    """Answer every item on Ray with ``workers`` actors, calling ``on_outcome`` in the driver per answer."""
    require("ray.data", "cluster")
    import ray

    started = start(address, workers)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own progress line; Ray's bars would interleave with it
        ctx.print_on_execution_start = False
        for part in chunks(items, chunk):
            ds = ray.data.from_items([{"item": json.dumps(it.to_dict())} for it in part])
            out = ds.map_batches(RayScreener, fn_constructor_kwargs={"config": config}, batch_size=BATCH,
                                 compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, batch_format="numpy")
            for batch in out.iter_batches(batch_size=BATCH, batch_format="numpy", prefetch_batches=1):
                for text in batch["outcome"]:
                    on_outcome(json.loads(str(text)))
    finally:
        if started:
            ray.shutdown()
