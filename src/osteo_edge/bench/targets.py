"""`osteo-edge bench`: one table of targets (:data:`TARGETS`, looked up by name), one report format.

- ``host``: this machine (:func:`osteo_edge.bench.local.run_host`).
- ``raspberrypi``: with ``host="user@addr"``, the bundles and the runtime are copied to the Pi over
  SSH, the runtime extra is installed there (no torch), the benchmark runs there and its JSON comes
  back (:mod:`osteo_edge.bench.remote`). With ``emulate=True`` instead (asked for by name;
  without a host and without it the target refuses to run): the runtime runs under aarch64
  emulation (:mod:`osteo_edge.bench.emulate`); that timing is labelled "emulated, not a Pi
  latency" and comes with an estimate for Pi 4 / Pi 5 from a documented model, marked as such.

Adding a target is one :class:`Target` record here and one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError, choice_error
from .local import BenchRequest, run_host

@dataclass(frozen=True)
class Target:
    name: str
    description: str
    run: Callable[[BenchRequest], dict[str, Any]]

RASPBERRYPI_NEEDS_HOST = ("--target raspberrypi measures a real Pi over SSH: give --host user@address, "
                          "or --emulate for aarch64 emulation on this machine (not a Pi latency)")


def run_raspberrypi(req: BenchRequest) -> dict[str, Any]:
    if len(req.thread_counts) > 1:
        raise ConfigError("several --threads values are for --target host; give one thread count for raspberrypi")
    if req.host and req.emulate:
        raise ConfigError("give --host (measure a Pi over SSH) or --emulate (aarch64 emulation here), not both")
    if req.host:
        from .remote import run_over_ssh

        report = run_over_ssh(req)
        report["target"] = "raspberrypi"
        return report
    if not req.emulate:
        raise ConfigError(RASPBERRYPI_NEEDS_HOST)
    from .emulate import run_emulated

    return run_emulated(req)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("host", "this machine, measured", run_host),
        Target("raspberrypi", "Raspberry Pi 4/5 (aarch64): over SSH with --host user@addr, or aarch64 emulation with --emulate (not a latency)", run_raspberrypi),
    )
}


def parse_threads(text: str) -> tuple[int, ...]:
    """``"2"`` or ``"1,2"``: the thread counts of ``--threads``, each a positive integer."""
    try:
        counts = tuple(int(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        counts = ()
    if not counts or any(c < 1 for c in counts):
        raise ConfigError(f"--threads takes positive integers separated by commas (e.g. 2 or 1,2), got {text!r}")
    return counts


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise choice_error("benchmark target", name, TARGETS) from None


def run_bench(target: str, req: BenchRequest) -> dict[str, Any]:
    req.validate()
    return get_target(target).run(req)

